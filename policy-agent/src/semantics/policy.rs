//! A NetworkPolicy parsed and validated the way the API server validates it, into the
//! terms the semantics use: which pods it selects, whether it isolates each direction, and
//! its rules as (peers, ports).

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use policy_common::maps::Direction;

use super::selector::Selector;
use crate::{
    model::{ObjectRef, Origin, Policy, Protocol},
    report::escape,
};

/// A field that fails validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", escape(field), escape(message))]
pub struct FieldError {
    /// Path of the field from the object root, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A rejected policy: where it came from and every field that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy.
    pub policy: ObjectRef,
    /// Its file.
    pub origin: Origin,
    /// What is wrong.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: NetworkPolicy {} rejected, enforced fail-closed (it isolates the pods it \
             selects and allows nothing):",
            escape(&self.origin.to_string()),
            escape(&self.policy.to_string())
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Which peers a rule admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// `from`/`to` absent or empty: "this rule matches all sources" (or destinations).
    All,
    /// Any of these.
    Only(Vec<Peer>),
}

/// One element of `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods chosen by labels: `podSelector` alone (in the policy's namespace),
    /// `namespaceSelector` alone (every pod of those namespaces), or both (AND).
    Pods {
        /// `None`: only the policy's own namespace.
        namespaces: Option<Selector>,
        /// Pods within those namespaces (everything when absent).
        pods: Selector,
    },
    /// `ipBlock`: addresses in `cidr` but in none of `except`.
    IpBlock(IpBlock),
}

/// A parsed `ipBlock`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    /// The block (host bits cleared).
    pub cidr: IpNet,
    /// Holes in it, each strictly inside `cidr`.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `ip` is in the block and not in a hole.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Which ports a rule admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// `ports` absent or empty: every port of every protocol.
    All,
    /// Any of these.
    Only(Vec<PortSpec>),
}

/// One element of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// Protocol (TCP when absent).
    pub protocol: Protocol,
    /// Which ports of it.
    pub port: PortRef,
}

/// The `port`/`endPort` part of a [`PortSpec`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    /// `port` absent: every port of the protocol.
    Any,
    /// A number, or `port`..=`endPort`.
    Range(u16, u16),
    /// A named container port, resolved on the destination pod.
    Named(String),
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Position in `spec.ingress` or `spec.egress`, for explanations.
    pub index: usize,
    /// Peers (`from` for ingress, `to` for egress).
    pub peers: Peers,
    /// Ports.
    pub ports: Ports,
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPolicy {
    /// Namespace and name.
    pub id: ObjectRef,
    /// Pods (of its namespace) the policy applies to.
    pub pod_selector: Selector,
    /// Ingress rules, if the policy isolates ingress.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, if the policy isolates egress.
    pub egress: Option<Vec<Rule>>,
}

impl ParsedPolicy {
    /// The rules for `dir`, or `None` if the policy does not affect that direction.
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Parses and validates; an invalid policy is enforced fail-closed (see
    /// [`Self::fail_closed`]) and returned with every field error found.
    pub fn parse_or_fail_closed(policy: &Policy) -> (Self, Option<PolicyError>) {
        match Self::parse(policy) {
            Ok(parsed) => (parsed, None),
            Err(e) => (Self::fail_closed(policy), Some(e)),
        }
    }

    /// What an invalid policy enforces, as an administrator who wrote it would expect of a
    /// policy that cannot be read in full: it isolates the pods it selects in the
    /// directions it names and allows nothing itself. Where its `podSelector` cannot be
    /// read it isolates every pod of its namespace; where its `policyTypes` cannot, both
    /// directions.
    pub fn fail_closed(policy: &Policy) -> Self {
        let spec = &policy.spec;
        let pod_selector = spec
            .pod_selector
            .as_ref()
            .map_or_else(|| Ok(Selector::default()), Selector::parse)
            .unwrap_or_else(|_| Selector::everything());
        let types = spec.policy_types.clone().unwrap_or_default();
        let (ingress, egress) = if types.iter().any(|t| t != "Ingress" && t != "Egress") {
            (true, true)
        } else if types.is_empty() {
            (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()))
        } else {
            (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            )
        };
        Self {
            id: policy.id.clone(),
            pod_selector,
            ingress: ingress.then(Vec::new),
            egress: egress.then(Vec::new),
        }
    }

