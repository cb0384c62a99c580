//! Flow records: the datapath's ring-buffer events with names instead of numbers.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use nix::time::{ClockId, clock_gettime};
use policy_common::{
    event::FlowEvent,
    maps::Direction,
    net::{FAMILY_IPV4, FAMILY_IPV6, proto},
    reason::{DropReason, Verdict, reason_name},
};
use serde::{Deserialize, Serialize};

use crate::{
    compiler::Compiled,
    model::{Cluster, ObjectRef},
};

/// One decided packet: a drop, or the first packet of an allowed flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When, RFC 3339.
    pub time: String,
    /// Node that decided.
    pub node: String,
    /// The pod the verdict is for (`None`: an interface with no endpoint).
    pub pod: Option<String>,
    /// `ingress` (into the pod) or `egress` (out of it).
    pub direction: String,
    /// `allow` or `drop`.
    pub verdict: String,
    /// Why (e.g. `policy`, `policy-denied`, `spoofed-source`).
    pub reason: String,
    /// The policy whose rule allowed the flow.
    pub policy: Option<String>,
    /// For a flow the policy denied: the policies that isolate the pod in that direction
    /// (none of whose rules allowed it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// Protocol name.
    pub protocol: String,
    /// The pod's address and port.
    pub local: String,
    /// The peer's address and port.
    pub remote: String,
    /// The peer, when it is a pod.
    pub remote_pod: Option<String>,
}

impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arrow = if self.direction == "ingress" {
            "<-"
        } else {
            "->"
        };
        let pod = self.pod.as_deref().unwrap_or("?");
        let peer = self
            .remote_pod
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        write!(
            f,
            "{} {:<5} {pod} {} {arrow} {}{peer} {} {}",
            self.time, self.verdict, self.local, self.remote, self.protocol, self.reason
        )?;
        if let Some(policy) = &self.policy {
            write!(f, " by {policy}")?;
        }
        if !self.isolated_by.is_empty() {
            write!(f, " (isolated by {})", self.isolated_by.join(", "))?;
        }
        Ok(())
    }
}

/// What turns numbers into names: the last compilation and the cluster it came from.
#[derive(Clone, Debug, Default)]
pub struct Names {
    node: String,
    endpoints: BTreeMap<u32, ObjectRef>,
    policies: BTreeMap<u32, ObjectRef>,
    isolating: BTreeMap<(u32, u8), Vec<u32>>,
    pods_by_ip: BTreeMap<IpAddr, ObjectRef>,
}

impl Names {
    /// Names as of `compiled`.
    pub fn new(node: &str, cluster: &Cluster, compiled: &Compiled) -> Self {
        Self {
            node: node.to_owned(),
            endpoints: compiled
                .endpoints
                .iter()
                .map(|(pod, info)| (info.endpoint_id, pod.clone()))
                .collect(),
            policies: compiled.policy_names.clone(),
            isolating: compiled
                .isolating
                .iter()
                .filter_map(|((pod, dir), ids)| {
                    let ep = compiled.endpoints.get(pod)?.endpoint_id;
                    Some(((ep, *dir as u8), ids.clone()))
                })
                .collect(),
            pods_by_ip: cluster
                .pods
                .values()
                .flat_map(|p| p.ips.iter().map(|ip| (*ip, p.id.clone())))
                .collect(),
        }
    }

    /// The record of an event.
    pub fn record(&self, e: &FlowEvent) -> FlowRecord {
        let ip = |a: &[u8; 16]| -> Option<IpAddr> {
            match e.family {
                FAMILY_IPV4 => Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()),
                FAMILY_IPV6 => Some(Ipv6Addr::from(*a).into()),
                _ => None,
            }
        };
        let endpoint = |addr: Option<IpAddr>, port: u16| match addr {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            Some(v4) => format!("{v4}:{port}"),
            None => "-".to_owned(),
        };
        let remote = ip(&e.remote_addr);
        FlowRecord {
            time: wall_clock(e.timestamp_ns),
            node: self.node.clone(),
            pod: self.endpoints.get(&e.endpoint_id).map(ToString::to_string),
            direction: Direction::from_u8(e.direction)
                .map_or("?", Direction::as_str)
                .to_owned(),
            verdict: Verdict::from_u8(e.verdict)
                .map_or("?", Verdict::as_str)
                .to_owned(),
            reason: reason_name(e.verdict, e.reason).to_owned(),
            policy: self.policies.get(&e.policy_id).map(ToString::to_string),
            isolated_by: if e.verdict == Verdict::Drop as u8
                && e.reason == DropReason::PolicyDenied as u8
            {
                self.isolating
                    .get(&(e.endpoint_id, e.direction))
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.policies.get(id))
                    .map(ToString::to_string)
                    .collect()
            } else {
                Vec::new()
            },
            protocol: if e.family == 0 {
                "non-IP".to_owned()
            } else {
                proto::name(e.proto).to_owned()
            },
            local: endpoint(ip(&e.local_addr), e.local_port),
            remote: endpoint(remote, e.remote_port),
            remote_pod: remote
                .and_then(|r| self.pods_by_ip.get(&r))
                .map(ToString::to_string),
        }
    }
}

/// An event's boot-time clock reading as wall-clock time.
fn wall_clock(monotonic_ns: u64) -> String {
    let now_mono = clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or(monotonic_ns);
    let age = Duration::from_nanos(now_mono.saturating_sub(monotonic_ns));
    let at = SystemTime::now() - age;
    jiff::Timestamp::try_from(at)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
