//! What `lab`, `matrix` and `explain` share: a manifest directory, its lab.toml, and the
//! external hosts.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf};

use clap::Args;
use policy_agent::{
    lab::{
        LabConfig,
        config::{ServiceProbes, parse_port},
    },
    model::{Cluster, Protocol},
    report::escape_text,
    semantics::{ParsedPolicy, lint},
    source::manifests::{self, Loaded},
};

/// Where the scenario comes from.
#[derive(Args)]
pub struct ScenarioArgs {
    /// Directory of Namespace, Pod and NetworkPolicy manifests (and an optional lab.toml).
    #[arg(long)]
    pub manifests: PathBuf,
    /// External hosts (comma-separated addresses) [default: from lab.toml].
    #[arg(long, value_delimiter = ',')]
    pub external: Vec<IpAddr>,
    /// Ports the external hosts serve: PORT or PORT/PROTOCOL, comma-separated
    /// [default: from lab.toml, else 22,80,443,53/udp].
    #[arg(long, value_delimiter = ',', value_parser = parse_port)]
    pub external_ports: Vec<(Protocol, u16)>,
    /// Probe through Services too: `on` (the default when the manifests have Services),
    /// `off`, or `per-pod` (one Service per pod, `s-<namespace>-<pod>`, as the upstream
    /// e2e suite does) [default: from lab.toml].
    #[arg(long, value_enum)]
    pub services: Option<ServiceProbes>,
}

/// A loaded scenario.
pub struct Scenario {
    pub loaded: Loaded,
    pub config: LabConfig,
}

impl ScenarioArgs {
    /// Loads the manifests (reporting bad objects on stderr) and the lab settings.
    pub fn load(&self) -> anyhow::Result<Scenario> {
        let mut loaded = manifests::load_dir(&self.manifests)?;
        for e in &loaded.errors {
            eprintln!("error: {}", escape_text(&e.to_string()));
        }
        // Finished pods hold no address; an address claimed twice stays with one pod.
        let (cluster, conflicts) = loaded.cluster.settled(&BTreeSet::new());
        for c in conflicts {
            eprintln!("warning: {}", escape_text(&c.to_string()));
        }
        loaded.cluster = cluster;
        let mut config = LabConfig::from_dir(&self.manifests)?;
        if !self.external.is_empty() {
            config.externals.clone_from(&self.external);
        }
        if !self.external_ports.is_empty() {
            config.external_ports.clone_from(&self.external_ports);
        }
        config.services = self.services.or(config.services);
        Ok(Scenario { loaded, config })
    }
}

impl Scenario {
    /// Prints rejected policies and lint warnings on stderr, and returns how many objects
    /// were rejected: those the manifests did not yield (reported by [`ScenarioArgs::load`])
    /// and the policies of `cluster` (the scenario's) that fail validation. Both are left
    /// out of the results. The warnings are about every object, or about those of the
    /// scope `scope` makes of the valid policies.
    pub fn report_policies(
        &self,
        cluster: &Cluster,
        scope: impl FnOnce(&[ParsedPolicy]) -> Option<lint::Scope>,
    ) -> usize {
        let mut valid = Vec::new();
        let mut rejected = self.loaded.errors.len();
        for policy in cluster.policies.values() {
            match ParsedPolicy::parse(policy) {
                Ok(p) => valid.push(p),
                Err(e) => {
                    rejected += 1;
                    eprintln!("error: {}", escape_text(&e.to_string()));
                }
            }
        }
        let warnings = match scope(&valid) {
            None => lint::lint(cluster, &valid),
            Some(scope) => lint::lint_scoped(cluster, &valid, &scope),
        };
        for w in warnings {
            eprintln!("warning: {}", escape_text(&w.to_string()));
        }
        rejected
    }
}