    /// Parses and validates; on failure returns every field error found.
    pub fn parse(policy: &Policy) -> Result<Self, PolicyError> {
        let mut errors = Vec::new();
        let spec = &policy.spec;
        let pod_selector = selector(spec.pod_selector.as_ref(), "spec.podSelector", &mut errors);

        // "If this field is not specified, it will default based on the existence of ingress
        // or egress rules; policies that contain an egress section are assumed to affect
        // egress, and all policies (whether or not they contain an ingress section) are
        // assumed to affect ingress." The API server tests the egress list's length, so an
        // empty list does not count, and neither does an empty policyTypes.
        let types = spec.policy_types.clone().unwrap_or_default();
        let (mut isolates_ingress, mut isolates_egress) = (false, false);
        if types.is_empty() {
            isolates_ingress = true;
            isolates_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => isolates_ingress = true,
                "Egress" => isolates_egress = true,
                other => errors.push(FieldError {
                    field: format!("spec.policyTypes[{i}]"),
                    message: format!("unsupported value {other:?} (valid: Ingress, Egress)"),
                }),
            }
        }

        let ingress = parse_rules(
            "spec.ingress",
            "from",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref())),
            &mut errors,
        );
        let egress = parse_rules(
            "spec.egress",
            "to",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref())),
            &mut errors,
        );

        if !errors.is_empty() {
            return Err(PolicyError {
                policy: policy.id.clone(),
                origin: policy.origin.clone(),
                errors,
            });
        }
        Ok(Self {
            id: policy.id.clone(),
            pod_selector,
            ingress: isolates_ingress.then_some(ingress),
            egress: isolates_egress.then_some(egress),
        })
    }
}

/// A rule as the API has it: its peers (`from` or `to`) and its ports.
type ApiRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn parse_rules<'a>(
    field: &str,
    peer_field: &str,
    rules: impl Iterator<Item = ApiRule<'a>>,
    errors: &mut Vec<FieldError>,
) -> Vec<Rule> {
    rules
        .enumerate()
        .map(|(index, (peers, ports))| Rule {
            index,
            peers: parse_peers(peers, &format!("{field}[{index}].{peer_field}"), errors),
            ports: parse_ports(ports, &format!("{field}[{index}].ports"), errors),
        })
        .collect()
}

fn selector(api: Option<&LabelSelector>, field: &str, errors: &mut Vec<FieldError>) -> Selector {
    match api.map(Selector::parse).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            errors.push(FieldError {
                field: format!("{field}.{}", e.field),
                message: e.message,
            });
            Selector::everything()
        }
    }
}

fn parse_peers(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Peers {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
        return Peers::All;
    };
    let mut parsed = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (Some(_), true) => errors.push(FieldError {
                field,
                message: "may not specify both ipBlock and a pod or namespace selector".into(),
            }),
            (None, false) => errors.push(FieldError {
                field,
                message: "must specify a peer: podSelector, namespaceSelector or ipBlock".into(),
            }),
            (Some(block), false) => {
                if let Some(block) = parse_ip_block(
                    &block.cidr,
                    block.except.as_deref(),
                    &format!("{field}.ipBlock"),
                    errors,
                ) {
                    parsed.push(Peer::IpBlock(block));
                }
            }
            (None, true) => parsed.push(Peer::Pods {
                namespaces: peer
                    .namespace_selector
                    .as_ref()
                    .map(|s| selector(Some(s), &format!("{field}.namespaceSelector"), errors)),
                pods: selector(
                    peer.pod_selector.as_ref(),
                    &format!("{field}.podSelector"),
                    errors,
                ),
            }),
        }
    }
    Peers::Only(parsed)
}

