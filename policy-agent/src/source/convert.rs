//! API objects (k8s-openapi types) to the cluster model. Errors name the field.

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{
            Namespace as ApiNamespace, Node as ApiNode, Pod as ApiPod, Service as ApiService,
        },
        discovery::v1::EndpointSlice as ApiEndpointSlice,
        networking::v1::NetworkPolicy as ApiNetworkPolicy,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    ContainerPort, EndpointSlice, IpFamily, Namespace, Node, ObjectRef, Origin, Owner, Pod, Policy,
    PolicyMeta, Protocol, SERVICE_NAME_LABEL, Service, ServicePort, SliceEndpoint, SlicePort,
    TargetPort,
};

/// Namespace of objects that do not say.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The phase of a pod whose containers all ended successfully.
const FINISHED_SUCCEEDED: &str = "Succeeded";
/// The phase of a pod whose containers all ended, one at least in failure.
const FINISHED_FAILED: &str = "Failed";

/// The path of the offending field (if known) and what is wrong with it.
pub type FieldResult<T> = Result<T, (Option<String>, String)>;

/// A namespace.
pub fn namespace(ns: ApiNamespace) -> FieldResult<Namespace> {
    let (name, _) = name_of(&ns.metadata, false)?;
    Ok(Namespace::new(name, ns.metadata.labels.unwrap_or_default()))
}

/// A NetworkPolicy (validated later, by the semantics).
pub fn policy(np: ApiNetworkPolicy, origin: Origin) -> FieldResult<Policy> {
    let (name, namespace) = name_of(&np.metadata, true)?;
    Ok(Policy {
        id: ObjectRef::new(namespace, name),
        spec: np.spec.unwrap_or_default(),
        meta: PolicyMeta {
            labels: np.metadata.labels.unwrap_or_default(),
            annotations: np.metadata.annotations.unwrap_or_default(),
        },
        origin,
    })
}

/// The namespace/name of an object's metadata (namespace defaulted).
pub fn object_ref(meta: &ObjectMeta) -> FieldResult<ObjectRef> {
    let (name, namespace) = name_of(meta, true)?;
    Ok(ObjectRef::new(namespace, name))
}

/// Deserializes with the path of the first field that does not fit.
pub fn typed<T: DeserializeOwned>(doc: Value) -> FieldResult<T> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        ((path != ".").then_some(path), e.into_inner().to_string())
    })
}

/// Field names of a NetworkPolicy and what it holds (selectors, peers, ports, metadata): the
/// words a misspelt field is most likely meant as.
const NETWORK_POLICY_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "podSelector",
    "policyTypes",
    "ingress",
    "egress",
    "from",
    "to",
    "ports",
    "port",
    "endPort",
    "protocol",
    "ipBlock",
    "cidr",
    "except",
    "namespaceSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
];
/// Most edits (Damerau-Levenshtein) between a misspelt field and the one it is taken for.
const MAX_SUGGESTION_DISTANCE: usize = 2;

/// Deserializes as [`typed`] does, and refuses fields the type does not have (as `kubectl`
/// does): `ingres:` or `podSelectr:` would otherwise change what a policy means without a
/// word. The error names the field's path and the field it probably meant.
pub fn typed_strict<T: DeserializeOwned>(doc: Value, vocabulary: &[&str]) -> FieldResult<T> {
    let mut unknown = Vec::new();
    let value: T = match serde_ignored::deserialize(doc.clone(), |path| {
        unknown.push(path.to_string());
    }) {
        Ok(value) => value,
        // The same error again, with the path of the field that does not fit.
        Err(_) => typed::<T>(doc)?,
    };
    // Older API servers print an empty `status` on NetworkPolicies; it means nothing here.
    unknown.retain(|path| path != "status");
    match unknown.first().map(|p| field_path(p)) {
        None => Ok(value),
        Some(path) => {
            let field = path.rsplit(['.', ']']).next().unwrap_or(path.as_str());
            let hint = suggestion(field, vocabulary)
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            Err((Some(path.clone()), format!("unknown field{hint}")))
        }
    }
}

