//! A NetworkPolicy parsed and validated the way the API server validates it, into the
//! terms the semantics use: which pods it selects, whether it isolates each direction, and
//! its rules as (peers, ports).
//!
//! Validation is `ValidateNetworkPolicy` of Kubernetes 1.36 at its default feature gates:
//! the metadata (name a DNS-1123 subdomain, namespace a DNS-1123 label, labels and
//! annotations), selectors, peers, `ipBlock` CIDRs ([`super::cidr`]), ports and
//! `policyTypes`, every error reported with its field path. [`Admission`] tells a policy
//! being created (a file) from one an API server already stored, which may keep values
//! the current rules refuse. `validation_table.rs` transcribes the rules into a table of
//! accepted and rejected objects.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use policy_common::maps::Direction;

use super::{cidr::SloppyCidr, names, selector::Selector};
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

/// Whose rules a policy is validated by: the API server's for an object being created, or
/// what an API server may hold and serve. Both are Kubernetes 1.36 at its default feature
/// gates; they differ where the API server keeps, by ratcheting, values an object already
/// had that it would refuse in a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The rules a new object must pass (`kubectl apply` of a manifest): CIDRs as
    /// `StrictIPCIDRValidation` (on by default since 1.36) wants them, and label values in
    /// every selector checked. For policies read from files.
    Create,
    /// What an API server may serve: an object stored before 1.36 (or with the gate off)
    /// keeps its CIDRs in any spelling the legacy parser takes (`ValidateNetworkPolicyUpdate`
    /// passes every old CIDR as `AllowCIDRsEvenIfInvalid`), and one stored before selector
    /// values were checked keeps its `matchExpressions` values
    /// (`ValidationOptionsForNetworking`'s `AllowInvalidLabelValueInSelector`). Every other
    /// rule is the same. For policies read from the Kubernetes API, which are stored
    /// objects by definition.
    Stored,
}

impl Admission {
    /// The rules for a policy from `origin`: [`Self::Create`] for a file,
    /// [`Self::Stored`] for the API.
    pub fn of(origin: &Origin) -> Self {
        if origin.file.is_some() {
            Self::Create
        } else {
            Self::Stored
        }
    }
}

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

/// A parsed `ipBlock`, in the addresses its values stand for ([`SloppyCidr::meaning`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    /// The block (host bits cleared).
    pub cidr: IpNet,
    /// Holes in it, each inside `cidr`, of its family, sorted and distinct. A hole is
    /// strictly inside except where a stored policy's IPv4-mapped `except` covers the
    /// whole block (`::ffff:10.0.0.0/104` in 10.0.0.0/8, see `parse_ip_block`): then it is
    /// `cidr` itself, and the block admits nothing.
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
            .map_or_else(
                || Ok(Selector::default()),
                |s| Selector::parse_as(s, Admission::of(&policy.origin)),
            )
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

    /// Parses and validates under the rules its origin calls for ([`Admission::of`]); on
    /// failure returns every field error found.
    pub fn parse(policy: &Policy) -> Result<Self, PolicyError> {
        Self::parse_as(policy, Admission::of(&policy.origin))
    }

    /// Parses and validates as `ValidateNetworkPolicy` does under `admission`; on failure
    /// returns every field error found.
    pub fn parse_as(policy: &Policy, admission: Admission) -> Result<Self, PolicyError> {
        let mut errors = Vec::new();
        validate_meta(policy, &mut errors);
        let spec = &policy.spec;
        let pod_selector = selector(
            spec.pod_selector.as_ref(),
            "spec.podSelector",
            admission,
            &mut errors,
        );

        // "If this field is not specified, it will default based on the existence of ingress
        // or egress rules; policies that contain an egress section are assumed to affect
        // egress, and all policies (whether or not they contain an ingress section) are
        // assumed to affect ingress." The API server tests the egress list's length, so an
        // empty list does not count, and neither does an empty policyTypes.
        let types = spec.policy_types.as_deref().unwrap_or_default();
        let (mut isolates_ingress, mut isolates_egress) = (false, false);
        if types.is_empty() {
            isolates_ingress = true;
            isolates_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        // ValidateNetworkPolicySpec: at most two entries (then no entry is looked at), each
        // Ingress or Egress. The same one twice is fine.
        if types.len() > 2 {
            errors.push(FieldError {
                field: "spec.policyTypes".into(),
                message: format!(
                    "may not specify more than two policyTypes (has {})",
                    types.len()
                ),
            });
        } else {
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
        }

        let ingress = parse_rules(
            "spec.ingress",
            "from",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref())),
            admission,
            &mut errors,
        );
        let egress = parse_rules(
            "spec.egress",
            "to",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref())),
            admission,
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

