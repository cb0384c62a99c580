//! The plugin's commands. ADD hands the new pod to the local agent and returns only once
//! the agent enforces it, then passes the previous result on unchanged; DEL tells the
//! agent the sandbox is gone; CHECK asks whether it still enforces it; VERSION says which
//! spec versions the plugin speaks.

use std::{collections::BTreeMap, io::Read, path::PathBuf, time::Duration};

use serde_json::Value;

use super::spec::{
    CniError, Code, DEFAULT_TIMEOUT_SECONDS, NetConf, PrevResult, SUPPORTED_VERSIONS, parse_args,
    version_info,
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

fn timeout(conf: &NetConf) -> Duration {
    Duration::from_secs(conf.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
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

fn unreachable(e: &EndpointCallError) -> CniError {
    CniError::new(
        Code::TryAgainLater,
        e.to_string(),
        "the pod does not start until the policy agent on this node enforces it; check that \
         the policy-agent pod runs on this node (kubectl -n kube-system get pods -o wide); the \
         runtime retries. To let pods start without it, set \"failOpen\": true in the plugin's \
         entry (policy-agent cni install --fail-open)",
    )
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
            "see policy-agent status and the agent's log on this node",
        ),
        EndpointReply::Refused { message } => CniError::new(
            Code::InterfaceRefused,
            format!("the policy agent refuses the pod's interface: {message}"),
            "the agent only enforces a pod on a host-side interface that carries that pod \
             alone (its veth, or its port of the bridge); see policy-agent status on this \
             node. To let such pods start unprotected, set \"failOpen\": true in the \
             plugin's entry (policy-agent cni install --fail-open)",
        ),
        other => CniError::new(
            Code::NotEnforced,
            format!("unexpected answer from the agent: {other:?}"),
            "the plugin and the agent come from different versions: reinstall",
        ),
    }
}

fn add(invocation: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let (request, prev) = endpoint(invocation, conf)?;
    let pod = request.pod();
    match api::endpoint_add(&socket(conf), request, timeout(conf)) {
        Ok(EndpointReply::Enforced { interface, .. }) => {
            eprintln!("policy-agent-cni: {pod} enforced on {interface}");
            Ok(prev)
        }
        Ok(EndpointReply::Refused { message }) if conf.fail_open => {
            eprintln!(
                "policy-agent-cni: the agent refuses {pod}'s interface ({message}); failOpen \
                 is set: {pod} starts unprotected"
            );
            Ok(prev)
        }
        Ok(reply) => Err(refused(reply)),
        Err(e @ EndpointCallError::Unreachable { .. }) if conf.fail_open => {
            eprintln!("policy-agent-cni: {e}; failOpen is set: {pod} starts unprotected");
            Ok(prev)
        }
        Err(e) => Err(unreachable(&e)),
    }
}

fn check(invocation: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let (request, prev) = endpoint(invocation, conf)?;
    match api::endpoint_check(&socket(conf), request, timeout(conf)) {
        Ok(EndpointReply::Enforced { .. }) => Ok(prev),
        // ADD let it start unprotected; CHECK keeps to that.
        Ok(EndpointReply::Refused { message }) if conf.fail_open => {
            eprintln!(
                "policy-agent-cni: the agent refuses the pod's interface ({message}); failOpen is set"
            );
            Ok(prev)
        }
        Ok(reply) => Err(refused(reply)),
        Err(e @ EndpointCallError::Unreachable { .. }) if conf.fail_open => {
            eprintln!("policy-agent-cni: {e}; failOpen is set");
            Ok(prev)
        }
        Err(e) => Err(unreachable(&e)),
    }
}

/// DEL succeeds when the agent is unreachable: the sandbox is gone either way, and a
/// restarted agent only enforces pods that exist. Failing would block pod deletion.
fn delete(invocation: &Invocation, conf: &NetConf) -> Result<Value, CniError> {
    let request = EndpointDelete {
        pod: invocation.pod(),
        container_id: invocation.container_id.clone(),
    };
    match api::endpoint_delete(&socket(conf), request, timeout(conf)) {
        Ok(EndpointReply::Deleted) => {}
        Ok(reply) => return Err(refused(reply)),
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
