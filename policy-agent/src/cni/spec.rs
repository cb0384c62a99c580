//! The parts of the CNI specification the plugin speaks: the network configuration it
//! reads on stdin, the previous plugin's result it passes on, the environment, and the
//! error form every failure takes.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::Duration};

use serde::Deserialize;
use serde_json::Value;

/// Spec versions the plugin accepts. Chaining (`prevResult`) needs 0.3.0; CHECK came in 0.4.0.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The version the plugin answers VERSION in.
pub const NEWEST_VERSION: &str = "1.0.0";

/// The plugin's `type` in a conflist (and its binary's name in the CNI bin directory).
pub const PLUGIN_TYPE: &str = "policy-agent-cni";

/// Error codes of the specification, and the plugin's own (100 and up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// The configuration's cniVersion is not supported.
    IncompatibleVersion = 1,
    /// The configuration has a field the plugin cannot honour.
    UnsupportedField = 2,
    /// The runtime's environment variables are missing or wrong.
    InvalidEnvironment = 4,
    /// stdin could not be read.
    Io = 5,
    /// stdin is not valid JSON of the expected shape.
    Decoding = 6,
    /// The configuration is valid JSON but wrong (a chained plugin without prevResult).
    InvalidNetworkConfig = 7,
    /// The agent is not reachable or not ready yet; the runtime should retry.
    TryAgainLater = 11,
    /// The agent does not know the pod (neither from its watch nor from the API server).
    UnknownPod = 100,
    /// The agent could not enforce policy on the pod's interface.
    NotEnforced = 101,
    /// The pod's interface is not the pod's alone (a bridge, an uplink, shared with another
    /// pod): the agent refuses to enforce the pod there.
    InterfaceRefused = 102,
}

/// A failure, printed to stdout as the specification's error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// Which kind of failure.
    pub code: Code,
    /// What happened.
    pub msg: String,
    /// What the operator should do about it.
    pub details: String,
}

impl CniError {
    /// An error with `code`, message and advice.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object, in the configuration's `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.msg, self.details)
    }
}

/// The network configuration the runtime gives the plugin on stdin, as far as the plugin
/// reads it: the version, its own settings, and the previous plugin's result.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of this configuration and of `prev_result`.
    pub cni_version: String,
    /// The agent's socket [default: [`crate::agent::api::default_socket`] of `agent`].
    pub socket: Option<String>,
    /// Let pods start, unprotected until the agent enforces them, whenever the agent fails
    /// them: unreachable, too slow, an unusable reply, or a refusal.
    #[serde(default)]
    pub fail_open: bool,
    /// The total deadline of each call to the agent (connect, request and the whole reply),
    /// in seconds; absent or 0: [`DEFAULT_TIMEOUT_SECONDS`]. Read it with
    /// [`NetConf::timeout`].
    pub timeout_seconds: Option<u64>,
    /// The result of the plugins before this one, passed on unchanged.
    pub prev_result: Option<Value>,
}

/// How long each call to the agent may take unless configured otherwise: the runtime
/// retries a failed ADD, so a long wait only delays the retry.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

impl NetConf {
    /// The total deadline of one call to the agent. `timeoutSeconds: 0` means the default,
    /// as absent does: a zero deadline could never succeed, and a plugin that always fails
    /// would keep every pod from starting.
    pub fn timeout(&self) -> Duration {
        let seconds = match self.timeout_seconds {
            None | Some(0) => DEFAULT_TIMEOUT_SECONDS,
            Some(seconds) => seconds,
        };
        Duration::from_secs(seconds)
    }
}

/// The parts of a previous result the plugin reads (it passes on the whole value).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PrevResult {
    /// Interfaces the main plugin created, host side without `sandbox`.
    #[serde(default)]
    pub interfaces: Vec<ResultInterface>,
    /// Addresses, with the index of their interface.
    #[serde(default)]
    pub ips: Vec<ResultIp>,
}