/// Most bytes the keys and values of an object's annotations may hold together
/// (`TotalAnnotationSizeLimitB`).
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Go's `strings.ToLower`: each character's simple lower case, which differs from Rust's
/// full one only for U+0130 (İ), 'i' in Go (and 'K', the Kelvin sign, is 'k' in both).
fn go_to_lower(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\u{130}' => 'i'.to_lowercase(),
            c => c.to_lowercase(),
        })
        .collect()
}

/// `ValidateObjectMeta` for a namespaced object whose name is a DNS-1123 subdomain
/// (`ValidateNetworkPolicyName`), as far as the model has it: name, namespace, labels and
/// annotations. (Finalizers, owner references and managed fields are not kept, so not
/// checked; `generateName` is not supported by manifests, which need a name.)
fn validate_meta(policy: &Policy, errors: &mut Vec<FieldError>) {
    let mut bad = |field: String, message: String| errors.push(FieldError { field, message });
    let ObjectRef { namespace, name } = &policy.id;
    if name.is_empty() {
        bad("metadata.name".into(), "required".into());
    } else if let Err(e) = names::dns1123_subdomain(name) {
        bad(
            "metadata.name".into(),
            format!("invalid name {name:?}: {e}"),
        );
    }
    if namespace.is_empty() {
        bad("metadata.namespace".into(), "required".into());
    } else if let Err(e) = names::dns1123_label(namespace) {
        bad(
            "metadata.namespace".into(),
            format!("invalid namespace {namespace:?}: {e}"),
        );
    }
    // ValidateLabels.
    for (k, v) in &policy.meta.labels {
        if let Err(e) = names::qualified_name(k) {
            bad(
                format!("metadata.labels.{k}"),
                format!("invalid label key {k:?}: {e}"),
            );
        }
        if let Err(e) = names::label_value(v) {
            bad(
                format!("metadata.labels.{k}"),
                format!("invalid label value {v:?}: {e}"),
            );
        }
    }
    // ValidateAnnotations: keys are qualified names in any case; the whole is bounded.
    let mut size = 0;
    for (k, v) in &policy.meta.annotations {
        if let Err(e) = names::qualified_name(&go_to_lower(k)) {
            bad(
                format!("metadata.annotations.{k}"),
                format!("invalid annotation key {k:?}: {e}"),
            );
        }
        size += k.len() + v.len();
    }
    if size > ANNOTATIONS_MAX_BYTES {
        bad(
            "metadata.annotations".into(),
            format!("may not hold more than {ANNOTATIONS_MAX_BYTES} bytes (holds {size})"),
        );
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
    admission: Admission,
    errors: &mut Vec<FieldError>,
) -> Vec<Rule> {
    rules
        .enumerate()
        .map(|(index, (peers, ports))| Rule {
            index,
            peers: parse_peers(
                peers,
                &format!("{field}[{index}].{peer_field}"),
                admission,
                errors,
            ),
            ports: parse_ports(ports, &format!("{field}[{index}].ports"), errors),
        })
        .collect()
}

fn selector(
    api: Option<&LabelSelector>,
    field: &str,
    admission: Admission,
    errors: &mut Vec<FieldError>,
) -> Selector {
    match api.map(|s| Selector::parse_as(s, admission)).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| FieldError {
                field: format!("{field}.{}", e.field),
                message: e.message,
            }));
            Selector::everything()
        }
    }
}

