//! The network-namespace lab: a simulated node (or several) built from the manifests, the
//! real datapath attached to every pod, probe servers on every declared port, and probes
//! between every ordered pair of hosts. Everything is torn down on drop, also on error.
//! With [`LabConfig::dns`], the cluster's DNS too ([`dns`]).

pub mod config;
pub mod dns;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod sctp;
pub mod topology;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use futures::{FutureExt as _, future::join_all};
use policy_common::maps::{StatsKey, StatsValue};
use tokio::sync::{Semaphore, mpsc};

pub use self::config::LabConfig;
use self::{
    probe::Refusal,
    runtime::CniRuntime,
    topology::{Host, PIN_PREFIX, POD_INTERFACE_PREFIX, PodSandbox, Topology, node_name},
};
use crate::{
    agent::{self, AgentConfig, AgentHandle, api, endpoints, status::Status},
    datapath::{bpffs, maps::pinned_stats},
    model::{self, Cluster, ObjectRef, Pod, Protocol},
    netns::{self, NetNs},
    plan::{self, ServiceProbes},
    report::{Family, NodeFrontend, Reachability},
    semantics::{self, services::Backend},
    source::{CHANNEL_CAPACITY, Object, SourceEvent},
};

/// Probes in flight at once.
const MAX_CONCURRENT_PROBES: usize = 1024;
/// How long a lab waits for an agent to enforce a change.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the network configuration a lab node's runtime reads.
const CONFLIST_FILE: &str = "10-lab.conflist";

/// The agent enforcing one node of the lab, fed the lab's cluster.
struct NodeAgent {
    config: AgentConfig,
    /// `None` while stopped.
    handle: Option<AgentHandle>,
    feed: mpsc::Sender<SourceEvent>,
    /// Events sent to the running agent: it enforces them all once its status counts as
    /// many (a sync for another reason may end in between).
    sent: u64,
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        // Unpinning detaches the programs; the agent task ends with its handle.
        bpffs::remove_instance_dir(&Path::new(bpffs::PIN_ROOT).join(&self.config.instance));
        if let Some(dir) = &self.config.cni_conf_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(socket) = &self.config.socket {
            let _ = std::fs::remove_file(endpoints::sandboxes_file(socket));
        }
    }
}

/// A running lab.
pub struct Lab {
    /// Probe servers; aborted first on drop.
    servers: probe::Servers,
    /// The cluster DNS, when the lab runs it: its servers stop on drop, before the
    /// namespaces go.
    dns: Option<dns::ClusterDns>,
    /// The agent of each node, when the lab enforces.
    agents: Vec<NodeAgent>,
    /// Each node's container runtime: the CNI configuration pods are created with.
    runtimes: Vec<CniRuntime>,
    /// The namespaces, deleted last.
    topology: Topology,
    cluster: Cluster,
    /// Pods whose sandbox the lab has not created (yet).
    not_started: BTreeSet<ObjectRef>,
    /// Pods whose sandbox exists but whose addresses no kubelet has reported yet.
    unreported: BTreeSet<ObjectRef>,
    /// Whether probes go through Services too.
    service_probes: ServiceProbes,
}

impl Lab {
    /// Builds the lab for `cluster` and enforces it: a real agent per node, fed the
    /// cluster, and every pod created through the CNI plugins, the policy plugin last, so
    /// that each pod is enforced before it exists. Needs root and a tokio runtime.
    pub async fn start(cluster: &Cluster, config: &LabConfig) -> anyhow::Result<Self> {
        let mut lab = Self::prepare(cluster, config)?;
        lab.start_agents(config).await?;
        lab.start_pods(config)?;
        // The kubelets report the pods' addresses: every node learns the others' pods.
        lab.report_addresses().await?;
        Ok(lab)
    }

    /// Builds the lab's network and probe servers only, pods created by the reference CNI
    /// plugin alone: nothing enforces anything until an agent (one per node, see
    /// [`Lab::node_netns_name`]) does.
    pub async fn network(cluster: &Cluster, config: &LabConfig) -> anyhow::Result<Self> {
        let mut lab = Self::prepare(cluster, config)?;
        let bin_dirs = runtime::bin_dirs(false)?;
        lab.runtimes = (0..lab.nodes())
            .map(|_| CniRuntime::new(runtime::lab_conflist(None, config), bin_dirs.clone()))
            .collect();
        lab.start_pods(config)?;
        Ok(lab)
    }

