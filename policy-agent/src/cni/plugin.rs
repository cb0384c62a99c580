//! The plugin's commands. ADD hands the new pod to the local agent and returns only once
//! the agent enforces it, then passes the previous result on unchanged; DEL tells the
//! agent the sandbox is gone; CHECK asks whether it still enforces it; VERSION says which
//! spec versions the plugin speaks.
//!
//! Every call to the agent runs under one deadline (`timeoutSeconds`) and a reply size cap
//! ([`api::MAX_REPLY_BYTES`]), so no agent, however stuck or broken, holds the runtime's
//! ADD longer or grows the plugin. With `failOpen`, every failure of the agent (unreachable,
//! too slow, an unusable reply, or a refusal) lets the pod start unprotected.

use std::{collections::BTreeMap, io::Read, path::PathBuf};

use serde_json::Value;

use super::spec::{
    CniError, Code, NetConf, PrevResult, SUPPORTED_VERSIONS, parse_args, version_info,
};
use crate::{
    agent::api::{self, EndpointCallError, EndpointDelete, EndpointReply, EndpointRequest},
    model::ObjectRef,
};

/// The agent instance whose socket is used when the configuration names none.
const DEFAULT_INSTANCE: &str = "agent";

/// What the runtime passes in the environment.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_ARGS`, split.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            args: parse_args(&var("CNI_ARGS")),
        }
    }

    fn pod(&self) -> Option<ObjectRef> {
        let namespace = self.args.get("K8S_POD_NAMESPACE")?;
        let name = self.args.get("K8S_POD_NAME")?;
        Some(ObjectRef::new(namespace, name))
    }
}

/// Runs one command with the configuration `stdin`; returns what to print on stdout.
/// Diagnostics for the node's log go to stderr.
pub fn run(invocation: &Invocation, stdin: &str) -> Result<Value, (String, CniError)> {
    if invocation.command == "VERSION" {
        return Ok(version_info());
    }
    let conf = parse_conf(stdin).map_err(|e| (newest(), e))?;
    let version = conf.cni_version.clone();
    let result = match invocation.command.as_str() {
        "ADD" => add(invocation, &conf),
        "DEL" => delete(invocation, &conf),
        "CHECK" => check(invocation, &conf),
        "" => Err(CniError::new(
            Code::InvalidEnvironment,
            "CNI_COMMAND is not set",
            "this is a CNI plugin: a container runtime runs it",
        )),
        other => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_COMMAND {other:?} is not supported"),
            format!("supported: ADD, DEL, CHECK, VERSION (spec {SUPPORTED_VERSIONS:?})"),
        )),
    };
    result.map_err(|e| (version, e))
}

fn newest() -> String {
    super::spec::NEWEST_VERSION.to_owned()
}

fn parse_conf(stdin: &str) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            Code::Decoding,
            format!("the network configuration on stdin is not valid: {e}"),
            "the runtime passes the conflist entry with cniVersion; check the node's CNI configuration",
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("cniVersion {} is not supported", conf.cni_version),
            format!("use one of {SUPPORTED_VERSIONS:?} in the conflist"),
        ));
    }
    Ok(conf)
}

fn socket(conf: &NetConf) -> PathBuf {
    conf.socket
        .as_ref()
        .map_or_else(|| api::default_socket(DEFAULT_INSTANCE), PathBuf::from)
}

/// The pod's identity, addresses and interface from CNI_ARGS and prevResult.
fn endpoint(invocation: &Invocation, conf: &NetConf) -> Result<(EndpointRequest, Value), CniError> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            Code::InvalidNetworkConfig,
            "no prevResult: this plugin only chains after the node's main CNI plugin",
            "put it after the main plugin in the conflist's \"plugins\" (policy-agent cni install does)",
        )
    })?;
    let parsed: PrevResult = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(
            Code::Decoding,
            format!("prevResult is not a CNI result: {e}"),
            "check the main plugin's output",
        )
    })?;
    let ips = parsed.pod_ips().map_err(|e| {
        CniError::new(
            Code::InvalidNetworkConfig,
            e,
            "check the main plugin's IPAM configuration",
        )
    })?;
    let pod = invocation.pod().ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            "CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME",
            "this plugin enforces Kubernetes pods: the kubelet's runtime passes both",
        )
    })?;
    if invocation.container_id.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            "CNI_CONTAINERID is not set",
            "the runtime passes the sandbox's id",
        ));
    }
    let request = EndpointRequest {
        namespace: pod.namespace,
        name: pod.name,
        uid: invocation.args.get("K8S_POD_UID").cloned(),
        container_id: invocation.container_id.clone(),
        interface: parsed.host_interface().map(str::to_owned),
        host_interfaces: parsed
            .host_interfaces()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        ips,
    };
    Ok((request, prev))
}

/// What the operator can do when the agent fails a pod and the plugin fails closed.
const FAIL_OPEN_ADVICE: &str = "To let pods start without it, set \"failOpen\": true in the \
     plugin's entry (policy-agent cni install --fail-open)";

