//! The container runtime's side of CNI, as the lab's nodes use it to give pods their
//! network: each plugin of the network configuration list runs in turn, inside the node's
//! namespace, with the `CNI_*` environment and its configuration (plus the previous
//! plugin's result) on stdin, exactly as libcni runs them for containerd or CRI-O. When an
//! ADD fails, the plugins already run are deleted again in reverse order, as runtimes do.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{LabConfig, config::CniKind};
use crate::{cni::spec::PLUGIN_TYPE, model::ContainerPort, netns::NetNs};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The spec version of the lab's network configuration.
pub const CNI_VERSION: &str = "1.0.0";
/// The interface name of every pod's network, inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// A plugin that failed, with the error object it printed.
#[derive(Debug, thiserror::Error)]
#[error("CNI {command} of {plugin} failed: {message}")]
pub struct PluginError {
    /// ADD or DEL.
    pub command: &'static str,
    /// The plugin's type.
    pub plugin: String,
    /// The error's `msg` (or what went wrong running it).
    pub message: String,
    /// The error object, if the plugin printed one.
    pub error: Option<Box<Value>>,
}

/// One pod sandbox, as the runtime describes it to the plugins.
pub struct Sandbox<'a> {
    /// The node the plugins run on.
    pub node: &'a NetNs,
    /// The pod's network namespace.
    pub netns: &'a NetNs,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_ARGS` pairs (the kubelet passes the pod's namespace, name and uid).
    pub args: Vec<(String, String)>,
    /// What the runtime offers plugins that ask for it in their `capabilities`, by
    /// capability (`portMappings`: the pod's host ports): an object, or null.
    pub runtime_config: &'a Value,
}

/// How long one plugin took, from its start to its exit, as the runtime measured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginTime {
    /// The plugin's type.
    pub plugin: String,
    /// Wall-clock time of its process.
    pub elapsed: Duration,
}

/// What a successful ADD returns.
#[derive(Clone, Debug)]
pub struct Added {
    /// The last plugin's result.
    pub result: Value,
    /// Each plugin's time, in the order they ran.
    pub times: Vec<PluginTime>,
}

/// A node's network configuration list and where its plugins are.
#[derive(Clone, Debug)]
pub struct CniRuntime {
    conflist: Value,
    bin_dirs: Vec<PathBuf>,
}

impl CniRuntime {
    /// Runs `conflist` (a parsed `.conflist`) with plugins from `bin_dirs`.
    pub fn new(conflist: Value, bin_dirs: Vec<PathBuf>) -> Self {
        Self { conflist, bin_dirs }
    }

    /// The configuration list.
    pub fn conflist(&self) -> &Value {
        &self.conflist
    }

    fn plugins(&self) -> &[Value] {
        self.conflist["plugins"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// ADD: every plugin in order, each given the previous result; returns the last result.
    /// On failure the plugins run so far are deleted again and the first error returned.
    pub fn add(&self, sandbox: &Sandbox<'_>) -> Result<Added, PluginError> {
        let mut prev: Option<Value> = None;
        let mut times = Vec::new();
        for (i, plugin) in self.plugins().iter().enumerate() {
            let start = Instant::now();
            match self.exec("ADD", plugin, sandbox, prev.as_ref()) {
                Ok(result) => {
                    times.push(PluginTime {
                        plugin: plugin["type"].as_str().unwrap_or_default().to_owned(),
                        elapsed: start.elapsed(),
                    });
                    prev = Some(result);
                }
                Err(e) => {
                    for done in self.plugins()[..=i].iter().rev() {
                        let _ = self.exec("DEL", done, sandbox, prev.as_ref());
                    }
                    return Err(e);
                }
            }
        }
        Ok(Added {
            result: prev.unwrap_or(Value::Null),
            times,
        })
    }

    /// DEL: every plugin in reverse order, with the result ADD returned.
    pub fn del(&self, sandbox: &Sandbox<'_>, result: Option<&Value>) -> Result<(), PluginError> {
        for plugin in self.plugins().iter().rev() {
            self.exec("DEL", plugin, sandbox, result)?;
        }
        Ok(())
    }

    /// The plugin's configuration as libcni builds it: the entry, with the list's name and
    /// version, the runtime's values of the capabilities the plugin declares, and the
    /// previous result.
    fn config(&self, plugin: &Value, sandbox: &Sandbox<'_>, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        let wanted = plugin["capabilities"].as_object().into_iter().flatten();
        for (capability, _) in wanted.filter(|(_, on)| on.as_bool() == Some(true)) {
            if let Some(value) = sandbox.runtime_config.get(capability) {
                conf["runtimeConfig"][capability] = value.clone();
            }
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn binary(&self, plugin_type: &str) -> Option<PathBuf> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.exists())
    }

    fn exec(
        &self,
        command: &'static str,
        plugin: &Value,
        sandbox: &Sandbox<'_>,
        prev: Option<&Value>,
    ) -> Result<Value, PluginError> {
        let plugin_type = plugin["type"].as_str().unwrap_or_default().to_owned();
        let fail = |message: String, error: Option<Box<Value>>| PluginError {
            command,
            plugin: plugin_type.clone(),
            message,
            error,
        };
        let binary = self.binary(&plugin_type).ok_or_else(|| {
            fail(
                format!("no plugin {plugin_type:?} in {:?}", self.bin_dirs),
                None,
            )
        })?;
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let args: Vec<String> = sandbox
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", sandbox.node.path().display()))
            .arg("--")
            .arg(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", sandbox.netns.path())
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(
                    format!("cannot run {} with nsenter: {e}", binary.display()),
                    None,
                )
            })?;
        let conf = self.config(plugin, sandbox, prev).to_string();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(e.to_string(), None))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let message = parsed.as_ref().and_then(|v| v["msg"].as_str()).map_or_else(
                || String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                str::to_owned,
            );
            return Err(fail(message, parsed.map(Box::new)));
        }
        // DEL and CHECK print nothing; the result stays the one ADD returned.
        Ok(parsed.or_else(|| prev.cloned()).unwrap_or(Value::Null))
    }
}