    /// Plans the hosts and builds the nodes and external hosts.
    fn prepare(cluster: &Cluster, config: &LabConfig) -> anyhow::Result<Self> {
        dns::sweep_stale();
        netns::sweep_stale(topology::NETNS_PREFIX);
        bpffs::sweep_stale(PIN_PREFIX);
        raise_open_file_limit();

        let nodes = config.nodes.max(1);
        let missing: Vec<String> = cluster
            .pods
            .values()
            .filter(|p| p.holds_addresses() && p.ips.is_empty())
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
        let service_probes = ServiceProbes::resolve(config.services, &cluster);
        let dns_additions = if config.dns {
            Some(
                dns::add_to_cluster(&mut cluster, &config.externals)
                    .context("adding the cluster DNS")?,
            )
        } else {
            None
        };
        if service_probes == ServiceProbes::PerPod {
            plan::add_per_pod_services(&mut cluster);
        }
        let plan = plan::hosts(&cluster, &config.externals, &config.external_ports);
        let taken: BTreeSet<_> = plan.iter().flat_map(|h| h.ips.iter().copied()).collect();
        let (mut pods, mut externals) = (0, 0);
        let mut external_hosts = Vec::new();
        for host in plan {
            let counter = if host.pod.is_some() {
                &mut pods
            } else {
                &mut externals
            };
            let node = *counter % nodes;
            *counter += 1;
            match &host.pod {
                Some(id) => {
                    cluster
                        .pods
                        .get_mut(id)
                        .expect("planned from the cluster")
                        .node = Some(node_name(node));
                }
                None => external_hosts.push((host, node)),
            }
        }
        place_backends(&mut cluster);
        // No gateway of a pod subnet may take a Service's address either.
        let taken = taken
            .into_iter()
            .chain(semantics::services::service_addresses(&cluster))
            .collect();
        let topology =
            Topology::build(nodes, external_hosts, taken).context("building the lab network")?;
        let dns = match dns_additions {
            Some(additions) => Some(dns::ClusterDns::new(&topology.id, additions, &cluster)?),
            None => None,
        };
        for node in &topology.nodes {
            cluster.add_node(model::Node {
                name: node.name.clone(),
                addresses: node.internal_addresses(),
            });
        }
        if !cluster.services.is_empty() {
            for node in &topology.nodes {
                proxy::install(config.proxy_mode, &node.netns, &node.name, &cluster).with_context(
                    || {
                        format!(
                            "writing kube-proxy's {} rules on {}",
                            config.proxy_mode.as_str(),
                            node.name
                        )
                    },
                )?;
            }
        }
        let not_started = cluster
            .pods
            .values()
            .filter(|p| p.holds_addresses())
            .map(|p| p.id.clone())
            .collect();
        let mut lab = Self {
            servers: probe::Servers::new().context("starting the probe servers' thread")?,
            dns,
            agents: Vec::new(),
            runtimes: Vec::new(),
            topology,
            cluster,
            not_started,
            unreported: BTreeSet::new(),
            service_probes,
        };
        for host in &lab.topology.hosts {
            lab.servers
                .serve(host)
                .with_context(|| format!("starting probe servers in {}", host.spec.label))?;
        }
        Ok(lab)
    }

    /// Starts an agent on every node and writes each node's CNI configuration, with the
    /// policy plugin chained to that agent.
    async fn start_agents(&mut self, config: &LabConfig) -> anyhow::Result<()> {
        let bin_dirs = runtime::bin_dirs(true)?;
        for (i, node) in self.topology.nodes.iter().enumerate() {
            let instance = format!("{PIN_PREFIX}{}-n{}", self.topology.id, i + 1);
            let socket = api::default_socket(&instance);
            let conf_dir = socket.with_extension("d");
            let conflist = runtime::lab_conflist(Some(&socket), config);
            std::fs::create_dir_all(&conf_dir)
                .and_then(|()| std::fs::write(conf_dir.join(CONFLIST_FILE), conflist.to_string()))
                .with_context(|| format!("writing {}", conf_dir.display()))?;
            self.runtimes
                .push(CniRuntime::new(conflist, bin_dirs.clone()));
            let (feed, _) = mpsc::channel(1);
            self.agents.push(NodeAgent {
                config: AgentConfig {
                    node_name: node.name.clone(),
                    instance,
                    netns: Some(node.netns.name().to_owned()),
                    interface_prefix: Some(POD_INTERFACE_PREFIX.to_owned()),
                    extra_node_addresses: Vec::new(),
                    socket: Some(socket),
                    metrics_address: None,
                    source: "lab".to_owned(),
                    cni_conf_dir: Some(conf_dir),
                    full_resync: crate::agent::FULL_RESYNC,
                    map_sizes: crate::capacity::MapSizes::default(),
                },
                handle: None,
                feed,
                sent: 0,
            });
        }
        for i in 0..self.agents.len() {
            self.start_agent(i).await?;
        }
        Ok(())
    }