/// A call to the agent that got no usable answer. A missing, stuck or slow agent is worth
/// a retry (the runtime retries); a reply the plugin cannot read is not.
fn call_failed(e: &EndpointCallError) -> CniError {
    let (code, advice) = match e {
        EndpointCallError::Unreachable { .. }
        | EndpointCallError::TimedOut { .. }
        | EndpointCallError::Io { .. }
        | EndpointCallError::Closed { .. } => (
            Code::TryAgainLater,
            "the pod does not start until the policy agent on this node enforces it; check \
             that the policy-agent pod runs on this node (kubectl -n kube-system get pods -o \
             wide) and its log; the runtime retries. A slow agent may need a larger \
             \"timeoutSeconds\" in the plugin's entry",
        ),
        EndpointCallError::Oversized { .. } | EndpointCallError::Malformed { .. } => (
            Code::NotEnforced,
            "the socket does not answer as the policy agent does: check \"socket\" in the \
             plugin's entry, and that the plugin and the agent come from the same release \
             (reinstall)",
        ),
    };
    CniError::new(code, e.to_string(), format!("{advice}. {FAIL_OPEN_ADVICE}"))
}

fn refused(reply: EndpointReply) -> CniError {
    match reply {
        EndpointReply::UnknownPod { message } => CniError::new(
            Code::UnknownPod,
            message,
            "the pod is neither in the agent's watch nor on the API server; check the agent's \
             access to the API server (policy-agent status)",
        ),
        EndpointReply::Failed { message } => CniError::new(
            Code::NotEnforced,
            message,
            format!("see policy-agent status and the agent's log on this node. {FAIL_OPEN_ADVICE}"),
        ),
        EndpointReply::Refused { message } => CniError::new(
            Code::InterfaceRefused,
            format!("the policy agent refuses the pod's interface: {message}"),
            format!(
                "the agent only enforces a pod on a host-side interface that carries that pod \
                 alone (its veth, or its port of the bridge); see policy-agent status on this \
                 node. {FAIL_OPEN_ADVICE}"
            ),
        ),
        other => CniError::new(
            Code::NotEnforced,
            format!("unexpected answer from the agent: {other:?}"),
            "the plugin and the agent come from different versions: reinstall",
        ),
    }
}

/// The interface the agent enforces the pod on, or why it does not.
fn enforced(outcome: Result<EndpointReply, EndpointCallError>) -> Result<String, CniError> {
    match outcome {
        Ok(EndpointReply::Enforced { interface, .. }) => Ok(interface),
        Ok(reply) => Err(refused(reply)),
        Err(e) => Err(call_failed(&e)),
    }
}

/// With failOpen, every failure of the agent lets the pod go on (logged for the node's
/// operator); without it, the failure is the command's error.
fn fail_open(conf: &NetConf, error: CniError, consequence: &str) -> Result<(), CniError> {
    if !conf.fail_open {
        return Err(error);
    }
    eprintln!(
        "policy-agent-cni: {}; failOpen is set: {consequence}",
        error.msg
    );
    Ok(())
}

fn add(invocation: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let (request, prev) = endpoint(invocation, conf)?;
    let pod = request.pod();
    let outcome = api::endpoint_add(&socket(conf), request, conf.timeout());
    match enforced(outcome) {
        Ok(interface) => eprintln!("policy-agent-cni: {pod} enforced on {interface}"),
        Err(e) => fail_open(conf, e, &format!("{pod} starts unprotected"))?,
    }
    Ok(prev)
}

fn check(invocation: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let (request, prev) = endpoint(invocation, conf)?;
    let pod = request.pod();
    let outcome = api::endpoint_check(&socket(conf), request, conf.timeout());
    // ADD let the pod start unprotected when the agent failed it; CHECK keeps to that.
    if let Err(e) = enforced(outcome) {
        fail_open(conf, e, &format!("{pod} stays unprotected"))?;
    }
    Ok(prev)
}

/// DEL succeeds when the agent cannot be asked: the sandbox is gone either way, and a
/// restarted agent only enforces pods that exist. Failing would block pod deletion.
fn delete(invocation: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let request = EndpointDelete {
        pod: invocation.pod(),
        container_id: invocation.container_id.clone(),
    };
    match api::endpoint_delete(&socket(conf), request, conf.timeout()) {
        Ok(EndpointReply::Deleted) => {}
        Ok(reply) => fail_open(conf, refused(reply), "the sandbox is gone anyway")?,
        Err(e) => eprintln!("policy-agent-cni: {e}; nothing to clean up"),
    }
    // DEL prints nothing on success (spec 1.0); older versions accept the empty output.
    Ok(Value::Null)
}

/// The binary's entry point: reads the environment and stdin, prints the result or the
/// error object, and returns the exit status.
pub fn main() -> std::process::ExitCode {
    let invocation = Invocation::from_env();
    let mut stdin = String::new();
    if invocation.command != "VERSION"
        && let Err(e) = std::io::stdin().read_to_string(&mut stdin)
    {
        let error = CniError::new(Code::Io, format!("reading stdin: {e}"), "");
        println!("{}", error.to_json(super::spec::NEWEST_VERSION));
        return std::process::ExitCode::FAILURE;
    }
    match run(&invocation, &stdin) {
        Ok(Value::Null) => std::process::ExitCode::SUCCESS,
        Ok(out) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err((version, error)) => {
            eprintln!("policy-agent-cni: {error}");
            println!("{}", error.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}
