//! What the EndpointSlice controller does, for sources that have no control plane (a
//! manifest directory, the lab): a Service with a selector and no slice of its own gets
//! slices of the running pods it selects, one per address family and port mapping.

use std::collections::BTreeMap;

use crate::model::{
    Cluster, EndpointSlice, ObjectRef, Pod, Service, SliceEndpoint, SlicePort, TargetPort,
};

/// Adds the slices the controller would make for every Service with a selector that has
/// none.
pub fn derive(cluster: &mut Cluster) {
    let with_slices: Vec<ObjectRef> = cluster
        .endpoint_slices
        .values()
        .map(|s| ObjectRef::new(&s.id.namespace, &s.service))
        .collect();
    let derived: Vec<EndpointSlice> = cluster
        .services
        .values()
        .filter(|s| s.selector.is_some() && !with_slices.contains(&s.id))
        .flat_map(|s| slices_of(cluster, s))
        .collect();
    for slice in derived {
        cluster.add_endpoint_slice(slice);
    }
}

/// The ports a Service's ports forward to on `pod` (a named target port resolves on the
/// pod; a pod without that name is not a backend of that port).
fn ports_on(service: &Service, pod: &Pod) -> Vec<SlicePort> {
    service
        .ports
        .iter()
        .filter_map(|p| {
            let port = match &p.target_port {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => pod.named_port(name, p.protocol)?,
            };
            Some(SlicePort {
                name: p.name.clone(),
                protocol: p.protocol,
                port,
            })
        })
        .collect()
}

fn slices_of(cluster: &Cluster, service: &Service) -> Vec<EndpointSlice> {
    let selector = service.selector.as_ref().expect("filtered on it");
    // Pods with the same family and ports share a slice.
    let mut groups: BTreeMap<(bool, Vec<(String, u16)>), (Vec<SlicePort>, Vec<SliceEndpoint>)> =
        BTreeMap::new();
    for pod in cluster.pods.values().filter(|p| {
        p.id.namespace == service.id.namespace
            && !p.finished
            && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
    }) {
        let ports = ports_on(service, pod);
        let shape: Vec<(String, u16)> = ports.iter().map(|p| (p.name.clone(), p.port)).collect();
        for &ip in &pod.ips {
            let group = groups
                .entry((ip.is_ipv6(), shape.clone()))
                .or_insert_with(|| (ports.clone(), Vec::new()));
            group.1.push(SliceEndpoint {
                addresses: vec![ip],
                ready: true,
                node: pod.node.clone(),
                pod: Some(pod.id.clone()),
            });
        }
    }
    groups
        .into_values()
        .enumerate()
        .map(|(i, (ports, endpoints))| EndpointSlice {
            id: ObjectRef::new(&service.id.namespace, format!("{}-derived-{i}", service.id.name)),
            service: service.id.name.clone(),
            ports,
            endpoints,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerPort, Labels, Protocol, ServicePort};

    #[test]
    fn a_selector_becomes_slices_with_named_ports_resolved_per_pod() {
        let mut c = Cluster::default();
        let labels: Labels = [("app".to_owned(), "web".to_owned())].into();
        for (name, port, ip) in [("a", 8080, "10.0.0.1"), ("b", 9090, "10.0.0.2")] {
            c.add_pod(Pod {
                id: ObjectRef::new("x", name),
                labels: labels.clone(),
                ips: vec![ip.parse().unwrap()],
                ports: vec![ContainerPort {
                    name: Some("http".into()),
                    port,
                    protocol: Protocol::Tcp,
                    host_port: None,
                }],
                ..Pod::default()
            });
        }
        c.add_service(Service {
            id: ObjectRef::new("x", "web"),
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                target_port: TargetPort::Name("http".into()),
            }],
            selector: Some(labels),
            ..Service::default()
        });
        derive(&mut c);
        let mut ports: Vec<u16> = c
            .endpoint_slices
            .values()
            .flat_map(|s| s.ports.iter().map(|p| p.port))
            .collect();
        ports.sort();
        assert_eq!(ports, [8080, 9090], "one slice per port mapping");
        // A Service that has slices gets no others.
        derive(&mut c);
        assert_eq!(c.endpoint_slices.len(), 2);
    }
}
