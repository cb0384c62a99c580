//! policy-agent: enforces Kubernetes NetworkPolicy with eBPF.
//!
//! Data flows through the modules in this order:
//! [`source`] (manifests, Kubernetes) -> [`model`] -> [`semantics`] -> [`compiler`] -> [`datapath`]
//! (load, pin, attach, sync the maps) -> kernel. [`lab`] builds a simulated node from
//! network namespaces and drives all of it with real packets. [`cni`] is the chained CNI
//! plugin that hands each new pod to the agent before it starts.

pub mod agent;
pub mod answers;
pub mod capacity;
pub mod cni;
pub mod compiler;
pub mod datapath;
pub mod evaluate;
pub mod filter;
pub mod generate;
pub mod lab;
pub mod model;
pub mod netns;
pub mod plan;
pub mod report;
pub mod semantics;
pub mod source;
pub mod summary;
pub mod workload;