/// A path as serde_ignored prints it (`spec.?.ingress.?.0.form`: `?` for an `Option`,
/// numbers for sequence items) as the API server does (`spec.ingress[0].form`).
fn field_path(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.').filter(|s| *s != "?") {
        if segment.bytes().all(|b| b.is_ascii_digit()) && !out.is_empty() {
            out.push('[');
            out.push_str(segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// The NetworkPolicy of a manifest, strictly (see [`typed_strict`]).
pub fn network_policy_strict(doc: Value) -> FieldResult<ApiNetworkPolicy> {
    typed_strict(doc, NETWORK_POLICY_FIELDS)
}

/// The word of `vocabulary` closest to `field`, if close enough to be what was meant.
fn suggestion<'a>(field: &str, vocabulary: &[&'a str]) -> Option<&'a str> {
    vocabulary
        .iter()
        .map(|w| (strsim::damerau_levenshtein(field, w), *w))
        .filter(|(d, _)| *d <= MAX_SUGGESTION_DISTANCE)
        .min()
        .map(|(_, w)| w)
}

/// Name and namespace (defaulted when `namespaced`).
fn name_of(meta: &ObjectMeta, namespaced: bool) -> FieldResult<(String, String)> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| (Some("metadata.name".to_owned()), "required".to_owned()))?;
    let namespace = if namespaced {
        // An empty namespace is no namespace, as kubectl reads it.
        meta.namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    } else {
        String::new()
    };
    Ok((name, namespace))
}

/// A pod: labels, addresses, node, container ports.
pub fn pod(pod: ApiPod) -> FieldResult<Pod> {
    let (name, namespace) = name_of(&pod.metadata, true)?;
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();

    let mut ips = Vec::new();
    let listed: Vec<(String, String)> = match &status.pod_ips {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.clone()))
            .collect(),
        _ => status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP".to_owned(), ip.clone()))
            .collect(),
    };
    for (field, text) in listed {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| (Some(field.clone()), format!("invalid IP address {text:?}")))?;
        if ips.iter().any(|o: &IpAddr| o.is_ipv4() == ip.is_ipv4()) {
            return Err((Some(field), "at most one address per family".to_owned()));
        }
        ips.push(ip);
    }

    let mut ports = Vec::new();
    for (c, container) in spec.containers.iter().enumerate() {
        for (i, p) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{i}]");
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| {
                    (
                        Some(format!("{field}.containerPort")),
                        format!("{} is not a valid port number (1-65535)", p.container_port),
                    )
                })?;
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => Protocol::parse(s).ok_or_else(|| {
                    (
                        Some(format!("{field}.protocol")),
                        format!("unsupported protocol {s:?} (valid: TCP, UDP, SCTP)"),
                    )
                })?,
            };
            let host_port = p
                .host_port
                .map(|h| {
                    port_number(h).ok_or_else(|| {
                        (
                            Some(format!("{field}.hostPort")),
                            format!("{h} is not a valid port number (1-65535)"),
                        )
                    })
                })
                .transpose()?;
            ports.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
                host_port,
            });
        }
    }

    Ok(Pod {
        id: ObjectRef::new(namespace, name),
        labels: pod.metadata.labels.unwrap_or_default(),
        ips,
        node: spec.node_name,
        ports,
        host_network: spec.host_network.unwrap_or(false),
        uid: pod.metadata.uid,
        finished: matches!(
            status.phase.as_deref(),
            Some(FINISHED_SUCCEEDED | FINISHED_FAILED)
        ),
        created: pod.metadata.creation_timestamp.map(|t| t.0),
        owner: pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| Owner {
                kind: r.kind.clone(),
                name: r.name.clone(),
            }),
    })
}

/// A port number (1-65535) from the API's i32.
fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// An address field.
fn address(field: String, text: &str) -> FieldResult<IpAddr> {
    text.parse()
        .map_err(|_| (Some(field), format!("invalid IP address {text:?}")))
}

/// A protocol field (TCP when absent).
fn protocol(field: String, p: Option<&str>) -> FieldResult<Protocol> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| {
            (
                Some(field),
                format!("unsupported protocol {s:?} (valid: TCP, UDP, SCTP)"),
            )
        }),
    }
}