    /// Starts (or restarts) the agent of node `i` and waits until it enforces the lab's
    /// cluster. A restarted agent adopts what the previous one left pinned.
    pub async fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let (feed, events) = mpsc::channel(CHANNEL_CAPACITY);
        let agent = &mut self.agents[i];
        let mut handle = agent::spawn(agent.config.clone(), events)
            .with_context(|| format!("starting the agent of node-{}", i + 1))?;
        agent.feed = feed;
        let snapshot = self.snapshot();
        let agent = &mut self.agents[i];
        let _ = agent.feed.send(snapshot).await;
        agent.sent = 1;
        handle.ready(AGENT_TIMEOUT).await?;
        agent.handle = Some(handle);
        Ok(())
    }

    /// Stops the agent of node `i`; what it attached keeps enforcing.
    pub async fn stop_agent(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(handle) = self.agents[i].handle.take() {
            handle.stop().await?;
        }
        Ok(())
    }

    /// The cluster as the agents see it: pods without a sandbox yet have no address, like
    /// a pod the scheduler just placed, and neither have pods whose addresses were not
    /// reported yet.
    fn snapshot(&self) -> SourceEvent {
        let mut cluster = self.cluster.clone();
        for id in self.not_started.iter().chain(&self.unreported) {
            if let Some(pod) = cluster.pods.get_mut(id) {
                pod.ips.clear();
            }
        }
        SourceEvent::Snapshot {
            cluster: Box::new(cluster),
            errors: Vec::new(),
        }
    }

    /// The kubelets report the addresses of the pods they started: feeds the cluster to
    /// every running agent and waits until each has synced it.
    pub async fn report_addresses(&mut self) -> anyhow::Result<()> {
        self.unreported.clear();
        let snapshot = self.snapshot();
        for agent in &mut self.agents {
            let Some(handle) = &mut agent.handle else {
                continue;
            };
            let _ = agent.feed.send(snapshot.clone()).await;
            agent.sent += 1;
            let sent = agent.sent;
            tokio::time::timeout(
                AGENT_TIMEOUT,
                handle.status.wait_for(|s| s.source_events >= sent),
            )
            .await
            .context("an agent did not sync in time")?
            .context("an agent stopped")?;
        }
        Ok(())
    }

    /// Creates the sandboxes of every pod not started yet, unless `config` defers it.
    fn start_pods(&mut self, config: &LabConfig) -> anyhow::Result<()> {
        let pods: Vec<ObjectRef> = self
            .not_started
            .iter()
            .filter(|p| !config.deferred.contains(p))
            .cloned()
            .collect();
        for pod in pods {
            self.start_pod_with(&pod, None)?;
        }
        Ok(())
    }

    /// Creates pod `id`'s sandbox through its node's CNI configuration (or `runtime`), as
    /// the kubelet would once the pod is scheduled, and starts its probe servers. With the
    /// policy plugin chained, the pod is enforced when this returns.
    pub fn start_pod_with(
        &mut self,
        id: &ObjectRef,
        runtime: Option<&CniRuntime>,
    ) -> anyhow::Result<()> {
        let (pod, node) = self.placed(id)?;
        let spec = plan::hosts(&self.cluster, &[], &[])
            .into_iter()
            .find(|h| h.pod.as_ref() == Some(id))
            .with_context(|| format!("pod {id} has no address"))?;
        let runtime = runtime.unwrap_or(&self.runtimes[node]).clone();
        let uid = pod.uid.clone();
        let runtime_config = runtime::port_mappings(&pod.ports);
        let host = self
            .topology
            .add_pod(spec, uid.as_deref(), node, &runtime, runtime_config)?;
        let mut ports = host.spec.serves.clone();
        if let Some(dns) = &mut self.dns {
            let pod = &self.cluster.pods[id];
            dns.pod_started(pod, host)?;
            // The DNS server answers on its ports; probes to them are lookups.
            if dns::is_server_pod(pod) {
                ports.retain(|&(protocol, port)| !dns::serves(protocol, port));
            }
        }
        self.servers
            .serve_ports(host, &ports)
            .with_context(|| format!("starting probe servers in {id}"))?;
        self.not_started.remove(id);
        self.unreported.insert(id.clone());
        Ok(())
    }

    /// Creates pod `id`'s sandbox with its node's CNI configuration, then tells every
    /// agent its addresses (as the kubelet reports them to the API server).
    pub async fn start_pod(&mut self, id: &ObjectRef) -> anyhow::Result<()> {
        self.start_pod_with(id, None)?;
        self.report_addresses().await
    }

    /// Deletes pod `id`'s sandbox through its node's CNI configuration.
    pub fn stop_pod(&mut self, id: &ObjectRef) -> anyhow::Result<()> {
        let (_, node) = self.placed(id)?;
        if let Some(dns) = &mut self.dns {
            dns.pod_stopped(id);
        }
        self.topology
            .remove_pod(&id.to_string(), &self.runtimes[node])?;
        self.unreported.remove(id);
        self.not_started.insert(id.clone());
        Ok(())
    }

    /// Pod `id`'s sandbox, while it exists.
    pub fn sandbox(&self, id: &ObjectRef) -> Option<&PodSandbox> {
        self.host(&id.to_string()).ok()?.sandbox.as_ref()
    }

    /// The CNI configuration pods of node `i` are created with.
    pub fn runtime(&self, i: usize) -> &CniRuntime {
        &self.runtimes[i]
    }

    /// Pod `id` and the index of its node.
    fn placed(&self, id: &ObjectRef) -> anyhow::Result<(&Pod, usize)> {
        let pod = self
            .cluster
            .pods
            .get(id)
            .with_context(|| format!("no pod {id} in the lab"))?;
        let node = self
            .topology
            .nodes
            .iter()
            .position(|n| Some(&n.name) == pod.node.as_ref())
            .with_context(|| format!("pod {id} is on no lab node"))?;
        Ok((pod, node))
    }

    /// Moves the lab to `cluster`'s policies and labels (of namespaces and pods) and waits
    /// until every agent enforces them. The pods themselves, their addresses and ports,
    /// must stay as they are. What the lab added itself (the cluster DNS) stays.
    pub async fn update(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let added = self.dns.as_ref().map(|d| d.additions().clone());
        let added_pod = added.as_ref().and_then(|a| a.pod.as_ref());
        for (id, pod) in &mut self.cluster.pods {
            let Some(new) = cluster.pods.get(id) else {
                if Some(id) == added_pod {
                    continue;
                }
                bail!("pod {id} cannot leave a running lab");
            };
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
        if added.is_some_and(|a| a.namespace) {
            dns::ensure_namespace(&mut self.cluster);
        }
        self.report_addresses().await
    }

    /// The status of node `i`'s agent (of an enforced lab, while it runs).
    pub fn status(&self, node: usize) -> Option<Status> {
        let handle = self.agents.get(node)?.handle.as_ref()?;
        Some(handle.status.borrow().clone())
    }

    /// Whether the lab's own agents enforce (not [`Lab::network`] alone).
    pub fn enforced(&self) -> bool {
        !self.agents.is_empty()
    }

    /// The local API socket of node `i`'s agent (of an enforced lab): `status`, `flows`.
    pub fn socket(&self, node: usize) -> Option<&Path> {
        self.agents.get(node)?.config.socket.as_deref()
    }

    /// Where node `i`'s datapath is pinned (of an enforced lab).
    pub fn pin_dir(&self, node: usize) -> PathBuf {
        Path::new(bpffs::PIN_ROOT).join(&self.agents[node].config.instance)
    }

    /// The datapath counters of node `i` (of an enforced lab).
    pub fn stats(&self, node: usize) -> anyhow::Result<BTreeMap<StatsKey, StatsValue>> {
        Ok(pinned_stats(&self.pin_dir(node))?)
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

    /// The configuration of an agent that a caller runs on node `node` of this lab (a
    /// network-only lab's, say), as the lab's own agents run: pinned as `instance`, fed by
    /// `source`, with no API socket, metrics or CNI configuration of its own.
    pub fn agent_config(&self, node: usize, instance: String, source: String) -> AgentConfig {
        AgentConfig {
            node_name: self.topology.nodes[node].name.clone(),
            instance,
            netns: Some(self.node_netns_name(node).to_owned()),
            interface_prefix: Some(POD_INTERFACE_PREFIX.to_owned()),
            extra_node_addresses: Vec::new(),
            socket: None,
            metrics_address: None,
            source,
            cni_conf_dir: None,
            full_resync: agent::FULL_RESYNC,
            map_sizes: crate::capacity::MapSizes::default(),
        }
    }

    /// Forwards `source` with every pod put on its lab node (sources that do not know the
    /// lab, like a manifest directory, leave `spec.nodeName` to chance); pods the lab does
    /// not have are on no node. Snapshots get what the lab added to the manifests (the
    /// cluster DNS) where they lack it.
    pub fn place(&self, mut source: mpsc::Receiver<SourceEvent>) -> mpsc::Receiver<SourceEvent> {
        let added = self
            .dns
            .as_ref()
            .map(|d| dns::added_objects(d.additions(), &self.cluster))
            .unwrap_or_default();
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
                        add_missing(cluster, &added);
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

    /// One probe from host `from` to host `to` over `family` (a DNS lookup when `to` is a
    /// DNS server and `port` its port, see [`dns`]).
    pub async fn probe(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: Protocol,
        family: Family,
    ) -> anyhow::Result<bool> {
        let to = self.host(to)?;
        let ip = to
            .spec
            .ip(family)
            .with_context(|| format!("{} has no {family:?} address", to.spec.label))?;
        let lookup = self.dns_lookup_for([(to.spec.pod.as_ref(), port)], protocol);
        exchange(
            self.host(from)?,
            SocketAddr::new(ip, port),
            protocol,
            lookup,
            Refusal::Reached,
        )
        .await
    }

    /// Looks up the addresses of `family` of `name` from host `from`, over `protocol` (UDP or
    /// TCP), as its resolver would: through kube-dns's cluster IP of `family` (of a lab that
    /// runs the cluster DNS). `None`: no answer came.
    pub async fn lookup(
        &self,
        from: &str,
        name: &str,
        family: Family,
        protocol: Protocol,
    ) -> anyhow::Result<Option<dns::Answer>> {
        let dns = self.dns.as_ref().context("this lab runs no cluster DNS")?;
        let server = dns
            .nameservers()
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == family)
            .with_context(|| format!("kube-dns has no {family:?} cluster IP"))?;
        let server = SocketAddr::new(server, dns::PORT);
        dns::lookup(&self.host(from)?.netns, server, protocol, name, family)
            .await
            .with_context(|| format!("looking up {name} from {from} at {server}/{protocol}"))
    }

    /// The cluster DNS, when the lab runs it.
    pub fn dns(&self) -> Option<&dns::ClusterDns> {
        self.dns.as_ref()
    }

    /// The lookup a probe makes instead of a plain exchange when it ends at a DNS server: when
    /// every one of `backends` (pod, port) is a DNS pod's DNS port for `protocol`.
    fn dns_lookup_for<'a>(
        &self,
        backends: impl IntoIterator<Item = (Option<&'a ObjectRef>, u16)>,
        protocol: Protocol,
    ) -> Option<&dns::ProbeLookup> {
        let dns = self.dns.as_ref()?;
        let mut backends = backends.into_iter().peekable();
        backends.peek()?;
        backends
            .all(|(pod, port)| {
                dns::serves(protocol, port)
                    && pod
                        .and_then(|p| self.cluster.pods.get(p))
                        .is_some_and(dns::is_server_pod)
            })
            .then(|| dns.lookup())
    }

    /// Probes every ordered pair of hosts (external to external excepted) on every port the
    /// destination serves, once per address family both have (see [`plan::questions`]),
    /// then, unless Services are left out, every pod through every Service cluster IP and
    /// port of a family it has (see [`plan::service_questions`]); with the cluster DNS,
    /// through kube-dns in any case. A probe that ends at a DNS server's port is a lookup
    /// (see [`dns`]).
    pub async fn probe_all(&self) -> anyhow::Result<Reachability> {
        let hosts: Vec<plan::Host> = self.topology.hosts.iter().map(|h| h.spec.clone()).collect();
        let kube_dns = dns::service_ref();
        let targets: Vec<plan::ServiceTarget> = plan::service_targets(&self.cluster)
            .into_iter()
            .filter(|t| {
                self.service_probes != ServiceProbes::Off
                    || (self.dns.is_some() && t.service == kube_dns)
            })
            .collect();
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let by_address = plan::questions(&hosts).into_iter().map(|q| {
            let limit = Arc::clone(&limit);
            let (src, dst) = (&self.topology.hosts[q.from], &self.topology.hosts[q.to]);
            let ip = dst.spec.ip(q.family).expect("planned with this family");
            let lookup = self.dns_lookup_for([(dst.spec.pod.as_ref(), q.port)], q.protocol);
            let hosts = &hosts;
            async move {
                let _permit = limit.acquire().await.expect("never closed");
                let dst = SocketAddr::new(ip, q.port);
                let allowed = exchange(src, dst, q.protocol, lookup, Refusal::Reached).await?;
                anyhow::Ok(plan::probe(hosts, &q, allowed))
            }
            .boxed()
        });
        let through_services = plan::service_questions(&hosts, &targets)
            .into_iter()
            .map(|q| {
                let limit = Arc::clone(&limit);
                let src = &self.topology.hosts[q.from];
                let (hosts, targets) = (&hosts, &targets);
                let t = &targets[q.target];
                let lookup = self.dns_lookup_for(
                    t.backends.iter().map(|b| (b.pod.as_ref(), b.port)),
                    t.protocol,
                );
                async move {
                    let _permit = limit.acquire().await.expect("never closed");
                    let allowed = through_frontend(src, t, lookup).await?;
                    anyhow::Ok(plan::service_probe(hosts, targets, &q, allowed))
                }
                .boxed()
            });
        let node_targets = self.node_targets();
        let through_nodes = plan::node_questions(&hosts, &node_targets)
            .into_iter()
            .map(|q| {
                let limit = Arc::clone(&limit);
                let src = &self.topology.hosts[q.from];
                let (hosts, targets) = (&hosts, &node_targets);
                let t = &node_targets[q.target].target;
                async move {
                    let _permit = limit.acquire().await.expect("never closed");
                    let allowed = through_frontend(src, t, None).await?;
                    anyhow::Ok(plan::node_probe(hosts, targets, &q, Some(allowed)))
                }
                .boxed()
            });
        let results = join_all(by_address.chain(through_services).chain(through_nodes)).await;
        Ok(Reachability::new(
            results.into_iter().collect::<Result<_, _>>()?,
        ))
    }

    /// The frontends on the nodes' addresses that [`Self::probe_all`] probes: node ports
    /// and host ports.
    pub fn node_targets(&self) -> Vec<plan::NodeTarget> {
        if self.service_probes == ServiceProbes::Off {
            Vec::new()
        } else {
            plan::node_targets(&self.cluster)
        }
    }

    /// The address `backend` sees a connection from `from` through `target` come from,
    /// when the node masquerades it (`None`: it keeps the client's): kube-proxy masquerades
    /// every external client of a node port of a Service with `externalTrafficPolicy:
    /// Cluster`; the `portmap` plugin (`snat`) every client of the backend's own subnet on
    /// a host port, the backend itself included. The node's `MASQUERADE` takes the address
    /// its stack picks towards the backend.
    pub fn masquerade_source(
        &self,
        from: &plan::Host,
        target: &plan::NodeTarget,
        backend: &Backend,
    ) -> anyhow::Result<Option<IpAddr>> {
        let masquerades = match target.via {
            NodeFrontend::NodePort => from.pod.is_none() && target.masquerades,
            NodeFrontend::HostPort => {
                let client = from.ip(Family::of(&backend.address));
                let subnet = backend
                    .pod
                    .as_ref()
                    .and_then(|p| self.host(&p.to_string()).ok())
                    .and_then(|h| h.subnet_of(backend.address));
                client.zip(subnet).is_some_and(|(c, s)| s.contains(&c))
            }
        };
        if !masquerades {
            return Ok(None);
        }
        let node = self
            .topology
            .nodes
            .iter()
            .find(|n| n.name == target.node)
            .with_context(|| format!("no node {} in the lab", target.node))?;
        let source = node
            .netns
            .run(|| -> std::io::Result<IpAddr> {
                let socket = std::net::UdpSocket::bind(SocketAddr::new(
                    probe::unspecified(backend.address.is_ipv6()),
                    0,
                ))?;
                // Connecting a datagram socket sends nothing; it picks the route and the
                // source address.
                socket.connect(SocketAddr::new(backend.address, backend.port))?;
                Ok(socket.local_addr()?.ip())
            })?
            .with_context(|| {
                format!(
                    "choosing {}'s source address towards {}",
                    target.node, backend.address
                )
            })?;
        Ok(Some(source))
    }

    /// Stops the probe servers and the agents and waits for them, then tears everything
    /// down.
    pub async fn shutdown(mut self) {
        self.servers.shutdown().await;
        for i in 0..self.agents.len() {
            let _ = self.stop_agent(i).await;
        }
    }
}

/// One probe from `src` through frontend `t` (`lookup` when it ends at a DNS server). A
/// frontend without a backend (none ready, or a node port of a Service with
/// `externalTrafficPolicy: Local` on a node without one) can only be refused by the proxy
/// or the node holding it: that is no backend reached.
async fn through_frontend(
    src: &Host,
    t: &plan::ServiceTarget,
    lookup: Option<&dns::ProbeLookup>,
) -> anyhow::Result<bool> {
    let refusal = if t.backends.is_empty() {
        Refusal::NotReached
    } else {
        Refusal::Reached
    };
    exchange(
        src,
        SocketAddr::new(t.address, t.port),
        t.protocol,
        lookup,
        refusal,
    )
    .await
}

/// One probe from `src` to `dst`: `lookup` when it ends at a DNS server, else a plain
/// exchange, a refusal counting as `refusal` says.
async fn exchange(
    src: &Host,
    dst: SocketAddr,
    protocol: Protocol,
    lookup: Option<&dns::ProbeLookup>,
    refusal: Refusal,
) -> anyhow::Result<bool> {
    match lookup {
        Some(lookup) => lookup
            .probe(&src.netns, dst, protocol)
            .await
            .with_context(|| format!("DNS lookup {} -> {dst}/{protocol}", src.spec.label)),
        None => probe::probe_with(&src.netns, dst.ip(), dst.port(), protocol, refusal)
            .await
            .with_context(|| format!("probing {} -> {dst}/{protocol}", src.spec.label)),
    }
}

/// Adds to `cluster` each of `objects` that it lacks.
fn add_missing(cluster: &mut Cluster, objects: &[Object]) {
    for object in objects {
        let missing = match object {
            Object::Namespace(ns) => !cluster.namespaces.contains_key(&ns.name),
            Object::Pod(p) => !cluster.pods.contains_key(&p.id),
            Object::Service(s) => !cluster.services.contains_key(&s.id),
            Object::EndpointSlice(s) => !cluster.endpoint_slices.contains_key(&s.id),
            Object::Policy(p) => !cluster.policies.contains_key(&p.id),
            Object::Node(n) => !cluster.nodes.contains_key(&n.name),
        };
        if missing {
            cluster.apply(object.clone());
        }
    }
}

/// Puts every pod backend of an EndpointSlice on its pod's node (`nodeName`), as the
/// EndpointSlice controller reports it; the lab places pods after the slices were made.
fn place_backends(cluster: &mut Cluster) {
    let nodes: BTreeMap<ObjectRef, Option<String>> = cluster
        .pods
        .iter()
        .map(|(id, p)| (id.clone(), p.node.clone()))
        .collect();
    for endpoint in cluster
        .endpoint_slices
        .values_mut()
        .flat_map(|s| s.endpoints.iter_mut())
    {
        if let Some(node) = endpoint.pod.as_ref().and_then(|p| nodes.get(p)) {
            endpoint.node.clone_from(node);
        }
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

/// Namespaces, pin directories and DNS files that labs of process `pid` created and still
/// exist.
pub fn resources_of(pid: u32) -> Vec<PathBuf> {
    let mut found = dns::files_of(pid);
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
