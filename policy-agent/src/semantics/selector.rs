//! Label selectors, as `metav1.LabelSelector` defines them.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::model::Labels;

/// One requirement; a selector matches when all of its requirements do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// `matchLabels` entry, or `In` with one value: the label is present with this value.
    Equals(String, String),
    /// `In`: the label is present with one of these values.
    In(String, BTreeSet<String>),
    /// `NotIn`: the label is absent, or present with a value not in the set.
    NotIn(String, BTreeSet<String>),
    /// `Exists`: the label is present.
    Exists(String),
    /// `DoesNotExist`: the label is absent.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// A selector field that the API server would reject.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    /// Path of the offending field, relative to the selector.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses and validates an API selector.
    pub fn parse(api: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in api.match_labels.iter().flatten() {
            validate_key(k, &format!("matchLabels.{k}"))?;
            validate_value(v, &format!("matchLabels.{k}"))?;
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, expr) in api.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            validate_key(&expr.key, &format!("{field}.key"))?;
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            for v in &values {
                validate_value(v, &format!("{field}.values"))?;
            }
            let need_values = |present: bool| -> Result<(), SelectorError> {
                if present == values.is_empty() {
                    let message = if present {
                        format!("operator {} needs at least one value", expr.operator)
                    } else {
                        format!("operator {} takes no values", expr.operator)
                    };
                    return Err(SelectorError {
                        field: format!("{field}.values"),
                        message,
                    });
                }
                Ok(())
            };
            let key = expr.key.clone();
            requirements.push(match expr.operator.as_str() {
                "In" => {
                    need_values(true)?;
                    Requirement::In(key, values)
                }
                "NotIn" => {
                    need_values(true)?;
                    Requirement::NotIn(key, values)
                }
                "Exists" => {
                    need_values(false)?;
                    Requirement::Exists(key)
                }
                "DoesNotExist" => {
                    need_values(false)?;
                    Requirement::DoesNotExist(key)
                }
                other => {
                    return Err(SelectorError {
                        field: format!("{field}.operator"),
                        message: format!(
                            "unknown operator {other:?} (valid: In, NotIn, Exists, DoesNotExist)"
                        ),
                    });
                }
            });
        }
        requirements.sort();
        requirements.dedup();
        Ok(Self { requirements })
    }

    /// The requirements, in a canonical order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Label keys: an optional DNS-subdomain prefix and a name of at most 63 characters.
fn validate_key(key: &str, field: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let bad = |message: String| SelectorError {
        field: field.to_owned(),
        message,
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return Err(bad(format!("invalid label key prefix {prefix:?}")));
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(bad(format!(
            "invalid label key {key:?}: a name of at most 63 alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric"
        )));
    }
    Ok(())
}

/// Label values: empty, or like a key's name part.
fn validate_value(value: &str, field: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorError {
            field: field.to_owned(),
            message: format!(
                "invalid label value {value:?}: at most 63 alphanumerics, '-', '_' or '.', \
                 starting and ending with an alphanumeric"
            ),
        })
    }
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: op.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators() {
        let s = Selector::parse(&LabelSelector {
            match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
            match_expressions: Some(vec![
                expr("tier", "In", &["front", "edge"]),
                expr("env", "NotIn", &["prod"]),
                expr("team", "Exists", &[]),
                expr("legacy", "DoesNotExist", &[]),
            ]),
        })
        .unwrap();
        let ok = labels(&[("app", "web"), ("tier", "edge"), ("team", "x")]);
        assert!(s.matches(&ok));
        let mut prod = ok.clone();
        prod.insert("env".into(), "prod".into());
        assert!(!s.matches(&prod));
        let mut legacy = ok.clone();
        legacy.insert("legacy".into(), "".into());
        assert!(!s.matches(&legacy));
        let mut no_team = ok.clone();
        no_team.remove("team");
        assert!(!s.matches(&no_team));
        let mut wrong_tier = ok;
        wrong_tier.insert("tier".into(), "back".into());
        assert!(!s.matches(&wrong_tier));
    }

    #[test]
    fn invalid_operator_and_values_are_rejected() {
        let bad_op = LabelSelector {
            match_expressions: Some(vec![expr("a", "Equals", &["b"])]),
            ..Default::default()
        };
        let err = Selector::parse(&bad_op).unwrap_err();
        assert_eq!(err.field, "matchExpressions[0].operator");

        let in_without_values = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[])]),
            ..Default::default()
        };
        assert_eq!(
            Selector::parse(&in_without_values).unwrap_err().field,
            "matchExpressions[0].values"
        );

        let exists_with_values = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &["x"])]),
            ..Default::default()
        };
        assert!(Selector::parse(&exists_with_values).is_err());

        let bad_key = LabelSelector {
            match_labels: Some([("-bad".to_owned(), "x".to_owned())].into()),
            ..Default::default()
        };
        assert_eq!(
            Selector::parse(&bad_key).unwrap_err().field,
            "matchLabels.-bad"
        );
    }
}