/// The "None" of a headless Service's clusterIP.
const HEADLESS: &str = "None";
/// `spec.type` of a Service that is a DNS alias, with no address of its own.
const EXTERNAL_NAME: &str = "ExternalName";
/// `spec.ipFamilyPolicy` of a Service with one family.
const SINGLE_STACK: &str = "SingleStack";

/// A Service: its frontends, ports and selector.
pub fn service(svc: ApiService) -> FieldResult<Service> {
    let (name, namespace) = name_of(&svc.metadata, true)?;
    let spec = svc.spec.unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let listed: Vec<(String, String)> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.clone()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_owned(), ip.clone()))
            .collect(),
    };
    let headless = listed.iter().any(|(_, text)| text == HEADLESS);
    for (field, text) in &listed {
        if text != HEADLESS && !text.is_empty() {
            cluster_ips.push(address(field.clone(), text)?);
        }
    }
    // A manifest may leave the cluster IP to the API server, which allocates one per family.
    let unallocated = (cluster_ips.is_empty()
        && !headless
        && spec.type_.as_deref() != Some(EXTERNAL_NAME))
    .then(|| {
        let dual = spec
            .ip_family_policy
            .as_deref()
            .is_some_and(|p| p != SINGLE_STACK);
        let families: Vec<IpFamily> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(IpFamily::Ipv4),
                "IPv6" => Some(IpFamily::Ipv6),
                _ => None,
            })
            .collect();
        match (families.is_empty(), dual) {
            (true, true) => vec![IpFamily::Ipv4, IpFamily::Ipv6],
            (_, false) => families.into_iter().take(1).collect(),
            (false, true) => families,
        }
    });
    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, ip)| address(format!("spec.externalIPs[{i}]"), ip))
        .collect::<Result<_, _>>()?;
    let load_balancer_ips = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, ing)| Some((i, ing.ip?)))
        .map(|(i, ip)| address(format!("status.loadBalancer.ingress[{i}].ip"), &ip))
        .collect::<Result<_, _>>()?;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = port_number(p.port).ok_or_else(|| {
            (
                Some(format!("{field}.port")),
                format!("{} is not a valid port number (1-65535)", p.port),
            )
        })?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_number(*n).ok_or_else(|| {
                (
                    Some(format!("{field}.targetPort")),
                    format!("{n} is not a valid port number (1-65535)"),
                )
            })?),
            Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(format!("{field}.protocol"), p.protocol.as_deref())?,
            port,
            node_port: p.node_port.and_then(port_number),
            target_port,
        });
    }
    Ok(Service {
        id: ObjectRef::new(namespace, name),
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        selector: spec.selector.filter(|s| !s.is_empty()),
        external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        unallocated,
    })
}

/// An EndpointSlice: its Service, ports and backends.
pub fn endpoint_slice(slice: ApiEndpointSlice) -> FieldResult<EndpointSlice> {
    let (name, namespace) = name_of(&slice.metadata, true)?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| {
            (
                Some(format!("metadata.labels[{SERVICE_NAME_LABEL}]")),
                "required: the slice's Service".to_owned(),
            )
        })?;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let Some(port) = p.port.and_then(port_number) else {
            // No port: "all ports" of a Service without ports; nothing to forward to here.
            continue;
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(format!("{field}.protocol"), p.protocol.as_deref())?,
            port,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let addresses = e
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| address(format!("endpoints[{i}].addresses[{j}]"), a))
            .collect::<Result<_, _>>()?;
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                Some(ObjectRef::new(
                    r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                    r.name.clone()?,
                ))
            });
        endpoints.push(SliceEndpoint {
            addresses,
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            node: e.node_name.clone(),
            pod,
        });
    }
    Ok(EndpointSlice {
        id: ObjectRef::new(namespace, name),
        service,
        ports,
        endpoints,
    })
}

/// The node address types that node ports and host ports are served on.
const NODE_ADDRESS_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

/// A node: its name and addresses.
pub fn node(node: ApiNode) -> FieldResult<Node> {
    let (name, _) = name_of(&node.metadata, false)?;
    let addresses = node
        .status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, a)| NODE_ADDRESS_TYPES.contains(&a.type_.as_str()))
        .map(|(i, a)| address(format!("status.addresses[{i}].address"), &a.address))
        .collect::<Result<_, _>>()?;
    Ok(Node { name, addresses })
}
