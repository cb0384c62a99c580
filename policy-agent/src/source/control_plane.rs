//! What the control plane fills in, for sources that have none (a manifest directory, the
//! lab): the API server allocates cluster IPs to Services that name none, and the
//! EndpointSlice controller gives a Service with a selector and no slice of its own slices
//! of the running pods it selects, one per address family and port mapping.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpAddrRange, Ipv4AddrRange, Ipv6AddrRange};

use crate::model::{
    Cluster, EndpointSlice, IpFamily, ObjectRef, Pod, Service, SliceEndpoint, SlicePort, TargetPort,
};

/// Where allocated IPv4 cluster IPs come from: kube-apiserver's default service range
/// (10.96.0.0/12), above the addresses clusters give by convention (the API at .1, DNS at
/// .10).
const FIRST_CLUSTER_IP_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 0);
/// The last allocatable IPv4 cluster IP.
const LAST_CLUSTER_IP_V4: Ipv4Addr = Ipv4Addr::new(10, 111, 255, 254);
/// Where allocated IPv6 cluster IPs come from (kind's service range, fd00:10:96::/112).
const FIRST_CLUSTER_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x100);
/// The last allocatable IPv6 cluster IP.
const LAST_CLUSTER_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xfffe);

/// Everything the control plane would add: cluster IPs, then EndpointSlices.
pub fn complete(cluster: &mut Cluster) {
    allocate_cluster_ips(cluster);
    derive(cluster);
}

/// Gives every Service that asks for cluster IPs one per family it asks for (the cluster's
/// primary family when it names none: IPv4 unless every pod is IPv6-only), from the
/// service ranges, skipping addresses anything already has.
pub fn allocate_cluster_ips(cluster: &mut Cluster) {
    let mut taken: BTreeSet<IpAddr> = cluster
        .pods
        .values()
        .flat_map(|p| p.ips.iter().copied())
        .chain(cluster.services.values().flat_map(Service::frontend_ips))
        .collect();
    let primary = if cluster
        .pods
        .values()
        .flat_map(|p| &p.ips)
        .any(IpAddr::is_ipv4)
        || cluster.pods.values().all(|p| p.ips.is_empty())
    {
        IpFamily::Ipv4
    } else {
        IpFamily::Ipv6
    };
    let mut ranges = [
        IpAddrRange::from(Ipv4AddrRange::new(FIRST_CLUSTER_IP_V4, LAST_CLUSTER_IP_V4)),
        IpAddrRange::from(Ipv6AddrRange::new(FIRST_CLUSTER_IP_V6, LAST_CLUSTER_IP_V6)),
    ];
    for service in cluster.services.values_mut() {
        let Some(families) = service.unallocated.take() else {
            continue;
        };
        let families = if families.is_empty() {
            vec![primary]
        } else {
            families
        };
        for family in families {
            let range = &mut ranges[usize::from(family == IpFamily::Ipv6)];
            if let Some(ip) = range.find(|ip| !taken.contains(ip)) {
                taken.insert(ip);
                service.cluster_ips.push(ip);
            }
        }
    }
}

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

/// What pods sharing one slice have in common: the address family (IPv6?) and the resolved ports.
type SliceShape = (bool, Vec<(String, u16)>);

fn slices_of(cluster: &Cluster, service: &Service) -> Vec<EndpointSlice> {
    let selector = service.selector.as_ref().expect("filtered on it");
    // Pods with the same family and ports share a slice.
    let mut groups: BTreeMap<SliceShape, (Vec<SlicePort>, Vec<SliceEndpoint>)> = BTreeMap::new();
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
            id: ObjectRef::new(
                &service.id.namespace,
                format!("{}-derived-{i}", service.id.name),
            ),
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