/// `ValidateNetworkPolicyPeer`: each selector and the ipBlock validated, then at least one
/// of them, and an ipBlock alone.
fn parse_peers(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    field: &str,
    admission: Admission,
    errors: &mut Vec<FieldError>,
) -> Peers {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
        return Peers::All;
    };
    let mut parsed = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let pods = peer
            .pod_selector
            .as_ref()
            .map(|s| selector(Some(s), &format!("{field}.podSelector"), admission, errors));
        let namespaces = peer.namespace_selector.as_ref().map(|s| {
            selector(
                Some(s),
                &format!("{field}.namespaceSelector"),
                admission,
                errors,
            )
        });
        let block = peer
            .ip_block
            .as_ref()
            .map(|b| parse_ip_block(b, &format!("{field}.ipBlock"), admission, errors));
        match (block, pods.is_some() || namespaces.is_some()) {
            (None, false) => errors.push(FieldError {
                field,
                message: "must specify a peer: podSelector, namespaceSelector or ipBlock".into(),
            }),
            (Some(_), true) => errors.push(FieldError {
                field,
                message: "may not specify both ipBlock and a pod or namespace selector".into(),
            }),
            (Some(block), false) => parsed.extend(block.map(Peer::IpBlock)),
            (None, true) => parsed.push(Peer::Pods {
                namespaces,
                pods: pods.unwrap_or_default(),
            }),
        }
    }
    Peers::Only(parsed)
}

/// One `cidr` or `except` value as `IsValidCIDRForLegacyField` checks it under
/// `admission`: what the legacy parser reads (errors, if any, pushed), or `None` where it
/// reads nothing, as `ValidateIPBlock` then goes on with what it read.
fn parse_cidr(
    text: &str,
    field: String,
    admission: Admission,
    errors: &mut Vec<FieldError>,
) -> Option<SloppyCidr> {
    let Some(cidr) = SloppyCidr::parse(text) else {
        errors.push(FieldError {
            field,
            message: format!(
                "invalid CIDR {text:?}: must be a valid CIDR value (e.g. 10.9.8.0/24 or \
                 2001:db8::/64)"
            ),
        });
        return None;
    };
    if admission == Admission::Create
        && let Some(complaint) = cidr.strict_complaint()
    {
        errors.push(FieldError {
            field,
            message: format!("CIDR {text:?} {complaint}"),
        });
    }
    Some(cidr)
}

