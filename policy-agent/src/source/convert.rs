//! API objects (k8s-openapi types) to the cluster model. Errors name the field.

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{Namespace as ApiNamespace, Pod as ApiPod},
        networking::v1::NetworkPolicy as ApiNetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{ContainerPort, Namespace, ObjectRef, Origin, Pod, Policy, Protocol};

/// Namespace of objects that do not say.
pub const DEFAULT_NAMESPACE: &str = "default";

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

/// Name and namespace (defaulted when `namespaced`).
fn name_of(meta: &ObjectMeta, namespaced: bool) -> FieldResult<(String, String)> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| (Some("metadata.name".to_owned()), "required".to_owned()))?;
    let namespace = if namespaced {
        meta.namespace
            .clone()
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
            ports.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
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
    })
}
