//! The network-namespace lab: a simulated node (or several) built from the manifests, the
//! real datapath attached to every pod, probe servers on every declared port, and probes
//! between every ordered pair of hosts. Everything is torn down on drop, also on error.

pub mod config;
pub mod probe;
pub mod sctp;
pub mod topology;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use futures::future::join_all;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};

pub use self::config::LabConfig;
use self::topology::{Host, PIN_PREFIX, Topology, node_name};
use crate::{
    compiler::{Compiled, Compiler, NodeConfig},
    datapath::{Datapath, bpffs},
    model::{Cluster, ObjectRef, Pod, Protocol},
    netns::{self, NetNs},
    plan,
    report::{Family, Reachability},
    source::{CHANNEL_CAPACITY, Object, SourceEvent},
};

/// Probes in flight at once.
const MAX_CONCURRENT_PROBES: usize = 1024;

/// A running lab.
pub struct Lab {
    /// Probe servers; aborted first on drop.
    servers: JoinSet<()>,
    /// One datapath per node (programs detach and pins go when dropped).
    datapaths: Vec<Datapath>,
    compilers: Vec<Compiler>,
    compiled: Vec<Compiled>,
    /// The namespaces, deleted last.
    topology: Topology,
    cluster: Cluster,
}

impl Lab {
    /// Builds the lab for `cluster` and enforces it with one datapath per node, written
    /// straight from the compiler. Needs root and a tokio runtime.
    pub async fn start(cluster: &Cluster, config: &LabConfig) -> anyhow::Result<Self> {
        let mut lab = Self::network(cluster, config).await?;
        lab.enforce()?;
        Ok(lab)
    }

    /// Builds the lab's network and probe servers only: nothing enforces anything until an
    /// agent (one per node, see [`Lab::node_netns_name`]) does.
    pub async fn network(cluster: &Cluster, config: &LabConfig) -> anyhow::Result<Self> {
        netns::sweep_stale(topology::NETNS_PREFIX);
        bpffs::sweep_stale(PIN_PREFIX);
        raise_open_file_limit();

        let nodes = config.nodes.max(1);
        let missing: Vec<String> = cluster
            .pods
            .values()
            .filter(|p| !p.host_network && p.ips.is_empty())
            .map(|p| p.id.to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "the lab needs pod addresses, but these pods have no status.podIPs/status.podIP: {}",
                missing.join(", ")
            );
        }
        for pod in cluster.pods.values().filter(|p| p.host_network) {
            tracing::warn!(pod = %pod.id, "host-network pod left out of the lab");
        }
        // Pods are spread over the nodes in name order; external hosts too.
        let mut cluster = cluster.clone();
        let plan = plan::hosts(&cluster, &config.externals, &config.external_ports);
        let (mut pods, mut externals) = (0, 0);
        let mut hosts = Vec::new();
        for host in plan {
            let counter = if host.pod.is_some() {
                &mut pods
            } else {
                &mut externals
            };
            let node = *counter % nodes;
            *counter += 1;
            if let Some(id) = &host.pod {
                cluster
                    .pods
                    .get_mut(id)
                    .expect("planned from the cluster")
                    .node = Some(node_name(node));
            }
            hosts.push((host, node));
        }