fn parse_cidr(s: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<IpNet> {
    match IpNet::from_str(s.trim()) {
        Ok(net) => Some(net.trunc()),
        Err(_) => {
            errors.push(FieldError {
                field: field.to_owned(),
                message: format!("invalid CIDR {s:?} (expected e.g. 10.0.0.0/8 or fd00::/8)"),
            });
            None
        }
    }
}

fn parse_ip_block(
    cidr: &str,
    except: Option<&[String]>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<IpBlock> {
    let cidr = parse_cidr(cidr, &format!("{field}.cidr"), errors)?;
    let mut holes = Vec::new();
    for (i, e) in except.unwrap_or_default().iter().enumerate() {
        let field = format!("{field}.except[{i}]");
        let Some(hole) = parse_cidr(e, &field, errors) else {
            continue;
        };
        // "Except values will be rejected if they are outside the cidr range."
        if !(cidr.contains(&hole) && hole.prefix_len() > cidr.prefix_len()) {
            errors.push(FieldError {
                field,
                message: format!("{hole} must be strictly within cidr {cidr}"),
            });
            continue;
        }
        holes.push(hole);
    }
    holes.sort();
    holes.dedup();
    Some(IpBlock {
        cidr,
        except: holes,
    })
}

fn parse_ports(
    ports: Option<&Vec<NetworkPolicyPort>>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Ports {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Ports::All;
    };
    let mut parsed = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => match Protocol::parse(s) {
                Some(proto) => proto,
                None => {
                    errors.push(FieldError {
                        field: format!("{field}.protocol"),
                        message: format!("unsupported protocol {s:?} (valid: TCP, UDP, SCTP)"),
                    });
                    continue;
                }
            },
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortRef::Any,
            (None, Some(_)) => {
                errors.push(FieldError {
                    field: format!("{field}.endPort"),
                    message: "may only be set together with a numeric port".into(),
                });
                continue;
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    errors.push(FieldError {
                        field: format!("{field}.endPort"),
                        message: "may not be set when port is a named port".into(),
                    });
                    continue;
                }
                if let Err(message) = validate_port_name(name) {
                    errors.push(FieldError {
                        field: format!("{field}.port"),
                        message,
                    });
                    continue;
                }
                PortRef::Named(name.clone())
            }
            (Some(IntOrString::Int(n)), end) => {
                let Some(first) = port_number(*n) else {
                    errors.push(FieldError {
                        field: format!("{field}.port"),
                        message: format!("{n} is not a valid port number (1-65535)"),
                    });
                    continue;
                };
                let last = match end {
                    None => first,
                    Some(e) => match port_number(e) {
                        Some(last) if last >= first => last,
                        _ => {
                            errors.push(FieldError {
                                field: format!("{field}.endPort"),
                                message: format!(
                                    "{e} must be a port number (1-65535) no lower than port {first}"
                                ),
                            });
                            continue;
                        }
                    },
                };
                PortRef::Range(first, last)
            }
        };
        parsed.push(PortSpec { protocol, port });
    }
    Ports::Only(parsed)
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// IANA service names, as container port names must be: at most 15 lower-case
/// alphanumerics or '-', at least one letter, no leading, trailing or double '-'.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
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
            "invalid port name {name:?}: at most 15 lower-case letters, digits or '-', \
             with at least one letter and no leading, trailing or double '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::{Loaded, load_str};

    /// Parses one policy from YAML and returns its field errors.
    fn errors(spec: &str) -> Vec<FieldError> {
        let yaml =
            format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n");
        let mut loaded = Loaded::default();
        load_str(&yaml, std::path::Path::new("p.yaml"), &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let policy = loaded.cluster.policies.values().next().unwrap();
        match ParsedPolicy::parse(policy) {
            Ok(_) => Vec::new(),
            Err(e) => {
                assert_eq!(
                    e.origin.file.as_deref(),
                    Some(std::path::Path::new("p.yaml"))
                );
                assert!(
                    e.to_string()
                        .starts_with("p.yaml: NetworkPolicy x/p rejected"),
                    "{e}"
                );
                e.errors
            }
        }
    }

    /// The single error of `spec`: its field and a fragment of its message.
    fn error(spec: &str) -> (String, String) {
        let errs = errors(spec);
        assert_eq!(errs.len(), 1, "{errs:?}");
        (errs[0].field.clone(), errs[0].message.clone())
    }

    #[test]
    fn valid_policies_parse() {
        for spec in [
            "{podSelector: {}}",
            "{podSelector: {}, policyTypes: [Ingress, Egress], ingress: [], egress: []}",
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}, {protocol: SCTP}, {port: http}]}]}",
            "{egress: [{to: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a]}]}, podSelector: {}}]}]}",
        ] {
            assert_eq!(errors(spec), Vec::new(), "{spec}");
        }
    }

    #[test]
    fn invalid_cidr() {
        let (field, msg) = error("{ingress: [{from: [{ipBlock: {cidr: 10.0.0/8}}]}]}");
        assert_eq!(field, "spec.ingress[0].from[0].ipBlock.cidr");
        assert!(msg.contains("invalid CIDR"), "{msg}");
        let (field, _) =
            error("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [nonsense]}}]}]}");
        assert_eq!(field, "spec.egress[0].to[0].ipBlock.except[0]");
    }

    #[test]
    fn except_outside_its_cidr() {
        for except in ["192.168.0.0/24", "10.0.0.0/8", "10.0.0.0/7", "fd00::/64"] {
            let (field, msg) = error(&format!(
                "{{ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [\"{except}\"]}}}}]}}]}}"
            ));
            assert_eq!(
                field, "spec.ingress[0].from[0].ipBlock.except[0]",
                "{except}"
            );
            assert!(msg.contains("strictly within"), "{msg}");
        }
    }

    #[test]
    fn end_port_without_numeric_port_or_below_it() {
        let (field, msg) = error("{ingress: [{ports: [{endPort: 90}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].endPort");
        assert!(msg.contains("numeric port"), "{msg}");
        let (field, _) = error("{ingress: [{ports: [{port: http, endPort: 90}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].endPort");
        let (field, msg) = error("{ingress: [{ports: [{port: 100, endPort: 90}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].endPort");
        assert!(msg.contains("no lower than port 100"), "{msg}");
        let (field, _) = error("{ingress: [{ports: [{port: 100, endPort: 70000}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].endPort");
    }

    #[test]
    fn invalid_port_numbers_and_names() {
        let (field, _) = error("{ingress: [{ports: [{port: 0}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].port");
        let (field, _) = error("{egress: [{ports: [{port: 65536}]}]}");
        assert_eq!(field, "spec.egress[0].ports[0].port");
        for name in [
            "HTTP",
            "a--b",
            "-web",
            "web-",
            "1234",
            "sixteen-chars-xx",
            "web_api",
        ] {
            let (field, msg) = error(&format!("{{ingress: [{{ports: [{{port: \"{name}\"}}]}}]}}"));
            assert_eq!(field, "spec.ingress[0].ports[0].port", "{name}");
            assert!(msg.contains("invalid port name"), "{msg}");
        }
    }

    #[test]
    fn unknown_protocol() {
        let (field, msg) = error("{ingress: [{ports: [{protocol: ICMP, port: 1}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].protocol");
        assert!(msg.contains("TCP, UDP, SCTP"), "{msg}");
        // Protocols are case-sensitive in the API.
        assert_eq!(
            error("{ingress: [{ports: [{protocol: tcp}]}]}").0,
            "spec.ingress[0].ports[0].protocol"
        );
    }

    #[test]
    fn invalid_selectors() {
        let (field, msg) =
            error("{podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}");
        assert_eq!(field, "spec.podSelector.matchExpressions[0].operator");
        assert!(msg.contains("unknown operator"), "{msg}");
        let (field, _) = error(
            "{ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]}]}",
        );
        assert_eq!(
            field,
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values"
        );
        let (field, _) = error(
            "{ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: app, operator: DoesNotExist, values: [x]}]}}]}]}",
        );
        assert_eq!(
            field,
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values"
        );
        let (field, _) = error("{podSelector: {matchLabels: {app: \"bad value!\"}}}");
        assert_eq!(field, "spec.podSelector.matchLabels.app");
        let (field, _) = error("{podSelector: {matchLabels: {\"Bad/Prefix/x\": a}}}");
        assert_eq!(field, "spec.podSelector.matchLabels.Bad/Prefix/x");
    }

    #[test]
    fn peers_must_say_what_they_select_and_not_mix_ip_blocks() {
        let (field, msg) = error("{ingress: [{from: [{}]}]}");
        assert_eq!(field, "spec.ingress[0].from[0]");
        assert!(msg.contains("must specify a peer"), "{msg}");
        let (field, msg) =
            error("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}");
        assert_eq!(field, "spec.egress[0].to[0]");
        assert!(msg.contains("both ipBlock and"), "{msg}");
    }

    #[test]
    fn unknown_policy_type() {
        let (field, _) = error("{policyTypes: [Ingress, Sideways]}");
        assert_eq!(field, "spec.policyTypes[1]");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errs = errors("{ingress: [{ports: [{port: 0}, {protocol: GRE}]}], policyTypes: [X]}");
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn policy_types_default_from_the_egress_section() {
        let parse = |spec: &str| {
            let yaml =
                format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n");
            let mut loaded = Loaded::default();
            load_str(&yaml, std::path::Path::new("p.yaml"), &mut loaded);
            ParsedPolicy::parse(loaded.cluster.policies.values().next().unwrap()).unwrap()
        };
        let p = parse("{podSelector: {}}");
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = parse("{egress: [{}]}");
        assert!(p.ingress.is_some() && p.egress.is_some());
        // An empty egress list does not imply Egress (the API server tests its length).
        let p = parse("{egress: []}");
        assert!(p.egress.is_none());
        let p = parse("{policyTypes: [Egress], ingress: [{}]}");
        assert!(
            p.ingress.is_none() && p.egress.is_some(),
            "policyTypes wins over sections"
        );
    }
}
