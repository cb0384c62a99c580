//! What `policy-agent status` shows: the agent's state, as JSON.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use super::flows::FlowStatus;
use crate::report::{escape, escape_text};

/// The state of a running agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Pin directory of the instance.
    pub pin_dir: String,
    /// Where the cluster comes from.
    pub source: String,
    /// Whether the first complete state has been enforced.
    pub ready: bool,
    /// Successful syncs since the agent started.
    pub syncs: u64,
    /// Source events (snapshots, objects, deletions, errors) the last successful sync
    /// enforced, counted since the agent started: whoever feeds the agent knows when what
    /// it sent is in force.
    #[serde(default)]
    pub source_events: u64,
    /// Source events taken so far: more than `source_events` while changes wait for a
    /// sync, or a sync runs.
    #[serde(default)]
    pub source_events_seen: u64,
    /// Whether a sync is running (its compile, off the agent's task, while the agent
    /// answers).
    #[serde(default)]
    pub syncing: bool,
    /// How the CNI plugin is installed on the node, if the agent was told where to look.
    pub cni: Option<CniStatus>,
    /// Count of policies in the cluster.
    pub policies: usize,
    /// Local pods and their enforcement.
    pub endpoints: Vec<EndpointStatus>,
    /// Local pods that cannot be enforced, and why.
    pub not_enforced: Vec<String>,
    /// Map fill levels.
    pub maps: Vec<MapStatus>,
    /// Flow records read, lost and missed.
    #[serde(default)]
    pub flows: FlowStatus,
    /// The map size settings, as `--map-size` takes them.
    #[serde(default)]
    pub map_sizes: String,
    /// UDP ports of the node's own tunnel devices: what pods send the node there is dropped
    /// (`tunnel-to-node`), as to the well-known tunnel ports.
    #[serde(default)]
    pub tunnel_ports: Vec<u16>,
    /// Maps that are full, and what was left out of them.
    #[serde(default)]
    pub full: Vec<String>,
    /// The last successful sync.
    pub last_sync: Option<SyncStatus>,
    /// Syncs that failed in a row since the last successful one (retried with backoff).
    #[serde(default)]
    pub sync_failures: u32,
    /// Why the last sync failed, while syncs fail.
    #[serde(default)]
    pub sync_error: Option<String>,
    /// Policies rejected by validation or for lack of room in the maps, with their errors.
    pub rejected: Vec<String>,
    /// Lint warnings about valid policies.
    pub warnings: Vec<String>,
    /// Recent errors of the source and the datapath (newest last).
    pub errors: Vec<String>,
}

/// The CNI plugin's installation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniStatus {
    /// The conflist the plugin is chained into (`None`: not installed).
    pub conflist: Option<String>,
    /// Whether pods start when the agent is unreachable.
    pub fail_open: bool,
}

impl fmt::Display for CniStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.conflist, self.fail_open) {
            (None, _) => f.write_str(
                "not installed: new pods are enforced once the agent sees them, not before they start",
            ),
            (Some(file), false) => write!(
                f,
                "chained in {file}, fail-closed: a pod starts only once the agent enforces it"
            ),
            (Some(file), true) => write!(
                f,
                "chained in {file}, FAIL-OPEN: while the agent is unreachable, pods start unprotected"
            ),
        }
    }
}

/// One local pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// namespace/name.
    pub pod: String,
    /// Its host-side interface, once found.
    pub interface: Option<String>,
    /// Whether the programs are attached to it (it is the pod's own: never a bridge, an
    /// uplink or an interface another pod has).
    pub attached: bool,
    /// Whether the agent refuses the interface it found, as not the pod's alone.
    #[serde(default)]
    pub refused: bool,
    /// Why the programs are not attached: what was refused, or what the agent waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether policy isolates its ingress.
    pub ingress_isolated: bool,
    /// Whether policy isolates its egress.
    pub egress_isolated: bool,
}

/// Fill level of one map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatus {
    /// Map name.
    pub name: String,
    /// Entries.
    pub entries: usize,
    /// Capacity (of CONNTRACK and FRAGMENTS: all endpoints' tables together).
    pub capacity: u64,
}

