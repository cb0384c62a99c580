//! The kernel evaluator: the real programs and maps decide the first packet of each flow,
//! crafted and run with BPF_PROG_TEST_RUN: `from_pod` as the source pod, then `to_pod` as
//! the destination pod. Every endpoint takes its turn on the test interface (loopback).

use policy_agent::{
    compiler::{Compiled, Compiler},
    datapath::{BpfDatapath, TableSizes},
    evaluate::{
        Flow,
        compiled::{node, on_one_node},
    },
    model::{Cluster, ObjectRef, Protocol},
};
use policy_common::{maps::programs, reason::TC_ACT_SHOT};

use crate::packets::{Packet, SYN};

/// Where test packets appear.
const LOOPBACK_IFINDEX: u32 = 1;
const PIN_PREFIX: &str = "keval-";
/// First source port of the crafted flows; each flow gets its own.
const FIRST_SOURCE_PORT: u16 = 1024;
/// Each question is one flow: small tables are made (and remade per scenario) quickly.
const TABLES: TableSizes = TableSizes {
    conntrack: 1024,
    fragments: 16,
};

/// One datapath, reloaded with each scenario's maps.
pub struct KernelEvaluator {
    datapath: BpfDatapath,
    compiler: Compiler,
    compiled: Compiled,
    next_port: u16,
}

impl Default for KernelEvaluator {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelEvaluator {
    /// Loads a fresh datapath (its pins go when it is dropped).
    pub fn new() -> Self {
        Self {
            datapath: crate::test_datapath(PIN_PREFIX, TABLES),
            compiler: Compiler::new(),
            compiled: Compiled::default(),
            next_port: FIRST_SOURCE_PORT,
        }
    }

    /// Compiles `cluster` (every pod on one node) and syncs the maps, forgetting the
    /// connections of the previous scenario.
    pub fn load(&mut self, cluster: &Cluster) {
        self.compiled = self.compiler.compile(&on_one_node(cluster), &node());
        self.datapath.sync(&self.compiled).expect("maps sync");
        self.datapath.clear_conntrack().expect("conntrack clears");
        self.next_port = FIRST_SOURCE_PORT;
    }

    /// Whether the kernel lets the flow's first packet out of its source and into its
    /// destination.
    pub fn allows(&mut self, flow: &Flow<'_>) -> bool {
        if flow.from.pod.is_some() && flow.from.pod == flow.to.pod {
            return true;
        }
        let sport = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_SOURCE_PORT);
        let packet = match flow.protocol {
            Protocol::Tcp => Packet::tcp(flow.src, flow.dst, sport, flow.port, SYN),
            Protocol::Udp => Packet::udp(flow.src, flow.dst, sport, flow.port, b"probe"),
            Protocol::Sctp => Packet::sctp_init(flow.src, flow.dst, sport, flow.port),
        }
        .frame();
        self.passes(flow.from.pod.as_ref(), programs::FROM_POD, &packet)
            && self.passes(flow.to.pod.as_ref(), programs::TO_POD, &packet)
    }

    /// Runs `program` as `pod`'s (a host outside the cluster has no program to pass).
    fn passes(&mut self, pod: Option<&ObjectRef>, program: &'static str, packet: &[u8]) -> bool {
        let Some(pod) = pod else {
            return true;
        };
        let info = self.compiled.endpoints[pod];
        self.datapath
            .set_endpoint(LOOPBACK_IFINDEX, &info)
            .expect("endpoint written");
        self.datapath.test_run(program, packet).expect("test run") != TC_ACT_SHOT
    }
}
