//! Which hosts and Service frontends a matrix shows (`matrix --from`, `--to`,
//! `--namespace`), written as a kubectl or Cilium user writes them:
//!
//! - `NAMESPACE/NAME`: a pod, or a Service (as a destination through its frontends); either
//!   part may hold `*` wildcards (`shop/*`, `*/web-*`);
//! - a label selector as `kubectl -l` takes it: `app=web`, `app==web`, `tier!=db`,
//!   `env in (prod,staging)`, `env notin (dev)`, `canary`, `!canary`, joined with commas
//!   (all must hold). It selects pods, in every namespace (`--namespace` narrows it);
//! - an address or a CIDR block: pods and external hosts with an address in it, and
//!   Service frontends on an address in it.
//!
//! An address or CIDR is read first; then a term with `=`, `!` or a parenthesis is a label
//! selector (a name has none of them), and one with a `/` is a name. A bare word is
//! refused: `shop` might mean the namespace (`shop/*`) or the label key (`shop` exists),
//! and a filter that silently picked the other would hide pods. A label key's existence
//! is written inside a selector with an operator (`app=web,canary`), or negated
//! (`!canary`).

use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

use crate::{
    model::{Cluster, Labels},
    plan::{Host, ServiceTarget},
    semantics::selector::{Requirement, Selector},
};

/// The wildcard of name patterns: any run of characters, the empty one included.
const WILDCARD: char = '*';

/// One term of `--from` or `--to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `NAMESPACE/NAME`, each part a wildcard pattern.
    Name {
        /// The namespace pattern.
        namespace: String,
        /// The name pattern.
        name: String,
    },
    /// A label selector, matched against pods' labels.
    Labels(Selector),
    /// An address block.
    Block(IpNet),
}

/// A term that is no pattern.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{term:?}: {why} (use NAMESPACE/NAME with * wildcards, a label selector like \
     app=web,tier in (a,b), or an address or CIDR)"
)]
pub struct PatternError {
    /// The term as given.
    pub term: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(term: &str) -> Result<Self, PatternError> {
        let error = |why: &str| PatternError {
            term: term.to_owned(),
            why: why.to_owned(),
        };
        let t = term.trim();
        if t.is_empty() {
            return Err(error("empty"));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Self::Block(IpNet::from(ip)));
        }
        if let Ok(net) = t.parse::<IpNet>() {
            return Ok(Self::Block(net));
        }
        if t.contains(['=', '!', '(', ')']) {
            return parse_selector(t)
                .map(Self::Labels)
                .map_err(|why| error(&why));
        }
        if !t.contains('/') {
            // `shop` could mean the namespace or the label key: make the user say which.
            return Err(error(&format!(
                "ambiguous: {t}/* for the pods of namespace {t}, or a selector with an \
                 operator ({t}=VALUE, !{t})"
            )));
        }
        let (namespace, name) = t.split_once('/').expect("checked above");
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(error("a name is NAMESPACE/NAME"));
        }
        Ok(Self::Name {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::Labels(s) => write!(f, "{s}"),
            Self::Block(net) => write!(f, "{net}"),
        }
    }
}

/// Parses a `kubectl -l` selector. A bare word among other terms is `Exists`, as kubectl
/// reads it.
fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut requirements = Vec::new();
    for term in split_terms(text)? {
        requirements.push(parse_requirement(term.trim())?);
    }
    Ok(Selector::from_requirements(requirements))
}

/// The comma-separated terms of a selector, commas inside parentheses left alone.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced ')'")?,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".to_owned());
    }
    terms.push(&text[start..]);
    Ok(terms)
}

/// One requirement: `k=v`, `k==v`, `k!=v`, `k in (..)`, `k notin (..)`, `k`, `!k`.
fn parse_requirement(term: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c)) {
            Err(format!("{k:?} is no label key"))
        } else {
            Ok(k.to_owned())
        }
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if v.contains(|c: char| c.is_whitespace() || "=!(),".contains(c)) {
            Err(format!("{v:?} is no label value"))
        } else {
            Ok(v.to_owned())
        }
    };
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotIn(key(k)?, BTreeSet::from([value(v)?])));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    for (word, not) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = term.split_once(word) {
            let inner = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: the values go in parentheses"))?;
            let values = inner
                .split(',')
                .map(value)
                .collect::<Result<BTreeSet<_>, _>>()?;
            let k = key(k)?;
            return Ok(if not {
                Requirement::NotIn(k, values)
            } else {
                Requirement::In(k, values)
            });
        }
    }
    Ok(Requirement::Exists(key(term)?))
}

/// Whether `text` matches the wildcard `pattern` (`*`: any run of characters).
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split(WILDCARD);
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No wildcard: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// What a matrix shows: sources matching `from`, destinations matching `to` (any term;
/// none given: all), both in one of `namespaces` when some are given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Source terms.
    pub from: Vec<Pattern>,
    /// Destination terms.
    pub to: Vec<Pattern>,
    /// Namespaces both ends are in (an external host is in none).
    pub namespaces: Vec<String>,
}

