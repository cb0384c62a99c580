//! Policies in words, for explanations and warnings.

use std::fmt::{self, Display};

use super::{
    policy::{IpBlock, Peer, Peers, PortRef, PortSpec, Ports, Rule},
    selector::{Requirement, Selector},
};

impl Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |vs: &std::collections::BTreeSet<String>| {
            vs.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
        };
        match self {
            Self::Equals(k, v) => write!(f, "{k}={v}"),
            Self::In(k, vs) => write!(f, "{k} in ({})", set(vs)),
            Self::NotIn(k, vs) => write!(f, "{k} notin ({})", set(vs)),
            Self::Exists(k) => write!(f, "{k}"),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

impl Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements()
            .iter()
            .map(ToString::to_string)
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

impl Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let holes: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            write!(f, " except {}", holes.join(", "))?;
        }
        Ok(())
    }
}

impl Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortRef::Any => write!(f, "{} (any port)", self.protocol),
            PortRef::Range(a, b) if a == b => write!(f, "{}/{a}", self.protocol),
            PortRef::Range(a, b) => write!(f, "{}/{a}-{b}", self.protocol),
            PortRef::Named(n) => write!(f, "{} port named {n:?}", self.protocol),
        }
    }
}

/// A peer, in words; selector peers without a namespace selector are in `policy_namespace`.
pub fn peer(p: &Peer, policy_namespace: &str) -> String {
    match p {
        Peer::IpBlock(block) => format!("addresses in {block}"),
        Peer::Pods {
            namespaces: None,
            pods,
        } => format!("pods {pods} in namespace {policy_namespace}"),
        Peer::Pods {
            namespaces: Some(ns),
            pods,
        } => format!("pods {pods} in namespaces {ns}"),
    }
}

/// A rule, in words: "from <peers>; ports <ports>".
pub fn rule(r: &Rule, ingress: bool, policy_namespace: &str) -> String {
    let peers = match &r.peers {
        Peers::All => "any peer".to_owned(),
        Peers::Only(ps) if ps.is_empty() => "no peer (every peer was invalid)".to_owned(),
        Peers::Only(ps) => ps
            .iter()
            .map(|p| peer(p, policy_namespace))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let ports = match &r.ports {
        Ports::All => "any port".to_owned(),
        Ports::Only(specs) => specs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let dir = if ingress { "from" } else { "to" };
    format!("{dir} {peers}; on {ports}")
}
