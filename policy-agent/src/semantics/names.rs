//! The name formats of the Kubernetes API, as apimachinery validates them
//! (`k8s.io/apimachinery/pkg/api/validate/content` and `pkg/util/validation`). Lengths are
//! in bytes, and every character class is ASCII, as there: a non-ASCII character never
//! matches.

/// Longest DNS-1123 subdomain (`DNS1123SubdomainMaxLength`).
const SUBDOMAIN_MAX: usize = 253;
/// Longest DNS-1123 label (`DNS1123LabelMaxLength`).
const LABEL_MAX: usize = 63;
/// Longest name part of a qualified name, and longest label value.
const QUALIFIED_NAME_MAX: usize = 63;
/// Longest port name (an IANA service name).
const PORT_NAME_MAX: usize = 15;

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, with no length limit of its own: the regex of one
/// label of a subdomain.
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(inner)
        && b.last().is_some_and(inner)
        && b.iter().all(|c| inner(c) || *c == b'-')
}

/// `IsDNS1123Label`: at most 63 bytes of lower-case alphanumerics or '-', starting and
/// ending with an alphanumeric. Namespace names.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(format!("must be no more than {LABEL_MAX} bytes"));
    }
    if !matches_dns1123_label(s) {
        return Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    Ok(())
}

/// `IsDNS1123Subdomain`: at most 253 bytes, dot-separated labels of lower-case
/// alphanumerics or '-' each starting and ending with an alphanumeric. The labels have no
/// length limit of their own (the regex has none), only the whole. NetworkPolicy names,
/// label key prefixes.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > SUBDOMAIN_MAX {
        return Err(format!("must be no more than {SUBDOMAIN_MAX} bytes"));
    }
    if !s.split('.').all(matches_dns1123_label) {
        return Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
             characters, '-' or '.', and must start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: a qualified name's name part, or a
/// non-empty label value (no length limit here).
fn matches_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `IsQualifiedName` (`IsLabelKey`): a name of at most 63 bytes (alphanumerics, '-', '_',
/// '.', starting and ending with an alphanumeric), after an optional DNS-1123 subdomain
/// prefix and '/'. Label keys, annotation keys (lower-cased first).
pub fn qualified_name(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty".to_owned());
            }
            dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
            name
        }
        _ => {
            return Err(
                "a qualified name is an optional DNS subdomain prefix and '/' and a name \
                 (e.g. 'example.com/MyName'), with no other '/'"
                    .to_owned(),
            );
        }
    };
    if name.is_empty() {
        return Err("name part must be non-empty".to_owned());
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX} bytes"
        ));
    }
    if !matches_label_name(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    Ok(())
}

/// `IsValidLabelValue` (`IsLabelValue`): empty, or at most 63 bytes like a qualified
/// name's name part.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > QUALIFIED_NAME_MAX {
        return Err(format!("must be no more than {QUALIFIED_NAME_MAX} bytes"));
    }
    if !s.is_empty() && !matches_label_name(s) {
        return Err(
            "a valid label must be an empty string or consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    Ok(())
}

/// `IsValidPortName`: an IANA service name, as container port names are: at most 15
/// lower-case alphanumerics or '-', at least one letter, no leading, trailing or double '-'.
pub fn port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= PORT_NAME_MAX
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && name.bytes().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid port name {name:?}: at most {PORT_NAME_MAX} lower-case letters, digits or \
             '-', with at least one letter and no leading, trailing or double '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_labels_have_no_limit_of_their_own() {
        let long_label = "a".repeat(64);
        assert!(dns1123_label(&long_label).is_err());
        assert!(dns1123_subdomain(&long_label).is_ok());
        assert!(dns1123_subdomain(&format!("{long_label}.example.com")).is_ok());
        assert!(dns1123_subdomain(&"a".repeat(253)).is_ok());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        for bad in [
            "", ".", "a.", ".a", "a..b", "-a", "a-", "A", "a_b", "a.b-", "é",
        ] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
        // Go's `$` is the end of the text: no newline slips through.
        assert!(dns1123_subdomain("a\n").is_err());
    }

    #[test]
    fn qualified_names() {
        for ok in ["a", "A", "a.b_c-d", "x/a", "example.com/Name", "1"] {
            assert_eq!(qualified_name(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "-a",
            "a-",
            "a b",
            "Example.com/a",
            "é",
        ] {
            assert!(qualified_name(bad).is_err(), "{bad:?}");
        }
        assert!(qualified_name(&"a".repeat(63)).is_ok());
        assert!(qualified_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn label_values() {
        for ok in ["", "a", "A-b_c.d", "1"] {
            assert_eq!(label_value(ok), Ok(()), "{ok:?}");
        }
        for bad in ["-", "a-", "_a", "a b", "a/b", "é"] {
            assert!(label_value(bad).is_err(), "{bad:?}");
        }
        assert!(label_value(&"a".repeat(64)).is_err());
    }
}