/// One interface of a result.
#[derive(Clone, Debug, Deserialize)]
pub struct ResultInterface {
    /// Its name.
    pub name: String,
    /// The network namespace it lives in; absent for the host's side.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Clone, Debug, Deserialize)]
pub struct ResultIp {
    /// `ip/prefix`.
    pub address: String,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl PrevResult {
    /// The pod's addresses: those on an interface inside the sandbox (or on no named
    /// interface). At most one per family, as Kubernetes assigns them.
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, String> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for (i, ip) in self.ips.iter().enumerate() {
            let on_host = ip
                .interface
                .and_then(|n| self.interfaces.get(n))
                .is_some_and(|iface| iface.sandbox.is_none());
            if on_host {
                continue;
            }
            let addr = ip.address.split('/').next().unwrap_or_default();
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!(
                    "prevResult.ips[{i}].address: {:?} is not an address",
                    ip.address
                )
            })?;
            if !ips.iter().any(|o| o.is_ipv4() == addr.is_ipv4()) {
                ips.push(addr);
            }
        }
        if ips.is_empty() {
            return Err("prevResult.ips: the main plugin gave the pod no address".to_owned());
        }
        Ok(ips)
    }

    /// The host-side interface, if the main plugin reported exactly one: it is where the
    /// programs attach. Without it the agent finds the interface by the route to the pod.
    pub fn host_interface(&self) -> Option<&str> {
        match self.host_interfaces().as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Every host-side interface the main plugin reported, in its order: a bridge plugin
    /// names the bridge and the pod's veth, and the agent tells them apart.
    pub fn host_interfaces(&self) -> Vec<&str> {
        self.interfaces
            .iter()
            .filter(|i| i.sandbox.is_none())
            .map(|i| i.name.as_str())
            .collect()
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The answer to VERSION.
pub fn version_info() -> Value {
    serde_json::json!({
        "cniVersion": NEWEST_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTP_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "veth0a1b2c3d", "mac": "8e:69:a5:56:47:04"},
            {"name": "eth0", "mac": "72:92:96:e9:34:5c", "sandbox": "/var/run/netns/p"}
        ],
        "ips": [
            {"interface": 1, "address": "10.1.2.3/24", "gateway": "10.1.2.254"},
            {"interface": 1, "address": "fd00:1::3/64", "gateway": "fd00:1::fffe"}
        ]
    }"#;

    #[test]
    fn reads_the_pod_addresses_and_the_host_interface_of_a_ptp_result() {
        let prev: PrevResult = serde_json::from_str(PTP_RESULT).unwrap();
        assert_eq!(
            prev.pod_ips().unwrap(),
            [
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00:1::3".parse().unwrap()
            ]
        );
        assert_eq!(prev.host_interface(), Some("veth0a1b2c3d"));
    }

    /// What the reference bridge plugin returns: the bridge, the pod's veth (a port of the
    /// bridge) and the pod's interface.
    const BRIDGE_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "2a:1b:5c:00:00:01"},
            {"name": "veth5f3e9a1c", "mac": "8e:69:a5:56:47:04"},
            {"name": "eth0", "mac": "72:92:96:e9:34:5c", "sandbox": "/var/run/netns/p"}
        ],
        "ips": [{"interface": 2, "address": "10.1.2.3/24", "gateway": "10.1.2.254"}]
    }"#;

    #[test]
    fn a_bridge_result_names_the_bridge_and_the_veth_and_no_single_interface() {
        let prev: PrevResult = serde_json::from_str(BRIDGE_RESULT).unwrap();
        assert_eq!(
            prev.pod_ips().unwrap(),
            ["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(prev.host_interfaces(), ["cni0", "veth5f3e9a1c"]);
        assert_eq!(prev.host_interface(), None);
    }

    #[test]
    fn a_result_without_addresses_is_an_error() {
        let prev: PrevResult = serde_json::from_str(r#"{"interfaces": [], "ips": []}"#).unwrap();
        assert!(prev.pod_ips().unwrap_err().contains("no address"));
        assert_eq!(prev.host_interface(), None);
    }

    fn conf_with(timeout: &str) -> NetConf {
        serde_json::from_str(&format!(r#"{{"cniVersion": "1.0.0"{timeout}}}"#)).unwrap()
    }

    #[test]
    fn the_timeout_is_the_default_when_absent_or_zero() {
        let default = Duration::from_secs(DEFAULT_TIMEOUT_SECONDS);
        assert_eq!(conf_with("").timeout(), default);
        assert_eq!(conf_with(r#", "timeoutSeconds": 0"#).timeout(), default);
        assert_eq!(
            conf_with(r#", "timeoutSeconds": 3"#).timeout(),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn cni_args_are_split_into_pairs() {
        let args = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a");
        assert_eq!(args["K8S_POD_NAMESPACE"], "x");
        assert_eq!(args["K8S_POD_NAME"], "a");
    }
}