/// `ValidateIPBlock`: `cidr` required and valid; each `except` valid and, as Go reads it,
/// strictly inside `cidr` (see [`SloppyCidr::strictly_contains`]).
///
/// What a block means is what the legacy parser's values mean ([`SloppyCidr::meaning`]):
/// decimal numbers whatever their leading zeros, bits past the prefix cleared, and an
/// IPv4-mapped IPv6 network taken for its IPv4 addresses, as Go's `IPNet.Contains` (the
/// API server's own `except` check) takes them. Only a stored policy can hold those
/// ([`Admission::Stored`]); their reading is never wider than Kubernetes' own:
///
/// - An IPv4-mapped `except` of an IPv4 `cidr` passes the API server's check whenever its
///   network address is in the cidr, since its prefix length (96 or more, in IPv6 bits) is
///   always above the cidr's (32 or less, in IPv4 bits). Its IPv4 meaning may then cover
///   the whole cidr or more (`10.0.0.0/8` except `::ffff:10.0.0.0/104`, which is
///   10.0.0.0/8; `0.0.0.0/1` except `::ffff:0.0.0.0/96`, which is 0.0.0.0/0). The hole is
///   honoured in full: such a block admits nothing. An `except` removes addresses, so
///   where the reading is in doubt, the larger hole is the one never more open than meant.
/// - An IPv4-mapped `cidr` admits its IPv4 addresses, as Go's `Contains` does (IPv6
///   packets with IPv4-mapped addresses, which no pod has and Go would count in, stay
///   outside: the datapath matches a family only against prefixes of that family).
/// - No `except` of the other family passes the API server's check, so none is dropped
///   here as meaningless.
fn parse_ip_block(
    block: &IPBlock,
    field: &str,
    admission: Admission,
    errors: &mut Vec<FieldError>,
) -> Option<IpBlock> {
    let cidr_field = format!("{field}.cidr");
    if block.cidr.is_empty() {
        errors.push(FieldError {
            field: cidr_field,
            message: "required".into(),
        });
        return None;
    }
    let cidr = parse_cidr(&block.cidr, cidr_field, admission, errors)?;
    let net = cidr.meaning();
    let mut holes = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let field = format!("{field}.except[{i}]");
        let Some(except) = parse_cidr(text, field.clone(), admission, errors) else {
            continue;
        };
        // "Except values will be rejected if they are outside the cidr range."
        if !cidr.strictly_contains(&except) {
            errors.push(FieldError {
                field,
                message: format!("{text} must be strictly within cidr {}", block.cidr),
            });
            continue;
        }
        let hole = except.meaning();
        holes.push(if hole.prefix_len() > net.prefix_len() {
            hole
        } else {
            net
        });
    }
    holes.sort();
    holes.dedup();
    Some(IpBlock {
        cidr: net,
        except: holes,
    })
}

/// `ValidateNetworkPolicyPort`: the protocol TCP, UDP or SCTP (TCP when absent); a numeric
/// port 1-65535 with an optional `endPort` 1-65535 not below it, or a port name with no
/// `endPort`, or no port and no `endPort`. Every problem of a port is reported.
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
        let before = errors.len();
        let mut bad = |sub: &str, message: String| {
            errors.push(FieldError {
                field: format!("{field}.{sub}"),
                message,
            });
        };
        let protocol = match p.protocol.as_deref() {
            None => Some(Protocol::Tcp),
            Some(s) => Protocol::parse(s).or_else(|| {
                bad(
                    "protocol",
                    format!("unsupported protocol {s:?} (valid: TCP, UDP, SCTP)"),
                );
                None
            }),
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => Some(PortRef::Any),
            (None, Some(_)) => {
                bad(
                    "endPort",
                    "may not be specified when port is not specified".into(),
                );
                None
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    bad(
                        "endPort",
                        "may not be specified when port is a named port".into(),
                    );
                }
                match names::port_name(name) {
                    Ok(()) => Some(PortRef::Named(name.clone())),
                    Err(message) => {
                        bad("port", message);
                        None
                    }
                }
            }
            (Some(IntOrString::Int(n)), end) => {
                let first = port_number(*n);
                if first.is_none() {
                    bad("port", format!("{n} is not a valid port number (1-65535)"));
                }
                let last = match end {
                    None => first,
                    Some(e) => {
                        if e < *n {
                            bad("endPort", format!("{e} must not be below port {n}"));
                        }
                        let last = port_number(e);
                        if last.is_none() {
                            bad(
                                "endPort",
                                format!("{e} is not a valid port number (1-65535)"),
                            );
                        }
                        last
                    }
                };
                first.zip(last).map(|(a, b)| PortRef::Range(a, b))
            }
        };
        if let (Some(protocol), Some(port)) = (protocol, port)
            && errors.len() == before
        {
            parsed.push(PortSpec { protocol, port });
        }
    }
    Ports::Only(parsed)
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
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
        assert!(msg.contains("when port is not specified"), "{msg}");
        let (field, _) = error("{ingress: [{ports: [{port: http, endPort: 90}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].endPort");
        let (field, msg) = error("{ingress: [{ports: [{port: 100, endPort: 90}]}]}");
        assert_eq!(field, "spec.ingress[0].ports[0].endPort");
        assert!(msg.contains("must not be below port 100"), "{msg}");
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
