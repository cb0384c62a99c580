//! The chained CNI plugin (`policy-agent-cni`): the runtime runs it right after the node's
//! main plugin, and it hands the new pod to the local agent, which attaches the programs
//! and writes the pod's policy before the plugin returns, so no container of the pod ever
//! runs unprotected. [`spec`] is the part of the CNI specification it speaks, [`plugin`]
//! its commands, [`install`] how it is chained into the node's configuration.

pub mod install;
pub mod plugin;
pub mod spec;