impl Filter {
    /// Whether the filter lets everything through.
    pub fn is_everything(&self) -> bool {
        self.from.is_empty() && self.to.is_empty() && self.namespaces.is_empty()
    }

    /// Whether `host` is a source the matrix shows.
    pub fn source(&self, cluster: &Cluster, host: &Host) -> bool {
        self.host_matches(cluster, host, &self.from)
    }

    /// Whether `host` is a destination the matrix shows (by address).
    pub fn destination(&self, cluster: &Cluster, host: &Host) -> bool {
        self.host_matches(cluster, host, &self.to)
    }

    /// Whether the matrix shows connections through the Service frontend `target`.
    pub fn target(&self, target: &ServiceTarget) -> bool {
        let in_namespace =
            self.namespaces.is_empty() || self.namespaces.contains(&target.service.namespace);
        in_namespace
            && (self.to.is_empty()
                || self.to.iter().any(|p| match p {
                    Pattern::Name { namespace, name } => {
                        wildcard_matches(namespace, &target.service.namespace)
                            && wildcard_matches(name, &target.service.name)
                    }
                    // Services carry no labels here; a selector picks pods.
                    Pattern::Labels(_) => false,
                    Pattern::Block(net) => net.contains(&target.address),
                }))
    }

    fn host_matches(&self, cluster: &Cluster, host: &Host, terms: &[Pattern]) -> bool {
        let namespace = host.pod.as_ref().map(|p| p.namespace.as_str());
        let in_namespace = self.namespaces.is_empty()
            || namespace.is_some_and(|ns| self.namespaces.iter().any(|n| n == ns));
        let labels = || -> Option<&Labels> {
            host.pod
                .as_ref()
                .and_then(|id| cluster.pods.get(id))
                .map(|p| &p.labels)
        };
        in_namespace
            && (terms.is_empty()
                || terms.iter().any(|p| match p {
                    Pattern::Name {
                        namespace: ns,
                        name,
                    } => host.pod.as_ref().is_some_and(|id| {
                        wildcard_matches(ns, &id.namespace) && wildcard_matches(name, &id.name)
                    }),
                    Pattern::Labels(selector) => labels().is_some_and(|l| selector.matches(l)),
                    Pattern::Block(net) => host.ips.iter().any(|ip| net.contains(ip)),
                }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        match selector.parse::<Pattern>().unwrap() {
            Pattern::Labels(s) => s.matches(&labels(pairs)),
            other => panic!("{selector} parsed as {other:?}"),
        }
    }

    #[test]
    fn label_selectors_mean_what_kubectl_means() {
        assert!(selects("app=web", &[("app", "web")]));
        assert!(selects("app==web", &[("app", "web")]));
        assert!(!selects("app=web", &[("app", "db")]));
        // `!=` also holds when the label is absent, as in kubectl.
        assert!(selects("tier!=db", &[]));
        assert!(!selects("tier!=db", &[("tier", "db")]));
        assert!(selects("env in (prod, staging)", &[("env", "staging")]));
        assert!(!selects("env in (prod,staging)", &[("env", "dev")]));
        assert!(selects("env notin (dev)", &[]));
        assert!(selects("app=web,canary", &[("canary", ""), ("app", "web")]));
        assert!(!selects("app=web,canary", &[("app", "web")]));
        assert!(selects("!canary", &[]));
        let both = [("app", "web"), ("env", "prod")];
        assert!(selects("app=web,env in (prod,x)", &both));
        assert!(!selects("app=web,env notin (prod,x)", &both));
        // A key with a prefix is a key, not a name.
        assert!(selects(
            "app.kubernetes.io/name=web",
            &[("app.kubernetes.io/name", "web")]
        ));
    }

    #[test]
    fn names_addresses_and_mistakes() {
        assert_eq!(
            "shop/*".parse::<Pattern>().unwrap(),
            Pattern::Name {
                namespace: "shop".into(),
                name: "*".into()
            }
        );
        assert!(matches!(
            "10.0.0.0/8".parse::<Pattern>().unwrap(),
            Pattern::Block(_)
        ));
        assert!(matches!(
            "fd00::1".parse::<Pattern>().unwrap(),
            Pattern::Block(_)
        ));
        for bad in [
            "",
            "a/b/c",
            "/web",
            "shop/",
            "env in prod",
            "app=(web",
            "a=b)",
            "a b=c",
            "shop",
        ] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_matches("*", ""));
        assert!(wildcard_matches("web-*", "web-0"));
        assert!(!wildcard_matches("web-*", "db-0"));
        assert!(wildcard_matches("*-0", "web-0"));
        assert!(wildcard_matches("w*b*0", "web-0"));
        assert!(!wildcard_matches("w*x*0", "web-0"));
        assert!(!wildcard_matches("web", "web-0"));
        assert!(wildcard_matches("web", "web"));
        // The parts may not overlap.
        assert!(!wildcard_matches("ab*ba", "aba"));
    }
}