/// One sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// When it finished, RFC 3339.
    pub at: String,
    /// From the oldest change it includes to its last map write, in milliseconds.
    pub latency_ms: u64,
    /// Entries written.
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "node:     {}", escape(&self.node));
        let _ = writeln!(out, "source:   {}", escape(&self.source));
        let _ = writeln!(out, "pins:     {}", escape(&self.pin_dir));
        let _ = writeln!(out, "ready:    {}", self.ready);
        if let Some(cni) = &self.cni {
            let _ = writeln!(out, "cni:      {}", escape(&cni.to_string()));
        }
        match &self.last_sync {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "synced:   {} ({} ms after the change; {} written, {} removed)",
                    s.at, s.latency_ms, s.written, s.removed
                );
            }
            None => {
                let _ = writeln!(out, "synced:   never");
            }
        }
        if self.syncing {
            let _ = writeln!(
                out,
                "syncing:  {} of {} source events in force",
                self.source_events, self.source_events_seen
            );
        }
        if let Some(e) = &self.sync_error {
            let _ = writeln!(
                out,
                "FAILING:  {} syncs in a row, retrying with backoff; last: {}",
                self.sync_failures,
                escape_text(e)
            );
        }
        let _ = writeln!(out, "policies: {}", self.policies);
        let _ = writeln!(out, "\nendpoints:");
        for e in &self.endpoints {
            let isolation = match (e.ingress_isolated, e.egress_isolated) {
                (true, true) => "ingress+egress isolated",
                (true, false) => "ingress isolated",
                (false, true) => "egress isolated",
                (false, false) => "not isolated",
            };
            let state = match (e.attached, e.refused) {
                (true, _) => "attached",
                (false, true) => "REFUSED",
                (false, false) => "waiting",
            };
            let _ = writeln!(
                out,
                "  {:<40} {:<16} {state:<10} {isolation}",
                escape(&e.pod),
                escape(e.interface.as_deref().unwrap_or("(no interface)")),
            );
            if let Some(reason) = &e.reason {
                let _ = writeln!(out, "  {:<40} {}", "", escape(reason));
            }
        }
        for n in &self.not_enforced {
            let _ = writeln!(out, "  not enforced: {}", escape_text(n));
        }
        if !self.tunnel_ports.is_empty() {
            let ports: Vec<String> = self.tunnel_ports.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "tunnel ports of the node (UDP): {}", ports.join(", "));
        }
        let _ = writeln!(out, "\nmaps:     {}", escape(&self.map_sizes));
        for m in &self.maps {
            let _ = writeln!(
                out,
                "  {:<10} {:>8} / {}",
                escape(&m.name),
                m.entries,
                m.capacity
            );
        }
        let _ = writeln!(
            out,
            "\nflows:    {} records, {} lost (ring buffer full), {} missed by slow clients, {} client(s)",
            self.flows.records,
            self.flows.lost_ring_buffer_full,
            self.flows.missed_by_slow_subscribers,
            self.flows.subscribers
        );
        for (title, list) in [
            ("full maps", &self.full),
            ("rejected policies", &self.rejected),
            ("warnings", &self.warnings),
            ("errors", &self.errors),
        ] {
            if !list.is_empty() {
                let _ = writeln!(out, "\n{title}:");
                for item in list {
                    // A rejected policy's errors come one per line.
                    let _ = writeln!(out, "  {}", escape_text(item));
                }
            }
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(pod: &str, interface: Option<&str>, attached: bool) -> EndpointStatus {
        EndpointStatus {
            pod: pod.to_owned(),
            interface: interface.map(str::to_owned),
            attached,
            refused: false,
            reason: None,
            ingress_isolated: false,
            egress_isolated: false,
        }
    }

    #[test]
    fn a_refused_interface_is_shown_with_its_reason_and_never_as_attached() {
        let refused = EndpointStatus {
            refused: true,
            reason: Some("interface refused: cni0 is a bridge".to_owned()),
            ..endpoint("x/b", None, false)
        };
        let status = Status {
            endpoints: vec![endpoint("x/a", Some("veth1a2b3c4d"), true), refused],
            ..Status::default()
        };
        let text = status.to_string();
        let line = |pod: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(pod))
                .unwrap()
                .to_owned()
        };
        assert!(line("x/a").contains("attached"), "{text}");
        assert!(line("x/b").contains("REFUSED"), "{text}");
        assert!(!line("x/b").contains("attached"), "{text}");
        assert!(
            text.contains("interface refused: cni0 is a bridge"),
            "{text}"
        );

        // What an older agent wrote (without these fields) still reads.
        let json = r#"{"pod":"x/a","interface":"veth1","attached":true,"ingress_isolated":false,"egress_isolated":false}"#;
        let old: EndpointStatus = serde_json::from_str(json).unwrap();
        assert!(!old.refused && old.reason.is_none());
    }
}
