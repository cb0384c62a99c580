//! The compiled evaluator: compile the cluster as the agent does, then answer with the
//! datapath's own decision code (`policy_common::decide`) run on the compiled map contents.
//! A flow passes when the source's egress and the destination's ingress both allow it,
//! as `from_pod` and `to_pod` decide it on one node.

use std::net::IpAddr;

use policy_common::{
    decide,
    maps::{Direction, EndpointInfo},
};

use super::{Flow, ServiceFlow, service_verdict};
use crate::{
    compiler::{
        Compiled, Compiler, NodeConfig, ip_key,
        lookup::{Lookup, PrefixLengths},
    },
    model::{Cluster, ObjectRef},
};

/// Node name under which every pod is compiled as local.
const NODE: &str = "evaluation";

/// A cluster compiled for one node that holds every pod.
pub struct CompiledEvaluator {
    compiled: Compiled,
    lengths: PrefixLengths,
}

impl CompiledEvaluator {
    /// Compiles `cluster` with every pod on one node.
    pub fn new(cluster: &Cluster) -> Self {
        Self::with_compiler(&mut Compiler::new(), cluster)
    }

    /// Like [`CompiledEvaluator::new`], reusing a compiler (and its stable ids).
    pub fn with_compiler(compiler: &mut Compiler, cluster: &Cluster) -> Self {
        let compiled = compiler.compile(&on_one_node(cluster), &node());
        Self {
            lengths: PrefixLengths::of(&compiled),
            compiled,
        }
    }

    /// What the compiler produced.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The compiled maps, read as the datapath reads them.
    pub fn maps(&self) -> Lookup<'_> {
        Lookup::new(&self.compiled, &self.lengths)
    }

    /// Whether the flow's first packet passes the source's egress and the destination's
    /// ingress; a pod talking to itself never reaches the datapath.
    pub fn allows(&self, flow: &Flow<'_>) -> bool {
        if flow.from.pod.is_some() && flow.from.pod == flow.to.pod {
            return true;
        }
        let proto = flow.protocol.number();
        let side = |pod: Option<&ObjectRef>, dir, remote| {
            let Some(ep) = pod.and_then(|p| self.compiled.endpoints.get(p)) else {
                return true; // an external host: no policy of ours applies
            };
            // Between two hosts the node only forwards: a node address on the sending side
            // would be just an address, as the datapath sees it on a pod's interface.
            let node_itself = dir == Direction::Egress;
            decide::new_flow(
                &self.maps(),
                ep,
                dir,
                &ip_key(remote),
                proto,
                flow.port,
                node_itself,
            )
            .allowed
            .is_some()
        };
        side(flow.from.pod.as_ref(), Direction::Egress, flow.dst)
            && side(flow.to.pod.as_ref(), Direction::Ingress, flow.src)
    }
}

/// The node every pod is put on.
pub fn node() -> NodeConfig {
    NodeConfig {
        name: NODE.to_owned(),
        addresses: NODE_ADDRESSES
            .iter()
            .map(|a| a.parse().expect("a valid address"))
            .collect(),
        ..NodeConfig::default()
    }
}

/// The addresses of [`node`], where its node ports and host ports answer (from ranges no
/// generated pod or host has).
pub const NODE_ADDRESSES: [&str; 2] = ["10.255.255.254", "fd00:ff:ff::fe"];

/// `cluster` with every pod scheduled on [`node`].
pub fn on_one_node(cluster: &Cluster) -> Cluster {
    let mut c = cluster.clone();
    for pod in c.pods.values_mut() {
        pod.node = Some(NODE.to_owned());
    }
    c
}

impl CompiledEvaluator {
    /// The verdict on a connection through a Service, as the datapath reaches it: the
    /// client's `from_pod` decides on the frontend (with the compiled Service verdicts),
    /// each backend's `to_pod` on the connection the proxy rewrote. `None` when it depends
    /// on the backend the proxy picks.
    pub fn allows_service(&self, flow: &ServiceFlow<'_>) -> Option<bool> {
        let maps = self.maps();
        let t = flow.target;
        let proto = t.protocol.number();
        let client = flow
            .from
            .pod
            .as_ref()
            .and_then(|p| self.compiled.endpoints.get(p));
        let egress = match client {
            None => true,
            Some(ep) => match decide::frontend(&maps, &ip_key(t.address), proto, t.port) {
                Some(fe) => matches!(
                    decide::service_flow(&maps, ep, &fe),
                    decide::ServiceFlow::Allowed(..)
                ),
                None => false,
            },
        };
        let sides: Vec<(bool, bool)> = t
            .backends
            .iter()
            .map(|b| {
                let ingress = match self.endpoint_with(b.address) {
                    None => true,
                    // Its own packet, back through the Service (hairpin).
                    Some((pod, _)) if Some(pod) == flow.from.pod.as_ref() => true,
                    Some((_, ep)) => decide::new_flow(
                        &maps,
                        ep,
                        Direction::Ingress,
                        &ip_key(flow.src),
                        proto,
                        b.port,
                        false,
                    )
                    .allowed
                    .is_some(),
                };
                (egress, ingress)
            })
            .collect();
        service_verdict(&sides)
    }

    /// The endpoint that has `address`: the one whose `to_pod` sees a connection the proxy
    /// sent there, whatever pod (if any) the EndpointSlice names.
    fn endpoint_with(&self, address: IpAddr) -> Option<(&ObjectRef, &EndpointInfo)> {
        let key = ip_key(address);
        self.compiled
            .endpoints
            .iter()
            .find(|(_, ep)| ep.owns(key.family, &key.addr))
    }
}
