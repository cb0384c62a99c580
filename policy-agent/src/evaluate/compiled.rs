//! The compiled evaluator: compile the cluster as the agent does, then answer with the
//! datapath's own decision code (`policy_common::decide`) run on the compiled map contents.
//! A flow passes when the source's egress and the destination's ingress both allow it,
//! as `from_pod` and `to_pod` decide it on one node.

use std::{collections::BTreeSet, net::IpAddr};

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
/// Node name of the pods a partial evaluator does not compile as local.
const ELSEWHERE: &str = "elsewhere";

/// A cluster compiled for one node that holds every pod.
pub struct CompiledEvaluator {
    compiled: Compiled,
    lengths: PrefixLengths,
    /// The pods compiled as local, when not every pod is (see [`CompiledEvaluator::for_pods`]).
    local: Option<BTreeSet<ObjectRef>>,
}

impl CompiledEvaluator {
    /// Compiles `cluster` with every pod on one node.
    pub fn new(cluster: &Cluster) -> Self {
        Self::with_compiler(&mut Compiler::new(), cluster)
    }

    /// Like [`CompiledEvaluator::new`], reusing a compiler (and its stable ids).
    pub fn with_compiler(compiler: &mut Compiler, cluster: &Cluster) -> Self {
        Self::of(compiler.compile(&on_one_node(cluster), &node()), None)
    }

    /// Compiles `cluster` with only the `local` pods on the evaluation node and every other
    /// pod on another one. Its answers about flows whose pod ends (and, through a Service,
    /// whose backends) are all `local` are those of [`CompiledEvaluator::new`]: an
    /// endpoint's maps do not depend on where its peers run. The compile costs what the
    /// local pods need, not what the whole cluster does.
    pub fn for_pods(cluster: &Cluster, local: &BTreeSet<ObjectRef>) -> Self {
        let mut c = cluster.clone();
        for pod in c.pods.values_mut() {
            pod.node = Some(
                if local.contains(&pod.id) {
                    NODE
                } else {
                    ELSEWHERE
                }
                .to_owned(),
            );
        }
        Self::of(Compiler::new().compile(&c, &node()), Some(local.clone()))
    }

    fn of(compiled: Compiled, local: Option<BTreeSet<ObjectRef>>) -> Self {
        Self {
            lengths: PrefixLengths::of(&compiled),
            compiled,
            local,
        }
    }

    /// The endpoint of `pod` (none for a pod the datapath does not enforce). A pod that
    /// was not compiled would read as unenforced: asking about it is a caller's bug.
    fn endpoint(&self, pod: &ObjectRef) -> Option<&EndpointInfo> {
        assert!(
            self.local.as_ref().is_none_or(|l| l.contains(pod)),
            "{pod} was not compiled by this partial evaluator"
        );
        self.compiled.endpoints.get(pod)
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
            let Some(ep) = pod.and_then(|p| self.endpoint(p)) else {
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
        let client = flow.from.pod.as_ref().and_then(|p| self.endpoint(p));
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