        let topology = Topology::build(nodes, hosts).context("building the lab network")?;
        let mut lab = Self {
            servers: JoinSet::new(),
            datapaths: Vec::new(),
            compilers: Vec::new(),
            compiled: Vec::new(),
            topology,
            cluster,
        };
        for host in &lab.topology.hosts {
            probe::serve(host, &mut lab.servers)
                .with_context(|| format!("starting probe servers in {}", host.spec.label))?;
        }
        Ok(lab)
    }

    /// Loads a datapath on every node, writes its maps and attaches it to the pods.
    fn enforce(&mut self) -> anyhow::Result<()> {
        for (i, node) in self.topology.nodes.iter().enumerate() {
            let instance = format!("{PIN_PREFIX}{}-n{}", self.topology.id, i + 1);
            let mut datapath = Datapath::load(&instance)
                .with_context(|| format!("loading the datapath of {}", node.name))?
                .unpin_on_drop();
            for host in self.topology.hosts.iter().filter(|h| h.node == i) {
                if let Some(pod) = &host.spec.pod {
                    let ifindex = node.netns.ifindex(&host.node_if)?;
                    datapath.adopt_interface(pod, ifindex);
                }
            }
            self.datapaths.push(datapath);
            self.compilers.push(Compiler::new());
            self.compiled.push(Compiled::default());
        }
        self.sync().context("writing the maps")?;
        for (i, node) in self.topology.nodes.iter().enumerate() {
            for host in self.topology.hosts.iter().filter(|h| h.node == i) {
                if let Some(pod) = &host.spec.pod {
                    self.datapaths[i]
                        .attach(pod, Some(&node.netns), &host.node_if)
                        .with_context(|| format!("attaching to the interface of {pod}"))?;
                }
            }
        }
        Ok(())
    }

    /// Recompiles every node for the lab's cluster and writes the maps.
    fn sync(&mut self) -> anyhow::Result<()> {
        for (i, node) in self.topology.nodes.iter().enumerate() {
            let config = NodeConfig {
                name: node.name.clone(),
                addresses: node.addresses.clone(),
            };
            let compiled = self.compilers[i].compile(&self.cluster, &config);
            self.datapaths[i].sync(&compiled)?;
            self.compiled[i] = compiled;
        }
        Ok(())
    }

    /// Moves the lab to `cluster`'s policies and labels (of namespaces and pods) and updates
    /// the maps. The pods themselves, their addresses and ports, must stay as they are.
    pub fn update(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        for (id, pod) in &mut self.cluster.pods {
            let new = cluster
                .pods
                .get(id)
                .with_context(|| format!("pod {id} cannot leave a running lab"))?;
            if new.ips != pod.ips || new.ports != pod.ports {
                bail!("pod {id} cannot change addresses or ports in a running lab");
            }
            pod.labels.clone_from(&new.labels);
        }
        if let Some(id) = cluster
            .pods
            .keys()
            .find(|id| !self.cluster.pods.contains_key(*id))
        {
            bail!("pod {id} cannot join a running lab");
        }
        self.cluster.policies.clone_from(&cluster.policies);
        self.cluster.namespaces.clone_from(&cluster.namespaces);
        self.sync()
    }

    /// What node `i` compiled (rejected policies, warnings, map contents).
    pub fn compiled(&self, node: usize) -> &Compiled {
        &self.compiled[node]
    }

    /// Whether the lab's own datapaths enforce (not [`Lab::network`] alone).
    pub fn enforced(&self) -> bool {
        !self.datapaths.is_empty()
    }

    /// The datapath of node `i` (of an enforced lab).
    pub fn datapath(&self, node: usize) -> &Datapath {
        &self.datapaths[node]
    }

    /// The cluster as the lab runs it (pods have their lab node in `spec.nodeName`).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The lab's unique id (`<pid>-<sequence>`), part of every namespace and pin name.
    pub fn id(&self) -> &str {
        &self.topology.id
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.topology.nodes.len()
    }

    /// The name of node `i`'s network namespace, for an agent's `--netns`.
    pub fn node_netns_name(&self, node: usize) -> &str {
        self.topology.nodes[node].netns.name()
    }

    /// Forwards `source` with every pod put on its lab node (sources that do not know the
    /// lab, like a manifest directory, leave `spec.nodeName` to chance); pods the lab does
    /// not have are on no node.
    pub fn place(&self, mut source: mpsc::Receiver<SourceEvent>) -> mpsc::Receiver<SourceEvent> {
        let nodes: BTreeMap<ObjectRef, Option<String>> = self
            .cluster
            .pods
            .iter()
            .map(|(id, p)| (id.clone(), p.node.clone()))
            .collect();
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(async move {
            let place = |pod: &mut Pod| pod.node = nodes.get(&pod.id).cloned().flatten();
            while let Some(mut event) = source.recv().await {
                match &mut event {
                    SourceEvent::Snapshot { cluster, .. } => {
                        cluster.pods.values_mut().for_each(place)
                    }
                    SourceEvent::Relisted(_, objects) => {
                        for o in objects {
                            if let Object::Pod(p) = o {
                                place(p);
                            }
                        }
                    }
                    SourceEvent::Applied(Object::Pod(p)) => place(p),
                    _ => {}
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// The hosts (pods and external hosts).
    pub fn hosts(&self) -> &[Host] {
        &self.topology.hosts
    }

    /// A host by its label (`namespace/pod` or the external address).
    pub fn host(&self, label: &str) -> anyhow::Result<&Host> {
        self.topology
            .hosts
            .iter()
            .find(|h| h.spec.label == label)
            .with_context(|| format!("no host {label} in the lab"))
    }

    /// The namespace of a host, to run custom traffic from it.
    pub fn netns(&self, label: &str) -> anyhow::Result<&NetNs> {
        Ok(&self.host(label)?.netns)
    }

    /// One probe from host `from` to host `to` over `family`.
    pub async fn probe(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: Protocol,
        family: Family,
    ) -> anyhow::Result<bool> {
        let ip = self
            .host(to)?
            .spec
            .ip(family)
            .with_context(|| format!("{to} has no {family:?} address"))?;
        Ok(probe::probe(&self.host(from)?.netns, ip, port, protocol).await?)
    }

    /// Probes every ordered pair of hosts (external to external excepted) on every port the
    /// destination serves, once per address family both have (see [`plan::questions`]).
    pub async fn probe_all(&self) -> anyhow::Result<Reachability> {
        let hosts: Vec<plan::Host> = self.topology.hosts.iter().map(|h| h.spec.clone()).collect();
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let results = join_all(plan::questions(&hosts).into_iter().map(|q| {
            let limit = Arc::clone(&limit);
            let (src, dst) = (&self.topology.hosts[q.from], &self.topology.hosts[q.to]);
            let hosts = &hosts;
            async move {
                let _permit = limit.acquire().await.expect("never closed");
                let ip = dst.spec.ip(q.family).expect("planned with this family");
                let allowed = probe::probe(&src.netns, ip, q.port, q.protocol)
                    .await
                    .with_context(|| {
                        format!(
                            "probing {} -> {ip}:{}/{}",
                            src.spec.label, q.port, q.protocol
                        )
                    })?;
                anyhow::Ok(plan::probe(hosts, &q, allowed))
            }
        }))
        .await;
        Ok(Reachability::new(
            results.into_iter().collect::<Result<_, _>>()?,
        ))
    }

    /// Stops the probe servers and waits for them, then tears everything down.
    pub async fn shutdown(mut self) {
        self.servers.shutdown().await;
    }
}

/// Every probe in flight holds a socket: allow as many open files as the hard limit does.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Namespaces and pin directories that labs of process `pid` created and still exist.
pub fn resources_of(pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for (dir, prefix) in [
        (netns::NETNS_DIR, topology::NETNS_PREFIX),
        (bpffs::PIN_ROOT, PIN_PREFIX),
    ] {
        let prefix = format!("{prefix}{pid}-");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(entry.path());
            }
        }
    }
    found
}