/// The bridge the lab's nodes hang their pods off with [`CniKind::Bridge`], named as
/// flannel names it (kubenet's is `cbr0`). It never starts with the pods' interface prefix.
pub const LAB_BRIDGE: &str = "cni0";
/// The MTU of every pod link.
const LAB_MTU: u32 = 1500;

/// The lab's network configuration: the node's main plugin (see [`main_plugin`]), then, if
/// `socket` is given, the policy plugin talking to the node's agent there.
pub fn lab_conflist(socket: Option<&Path>, config: &LabConfig) -> Value {
    let fail_open = config.fail_open;
    let mut plugins = vec![main_plugin(config.cni), port_map()];
    if let Some(socket) = socket {
        plugins.push(json!({
            "type": PLUGIN_TYPE,
            "socket": socket.display().to_string(),
            "failOpen": fail_open,
        }));
    }
    json!({"cniVersion": CNI_VERSION, "name": "lab", "plugins": plugins})
}

/// The node's main plugin, with the addresses the runtime asks `static` IPAM for and a
/// default route per family: `ptp` (a routed veth per pod, as Calico and Cilium do), or
/// `bridge` as flannel and kubenet configure it (every pod's veth a port of [`LAB_BRIDGE`],
/// which holds the gateway address of each pod subnet; hairpin mode, so that a pod reaches
/// itself through a Service; no masquerade).
///
/// The bridge holds the gateways, but the plugin is not their keeper (`isGateway` off): it
/// allows one IPv4 address per bridge, where flannel and kubenet give a node one subnet,
/// and the lab's pods, with the manifests' addresses, may come from several. The lab's
/// node puts each pod subnet's gateway on the bridge itself (see
/// [`super::topology::Topology::add_pod`]), as the node's network setup does for `cni0`.
pub fn main_plugin(cni: CniKind) -> Value {
    let ipam = json!({"type": "static", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]});
    match cni {
        CniKind::Ptp => json!({"type": "ptp", "mtu": LAB_MTU, "ipam": ipam}),
        CniKind::Bridge => json!({
            "type": "bridge",
            "bridge": LAB_BRIDGE,
            "isGateway": false,
            "hairpinMode": true,
            "mtu": LAB_MTU,
            "ipam": ipam,
        }),
    }
}

/// The reference `portmap` plugin, as runtimes chain it after the main plugin: it publishes
/// a pod's host ports on its node's addresses (DNAT), and masquerades a pod that reaches
/// itself through one (`snat`).
pub fn port_map() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true})
}

/// The runtime's `portMappings` for a pod's container ports with a host port, as the
/// kubelet passes them.
pub fn port_mappings(ports: &[ContainerPort]) -> Value {
    let mappings: Vec<Value> = ports
        .iter()
        .filter_map(|cp| {
            Some(json!({
                "hostPort": cp.host_port?,
                "containerPort": cp.port,
                "protocol": cp.protocol.as_str().to_ascii_lowercase(),
            }))
        })
        .collect();
    json!({ "portMappings": mappings })
}

/// Where the reference plugins and (`with_ours`) `policy-agent-cni` are: the reference
/// directory and the directory of the running binary (or its parent, for test binaries in
/// `deps/`).
pub fn bin_dirs(with_ours: bool) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        ["ptp", "bridge", "static", "portmap"]
            .iter()
            .all(|p| Path::new(REFERENCE_PLUGINS).join(p).exists()),
        "the lab gives pods their network with the reference CNI plugins, which are missing \
         from {REFERENCE_PLUGINS}: apt-get install containernetworking-plugins"
    );
    if !with_ours {
        return Ok(vec![PathBuf::from(REFERENCE_PLUGINS)]);
    }
    let exe = std::env::current_exe()?;
    let ours = exe
        .ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join(PLUGIN_TYPE).exists())
        .map(Path::to_path_buf);
    let Some(ours) = ours else {
        anyhow::bail!(
            "{PLUGIN_TYPE} is not next to {} (build it: cargo build --bins -p policy-agent)",
            exe.display()
        );
    };
    Ok(vec![PathBuf::from(REFERENCE_PLUGINS), ours])
}
