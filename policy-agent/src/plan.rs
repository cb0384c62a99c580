//! What to probe: the hosts of a scenario (pods, then external hosts) and every question
//! "can this host open a connection to that one on this port" that `lab` and `matrix`
//! answer, so both print the same rows and columns.

use std::net::IpAddr;

use crate::{
    model::{Cluster, ObjectRef, Protocol},
    report::{Family, Probe, Reachability},
    semantics::services::{Backend, backends},
};

/// A pod or an external host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// `namespace/pod`, or the external address.
    pub label: String,
    /// The pod, for pods.
    pub pod: Option<ObjectRef>,
    /// Addresses (at most one per family).
    pub ips: Vec<IpAddr>,
    /// Ports it serves: a pod's container ports, or the external ports.
    pub serves: Vec<(Protocol, u16)>,
}

impl Host {
    /// The host's address of `family`.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(ip) == family)
    }
}

/// The hosts of a scenario: every pod that has an address and its own network namespace
/// (host-network pods share the node's) and has not finished, in name order, then the
/// external hosts.
pub fn hosts(
    cluster: &Cluster,
    externals: &[IpAddr],
    external_ports: &[(Protocol, u16)],
) -> Vec<Host> {
    let mut hosts: Vec<Host> = cluster
        .pods
        .values()
        .filter(|p| p.holds_addresses() && !p.ips.is_empty())
        .map(|p| {
            let mut serves: Vec<(Protocol, u16)> =
                p.ports.iter().map(|c| (c.protocol, c.port)).collect();
            serves.sort();
            serves.dedup();
            Host {
                label: p.id.to_string(),
                pod: Some(p.id.clone()),
                ips: p.ips.clone(),
                serves,
            }
        })
        .collect();
    hosts.extend(externals.iter().map(|ip| Host {
        label: ip.to_string(),
        pod: None,
        ips: vec![*ip],
        serves: external_ports.to_vec(),
    }));
    hosts
}

/// One question about a pair of hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// Index of the source in the host list.
    pub from: usize,
    /// Index of the destination.
    pub to: usize,
    /// Address family both use.
    pub family: Family,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

/// Every ordered pair of hosts (external to external excepted), on every port the
/// destination serves, once per address family both have.
pub fn questions(hosts: &[Host]) -> Vec<Question> {
    let mut out = Vec::new();
    for (from, src) in hosts.iter().enumerate() {
        for (to, dst) in hosts.iter().enumerate() {
            if src.pod.is_none() && dst.pod.is_none() {
                continue;
            }
            for family in [Family::IPv4, Family::IPv6] {
                if src.ip(family).is_none() || dst.ip(family).is_none() {
                    continue;
                }
                for &(protocol, port) in &dst.serves {
                    out.push(Question {
                        from,
                        to,
                        family,
                        protocol,
                        port,
                    });
                }
            }
        }
    }
    out
}

/// The report row of an answered question.
pub fn probe(hosts: &[Host], q: &Question, allowed: bool) -> Probe {
    Probe {
        from: hosts[q.from].label.clone(),
        to: hosts[q.to].label.clone(),
        port: q.port,
        protocol: q.protocol,
        family: q.family,
        allowed,
        service: None,
        address: None,
    }
}

/// A Service frontend that pods dial: a cluster IP and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    /// `namespace/name` of the Service.
    pub label: String,
    /// The Service.
    pub service: ObjectRef,
    /// The cluster IP.
    pub address: std::net::IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The backends of the address's family.
    pub backends: Vec<Backend>,
}

impl ServiceTarget {
    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.address)
    }

    /// The backend pod, when there is exactly one.
    pub fn only_pod(&self) -> Option<&ObjectRef> {
        match self.backends.as_slice() {
            [only] => only.pod.as_ref(),
            _ => None,
        }
    }
}

/// Every cluster IP and port of the cluster's Services (with the backends of its family).
pub fn service_targets(cluster: &Cluster) -> Vec<ServiceTarget> {
    let mut out = Vec::new();
    for service in cluster.services.values() {
        for port in &service.ports {
            let all = backends(cluster, service, port);
            for &address in &service.cluster_ips {
                out.push(ServiceTarget {
                    label: service.id.to_string(),
                    service: service.id.clone(),
                    address,
                    protocol: port.protocol,
                    port: port.port,
                    backends: all
                        .iter()
                        .filter(|b| b.address.is_ipv6() == address.is_ipv6())
                        .cloned()
                        .collect(),
                });
            }
        }
    }
    out
}

/// One pod dialling one Service frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceQuestion {
    /// Index of the source in the host list (a pod).
    pub from: usize,
    /// Index of the target in the target list.
    pub target: usize,
}

/// Every pod dialling every Service frontend of a family it has.
pub fn service_questions(hosts: &[Host], targets: &[ServiceTarget]) -> Vec<ServiceQuestion> {
    let mut out = Vec::new();
    for (from, h) in hosts.iter().enumerate().filter(|(_, h)| h.pod.is_some()) {
        for (target, t) in targets.iter().enumerate() {
            if h.ip(t.family()).is_some() {
                out.push(ServiceQuestion { from, target });
            }
        }
    }
    out
}

/// The report row of an answered Service question.
pub fn service_probe(
    hosts: &[Host],
    targets: &[ServiceTarget],
    q: &ServiceQuestion,
    allowed: bool,
) -> Probe {
    let t = &targets[q.target];
    Probe {
        from: hosts[q.from].label.clone(),
        to: t
            .only_pod()
            .map_or_else(|| t.label.clone(), ToString::to_string),
        port: t.port,
        protocol: t.protocol,
        family: t.family(),
        allowed,
        service: Some(t.label.clone()),
        address: Some(t.address),
    }
}

/// Answers every question with `allowed`.
pub fn answer(hosts: &[Host], mut allowed: impl FnMut(&Question) -> bool) -> Reachability {
    Reachability::new(
        questions(hosts)
            .iter()
            .map(|q| probe(hosts, q, allowed(q)))
            .collect(),
    )
}
