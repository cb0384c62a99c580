//! The lab's cluster DNS: a real DNS server (dnsmasq, from Debian's `dnsmasq-base`) in every
//! DNS pod behind the `kube-system/kube-dns` Service, every pod's resolver pointed at that
//! Service, and DNS lookups as probes.
//!
//! With `dns = true` in lab.toml (or `lab --dns`) the lab adds what a cluster's DNS add-on
//! brings, where the manifests do not have it already:
//! - namespace `kube-system`;
//! - pod `kube-system/kube-dns-0` ([`POD`]), labelled `k8s-app: kube-dns` (the label DNS
//!   policies select: CoreDNS's pods keep kube-dns's), declaring
//!   53/UDP `dns` and 53/TCP `dns-tcp`, with an address of every family the cluster's pods
//!   have: the first free one from host 53 on, in the subnet of the first pod's address of
//!   that family (as a node's IPAM hands out addresses of its pod subnet), else in
//!   10.244.0.0/24;
//! - Service `kube-system/kube-dns` selecting it, ports `dns` 53/UDP and `dns-tcp` 53/TCP, at
//!   10.96.0.10 and fd00:10:96::a (kubeadm's and kind's kube-dns addresses) when free.
//!
//! A DNS pod is any running pod of `kube-system` labelled `k8s-app: kube-dns` (the manifests'
//! own, or the lab's): a normal lab pod, which gets its network from the CNI plugins and is
//! enforced by the agent, in which the lab runs dnsmasq on port 53 of the pod's addresses.
//!
//! The names served, as CoreDNS's `kubernetes` plugin serves them in the cluster domain
//! `cluster.local`: `<service>.<namespace>.svc.cluster.local` (its cluster IPs; the ready
//! endpoints of a headless Service) and `<address, dashes for dots or colons>.<namespace>.
//! pod.cluster.local`. Any other name in `cluster.local` does not exist (NXDOMAIN, so that
//! resolvers go on through their search list); names outside it are refused: nothing is
//! forwarded out of the lab.
//!
//! Every pod's resolver is what the kubelet writes (kube-dns's cluster IPs of the pod's
//! families, the search list of the pod's namespace, `ndots:5`), in
//! `/etc/netns/<pod's network namespace>/resolv.conf`, which `ip netns exec` shows as
//! `/etc/resolv.conf`.
//!
//! A probe that ends at port 53 of a DNS pod (by its address, or through a Service) is a real
//! lookup, over UDP or TCP, of `kube-dns.kube-system.svc.cluster.local`: allowed when the
//! answer holds exactly the addresses the lab serves for it of the family asked over (A over
//! IPv4, AAAA over IPv6), denied when no answer comes; any other answer is an error.

mod lookup;
mod message;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

pub use self::{
    lookup::{ProbeLookup, lookup},
    message::{Answer, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED},
};
use super::topology::{Host, NETNS_PREFIX, PIN_PREFIX};
use crate::{
    model::{
        Cluster, ContainerPort, IpFamily, Labels, Namespace, ObjectRef, Pod, Protocol, Service,
        ServicePort, TargetPort,
    },
    netns,
    source::{Object, control_plane},
};

/// The namespace of the cluster's DNS, as in every cluster.
pub const NAMESPACE: &str = "kube-system";
/// The Service every pod's resolver points at.
pub const SERVICE: &str = "kube-dns";
/// The DNS pod the lab adds when the manifests have none.
pub const POD: &str = "kube-dns-0";
/// The label key DNS pods carry (`k8s-app: kube-dns`, kept by CoreDNS for compatibility).
pub const APP_LABEL: &str = "k8s-app";
/// The label value DNS pods carry.
pub const APP_LABEL_VALUE: &str = "kube-dns";
/// The DNS port, on the Service and on the DNS pods.
pub const PORT: u16 = 53;
/// The cluster domain, as the kubelet's `--cluster-domain` defaults it.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The Service port name of DNS over UDP, as CoreDNS's manifests name it.
const PORT_NAME_UDP: &str = "dns";
/// The Service port name of DNS over TCP.
const PORT_NAME_TCP: &str = "dns-tcp";

/// kube-dns's IPv4 cluster IP in kubeadm and kind clusters: the tenth address of the
/// default service range (which the lab's allocator leaves free).
const CLUSTER_IP_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// kube-dns's IPv6 cluster IP in kind's dual-stack clusters.
const CLUSTER_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
/// The subnet of the lab's DNS pod's IPv4 address when no pod has one (kind's first node's
/// pod subnet).
const DEFAULT_SUBNET_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
/// Prefix length of the lab's pod subnets (IPv4), whose gateway the node holds.
const SUBNET_V4: u8 = 24;
/// Prefix length of the lab's pod subnets (IPv6).
const SUBNET_V6: u8 = 64;
/// The host part where the search for the DNS pod's address in its subnet starts.
const FIRST_HOST: u32 = 53;
/// Addresses tried from there on; all stay below host 200, clear of the end of a /24
/// (where the lab's CNI setup puts the subnet's gateway).
const HOST_CANDIDATES: u32 = 128;

/// TCP connections a server serves at once (it forks one child per connection): well above
/// dnsmasq's default of 20, as every host of a lab probes it over TCP at the same moment.
const MAX_TCP_CONNECTIONS: u32 = 128;
/// The TTL of every answer: CoreDNS's default for cluster names.
const TTL_SECONDS: u32 = 5;
/// The resolver's `ndots`, as the kubelet writes it: names with fewer dots go through the
/// search list first.
const NDOTS: u32 = 5;

/// Where Debian's `dnsmasq-base` installs the server.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// The agent's runtime directory, where the lab keeps its DNS files (see
/// [`crate::agent::api::default_socket`]).
const RUN_DIR: &str = "/run/policy-agent";
/// Suffix of a lab's DNS directory in [`RUN_DIR`], after [`PIN_PREFIX`] and the lab's id.
const DIR_SUFFIX: &str = "-dns";
/// Where `ip netns exec NAME` finds the files it shows in place of `/etc`'s.
pub const NETNS_ETC: &str = "/etc/netns";
/// The resolver configuration's name, in `/etc` and in [`NETNS_ETC`]`/NAME`.
const RESOLV_CONF: &str = "resolv.conf";
/// Mode of the lab's DNS directory: dnsmasq reads its files after dropping root.
const DIR_MODE: u32 = 0o755;
/// Mode of the files dnsmasq and resolvers read.
const FILE_MODE: u32 = 0o644;
/// How often a starting server is asked whether it answers.
const READY_ATTEMPTS: u32 = 50;
/// How long each of those questions waits.
const READY_WAIT: Duration = Duration::from_millis(100);

/// The lab's DNS Service, `kube-system/kube-dns`.
pub fn service_ref() -> ObjectRef {
    ObjectRef::new(NAMESPACE, SERVICE)
}

/// Whether `pod` runs a DNS server in the lab: a running pod of [`NAMESPACE`] in a network
/// namespace of its own, labelled `k8s-app: kube-dns`.
pub fn is_server_pod(pod: &Pod) -> bool {
    pod.id.namespace == NAMESPACE
        && pod.holds_addresses()
        && pod.labels.get(APP_LABEL).map(String::as_str) == Some(APP_LABEL_VALUE)
}

/// The ports dnsmasq takes in a DNS pod (no probe server listens on them there).
pub const SERVER_PORTS: [(Protocol, u16); 2] = [(Protocol::Udp, PORT), (Protocol::Tcp, PORT)];

/// Whether `protocol`/`port` is one a DNS server answers on.
pub fn serves(protocol: Protocol, port: u16) -> bool {
    SERVER_PORTS.contains(&(protocol, port))
}

// ---------------------------------------------------------------------------------------
// The cluster objects of the DNS add-on.

/// What [`add_to_cluster`] added (the rest was in the manifests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Additions {
    /// Namespace `kube-system`.
    pub namespace: bool,
    /// The DNS pod [`POD`].
    pub pod: Option<ObjectRef>,
    /// Service `kube-system/kube-dns`, and the EndpointSlices the control plane made for it.
    pub service: bool,
}

/// Adds the DNS add-on's namespace, pod and Service to `cluster` where it has none (see the
/// module's documentation), then what the control plane would fill in: cluster IPs and
/// EndpointSlices. The addresses of `externals` are left alone.
pub fn add_to_cluster(cluster: &mut Cluster, externals: &[IpAddr]) -> anyhow::Result<Additions> {
    let has_servers = cluster.pods.values().any(is_server_pod);
    let has_service = cluster.services.contains_key(&service_ref());
    if has_service && !has_servers {
        bail!(
            "the manifests have Service {} but no running pod of {NAMESPACE} labelled \
             {APP_LABEL}: {APP_LABEL_VALUE} for the lab to run its DNS server in",
            service_ref()
        );
    }
    let taken: BTreeSet<IpAddr> = cluster
        .pods
        .values()
        .flat_map(|p| p.ips.iter().copied())
        .chain(cluster.services.values().flat_map(Service::frontend_ips))
        .chain(externals.iter().copied())
        .collect();
    let additions = Additions {
        namespace: !cluster.namespaces.contains_key(NAMESPACE),
        pod: (!has_servers).then(|| ObjectRef::new(NAMESPACE, POD)),
        service: !has_service,
    };
    if !has_servers {
        let ips = server_addresses(cluster, &taken)?;
        cluster.add_pod(server_pod(ips));
    }
    if !has_service {
        cluster.add_service(kube_dns_service(cluster, &taken));
    }
    control_plane::complete(cluster);
    Ok(additions)
}

/// An address of every family the cluster's pods have (IPv4 when there are none): in the
/// subnet of the first pod's address of that family, the first free one from host
/// [`FIRST_HOST`] on.
fn server_addresses(cluster: &Cluster, taken: &BTreeSet<IpAddr>) -> anyhow::Result<Vec<IpAddr>> {
    let first = |v6: bool| {
        cluster
            .pods
            .values()
            .flat_map(|p| p.ips.iter().copied())
            .find(|ip| ip.is_ipv6() == v6)
    };
    let mut out = Vec::new();
    match (first(false), first(true)) {
        (None, None) => out.push(first_free(DEFAULT_SUBNET_V4.into(), taken)?),
        (v4, v6) => {
            for ip in v4.into_iter().chain(v6) {
                out.push(first_free(ip, taken)?);
            }
        }
    }
    Ok(out)
}

/// The first address of the lab's pod subnet around `ip` that is not `taken`, from host
/// [`FIRST_HOST`] on.
fn first_free(ip: IpAddr, taken: &BTreeSet<IpAddr>) -> anyhow::Result<IpAddr> {
    let hosts = FIRST_HOST..FIRST_HOST + HOST_CANDIDATES;
    let mut candidates: Box<dyn Iterator<Item = IpAddr>> = match ip {
        IpAddr::V4(v4) => {
            let net = u32::from(ipnet::Ipv4Net::new(v4, SUBNET_V4)?.network());
            Box::new(hosts.map(move |h| Ipv4Addr::from(net + h).into()))
        }
        IpAddr::V6(v6) => {
            let net = u128::from(ipnet::Ipv6Net::new(v6, SUBNET_V6)?.network());
            Box::new(hosts.map(move |h| Ipv6Addr::from(net + u128::from(h)).into()))
        }
    };
    candidates
        .find(|ip| !taken.contains(ip))
        .with_context(|| format!("no free address for the lab's DNS pod next to {ip}"))
}

/// The lab's DNS pod, with `ips`.
fn server_pod(ips: Vec<IpAddr>) -> Pod {
    let port = |name: &str, protocol| ContainerPort {
        name: Some(name.to_owned()),
        port: PORT,
        protocol,
        host_port: None,
    };
    Pod {
        id: ObjectRef::new(NAMESPACE, POD),
        labels: Labels::from([(APP_LABEL.to_owned(), APP_LABEL_VALUE.to_owned())]),
        ips,
        ports: vec![
            port(PORT_NAME_UDP, Protocol::Udp),
            port(PORT_NAME_TCP, Protocol::Tcp),
        ],
        ..Pod::default()
    }
}

/// Service `kube-system/kube-dns` in front of the DNS pods, in every family they have: at
/// kubeadm's addresses when free, else where the control plane allocates.
fn kube_dns_service(cluster: &Cluster, taken: &BTreeSet<IpAddr>) -> Service {
    let families: BTreeSet<IpFamily> = cluster
        .pods
        .values()
        .filter(|p| is_server_pod(p))
        .flat_map(|p| p.ips.iter().map(IpFamily::of))
        .collect();
    let mut cluster_ips = Vec::new();
    let mut unallocated = Vec::new();
    for family in families {
        let preferred = match family {
            IpFamily::Ipv4 => IpAddr::from(CLUSTER_IP_V4),
            IpFamily::Ipv6 => IpAddr::from(CLUSTER_IP_V6),
        };
        if taken.contains(&preferred) {
            unallocated.push(family);
        } else {
            cluster_ips.push(preferred);
        }
    }
    let port = |name: &str, protocol| ServicePort {
        name: name.to_owned(),
        protocol,
        port: PORT,
        node_port: None,
        target_port: TargetPort::Number(PORT),
    };
    Service {
        id: service_ref(),
        cluster_ips,
        ports: vec![
            port(PORT_NAME_UDP, Protocol::Udp),
            port(PORT_NAME_TCP, Protocol::Tcp),
        ],
        selector: Some(Labels::from([(
            APP_LABEL.to_owned(),
            APP_LABEL_VALUE.to_owned(),
        )])),
        unallocated: (!unallocated.is_empty()).then_some(unallocated),
        ..Service::default()
    }
}

/// The objects `additions` names, as `cluster` (the lab's) has them now: what a source that
/// reads only the manifests lacks.
pub fn added_objects(additions: &Additions, cluster: &Cluster) -> Vec<Object> {
    let mut out = Vec::new();
    if additions.namespace
        && let Some(ns) = cluster.namespaces.get(NAMESPACE)
    {
        out.push(Object::Namespace(ns.clone()));
    }
    if let Some(pod) = additions.pod.as_ref().and_then(|id| cluster.pods.get(id)) {
        out.push(Object::Pod(pod.clone()));
    }
    if additions.service {
        let id = service_ref();
        out.extend(cluster.services.get(&id).cloned().map(Object::Service));
        out.extend(
            cluster
                .endpoint_slices
                .values()
                .filter(|s| s.id.namespace == id.namespace && s.service == id.name)
                .cloned()
                .map(Object::EndpointSlice),
        );
    }
    out
}

/// Namespace `kube-system` as the API server makes it, unless `cluster` has it.
pub fn ensure_namespace(cluster: &mut Cluster) {
    if !cluster.namespaces.contains_key(NAMESPACE) {
        cluster.add_namespace(Namespace::new(NAMESPACE, Labels::new()));
    }
}

// ---------------------------------------------------------------------------------------
// The names served.

/// `<service>.<namespace>.svc.cluster.local`.
pub fn service_name(service: &ObjectRef) -> String {
    format!(
        "{}.{}.svc.{CLUSTER_DOMAIN}",
        service.name, service.namespace
    )
}

/// `<address, dashes for dots or colons>.<namespace>.pod.cluster.local`.
pub fn pod_name(ip: IpAddr, namespace: &str) -> String {
    let dashed = ip.to_string().replace(['.', ':'], "-");
    format!("{dashed}.{namespace}.pod.{CLUSTER_DOMAIN}")
}

/// Every name the lab's DNS serves, with each of its addresses: Services (cluster IPs, or a
/// headless Service's ready endpoints), then pods.
pub fn records(cluster: &Cluster) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    for service in cluster.services.values() {
        let name = service_name(&service.id);
        let addresses: Vec<IpAddr> = if service.cluster_ips.is_empty() {
            ready_endpoints(cluster, &service.id)
        } else {
            service.cluster_ips.clone()
        };
        out.extend(addresses.into_iter().map(|ip| (name.clone(), ip)));
    }
    for pod in cluster.pods.values().filter(|p| p.holds_addresses()) {
        out.extend(
            pod.ips
                .iter()
                .map(|&ip| (pod_name(ip, &pod.id.namespace), ip)),
        );
    }
    out
}

/// The addresses of the ready endpoints of `service`'s slices, once each.
fn ready_endpoints(cluster: &Cluster, service: &ObjectRef) -> Vec<IpAddr> {
    let addresses: BTreeSet<IpAddr> = cluster
        .endpoint_slices
        .values()
        .filter(|s| s.id.namespace == service.namespace && s.service == service.name)
        .flat_map(|s| s.endpoints.iter().filter(|e| e.ready))
        .flat_map(|e| e.addresses.iter().copied())
        .collect();
    addresses.into_iter().collect()
}

/// [`records`] as a hosts file (dnsmasq's `--addn-hosts`).
pub fn hosts_file(cluster: &Cluster) -> String {
    let mut out = String::from("# The lab's cluster DNS names, written by policy-agent lab.\n");
    for (name, ip) in records(cluster) {
        let _ = writeln!(out, "{ip} {name}");
    }
    out
}

/// The resolver configuration the kubelet writes for a pod of `namespace` (`ClusterFirst`).
pub fn resolv_conf(namespace: &str, nameservers: &[IpAddr]) -> String {
    let mut out = String::from("# The pod's resolver, written by policy-agent lab.\n");
    let _ = writeln!(
        out,
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    );
    for ns in nameservers {
        let _ = writeln!(out, "nameserver {ns}");
    }
    let _ = writeln!(out, "options ndots:{NDOTS}");
    out
}

// ---------------------------------------------------------------------------------------
// The lab's DNS while it runs.

/// The lab's cluster DNS while the lab runs: a server in every started DNS pod, a resolver
/// configuration for every started pod, and the files behind them. Dropping it stops the
/// servers and deletes the files.
#[derive(Debug)]
pub struct ClusterDns {
    /// What the lab added to the manifests' cluster.
    additions: Additions,
    /// The lab's DNS directory (the hosts file, the servers' pid files and logs).
    dir: PathBuf,
    /// The names served.
    hosts_file: PathBuf,
    /// The lookup every DNS probe makes.
    lookup: ProbeLookup,
    /// kube-dns's cluster IPs, the pods' nameservers.
    nameservers: Vec<IpAddr>,
    /// A server per started DNS pod.
    servers: BTreeMap<ObjectRef, DnsServer>,
    /// The `/etc/netns/NAME` directory of every started pod.
    resolvers: BTreeMap<ObjectRef, PathBuf>,
}

impl ClusterDns {
    /// Writes the names `cluster` (the lab's, complete) has into a directory of lab `lab_id`.
    pub fn new(lab_id: &str, additions: Additions, cluster: &Cluster) -> anyhow::Result<Self> {
        let dir = Path::new(RUN_DIR).join(format!("{PIN_PREFIX}{lab_id}{DIR_SUFFIX}"));
        let hosts_file = dir.join("hosts");
        let mut dns = Self {
            additions,
            dir,
            hosts_file,
            lookup: ProbeLookup::new(cluster),
            nameservers: cluster
                .services
                .get(&service_ref())
                .map(|s| s.cluster_ips.clone())
                .unwrap_or_default(),
            servers: BTreeMap::new(),
            resolvers: BTreeMap::new(),
        };
        // From here on, dropping `dns` removes whatever was written.
        dns.write_hosts_file(cluster)
            .with_context(|| format!("writing {}", dns.hosts_file.display()))?;
        Ok(dns)
    }

    fn write_hosts_file(&mut self, cluster: &Cluster) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(DIR_MODE))?;
        write_readable(&self.hosts_file, &hosts_file(cluster))
    }

    /// What the lab added to the manifests' cluster.
    pub fn additions(&self) -> &Additions {
        &self.additions
    }

    /// The lookup every DNS probe makes.
    pub fn lookup(&self) -> &ProbeLookup {
        &self.lookup
    }

    /// kube-dns's cluster IPs: every pod's nameservers.
    pub fn nameservers(&self) -> &[IpAddr] {
        &self.nameservers
    }

    /// The process ids of the running servers, by DNS pod.
    pub fn server_pids(&self) -> BTreeMap<ObjectRef, u32> {
        self.servers
            .iter()
            .map(|(pod, server)| (pod.clone(), server.child.id()))
            .collect()
    }

    /// The files and directories of this lab's DNS: its DNS directory and the resolver
    /// directories of its started pods.
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.dir.clone())
            .chain(self.resolvers.values().cloned())
            .collect()
    }

    /// Pod `host` (of `pod`) was created: writes its resolver configuration and, in a DNS
    /// pod, starts its server and waits until it answers.
    pub fn pod_started(&mut self, pod: &Pod, host: &Host) -> anyhow::Result<()> {
        let families: Vec<bool> = host.spec.ips.iter().map(IpAddr::is_ipv6).collect();
        let nameservers: Vec<IpAddr> = self
            .nameservers
            .iter()
            .copied()
            .filter(|ns| families.contains(&ns.is_ipv6()))
            .collect();
        let dir = Path::new(NETNS_ETC).join(host.netns.name());
        self.resolvers.insert(pod.id.clone(), dir.clone());
        write_resolver(&dir, &pod.id.namespace, &nameservers)
            .with_context(|| format!("writing the resolver configuration of {}", pod.id))?;
        if is_server_pod(pod) {
            let server = DnsServer::start(host, &self.hosts_file, &self.dir, &self.lookup)
                .with_context(|| format!("starting the DNS server of {}", pod.id))?;
            self.servers.insert(pod.id.clone(), server);
        }
        Ok(())
    }

    /// Pod `pod` is going away: stops its server, deletes its resolver configuration.
    pub fn pod_stopped(&mut self, pod: &ObjectRef) {
        self.servers.remove(pod);
        if let Some(dir) = self.resolvers.remove(pod) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        // Servers first: they are stopped when dropped.
        self.servers.clear();
        for dir in self.resolvers.values() {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes `contents` to `path`, readable by all (dnsmasq drops root before reading).
fn write_readable(path: &Path, contents: &str) -> io::Result<()> {
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE))
}

/// Writes a pod's `resolv.conf` into `dir` (its `/etc/netns/NAME`).
fn write_resolver(dir: &Path, namespace: &str, nameservers: &[IpAddr]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_readable(&dir.join(RESOLV_CONF), &resolv_conf(namespace, nameservers))
}

/// The resolver configuration of the pod in network namespace `netns_name`, as
/// `ip netns exec` shows it.
pub fn resolver_path(netns_name: &str) -> PathBuf {
    Path::new(NETNS_ETC).join(netns_name).join(RESOLV_CONF)
}

/// dnsmasq in a DNS pod's network namespace, in a process group of its own (it forks a child
/// per TCP connection). Dropping it kills the group.
#[derive(Debug)]
struct DnsServer {
    child: Child,
}

impl DnsServer {
    /// Starts dnsmasq on port 53 of `host`'s addresses, serving `hosts_file`, its pid file
    /// and log in `dir`, and waits until it answers `check`.
    fn start(
        host: &Host,
        hosts_file: &Path,
        dir: &Path,
        check: &ProbeLookup,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(DNSMASQ).exists(),
            "the lab's DNS server is dnsmasq, which is missing: apt-get install dnsmasq-base"
        );
        let stem = host.spec.label.replace('/', ".");
        let log_path = dir.join(format!("{stem}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.netns.path().display()))
            .arg("--")
            .arg(DNSMASQ)
            .args(dnsmasq_args(
                &host.spec.ips,
                hosts_file,
                &dir.join(format!("{stem}.pid")),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("running dnsmasq with nsenter")?;
        let mut server = Self { child };
        server.wait_ready(host, check).map_err(|e| {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            e.context(format!("dnsmasq's log: {}", log.trim()))
        })?;
        Ok(server)
    }

    /// Asks the server until it answers (or gives up, or it exits).
    fn wait_ready(&mut self, host: &Host, check: &ProbeLookup) -> anyhow::Result<()> {
        let ip = *host.spec.ips.first().context("a DNS pod without address")?;
        let server = SocketAddr::new(ip, PORT);
        for _ in 0..READY_ATTEMPTS {
            if let Some(status) = self.child.try_wait()? {
                bail!("dnsmasq exited ({status})");
            }
            // The pod asks itself: local traffic, which no policy decides.
            if host.netns.run(|| check.probe_blocking(server))?? {
                return Ok(());
            }
        }
        bail!("dnsmasq did not answer on {server} within {READY_ATTEMPTS} attempts");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // nsenter exec'd dnsmasq: the child's pid leads the group.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// dnsmasq's command line: in the foreground (the lab owns the process), no configuration
/// file, no upstream servers and no `/etc/hosts` (nothing but the cluster's names), the
/// names of `hosts_file`, authoritative for the cluster domain, on port 53 of `ips` only,
/// logging to stderr.
fn dnsmasq_args(ips: &[IpAddr], hosts_file: &Path, pid_file: &Path) -> Vec<String> {
    let mut args = vec![
        "--keep-in-foreground".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        format!("--addn-hosts={}", hosts_file.display()),
        // Unknown names in the cluster domain are NXDOMAIN, not refused: resolvers go on
        // through their search list.
        format!("--local=/{CLUSTER_DOMAIN}/"),
        format!("--local-ttl={TTL_SECONDS}"),
        format!("--max-tcp-connections={MAX_TCP_CONNECTIONS}"),
        "--bind-interfaces".to_owned(),
        format!("--port={PORT}"),
        format!("--pid-file={}", pid_file.display()),
        "--log-facility=-".to_owned(),
    ];
    args.extend(ips.iter().map(|ip| format!("--listen-address={ip}")));
    args
}

/// Stops servers and deletes DNS files that labs of processes no longer running left
/// behind (a lab killed before it could clean up): the servers named by pid files in their
/// DNS directories, and their pods' resolver configurations.
pub fn sweep_stale() {
    for entry in fs::read_dir(RUN_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(DIR_SUFFIX) && netns::stale_owner(&name, PIN_PREFIX).is_some() {
            stop_servers_of(&entry.path());
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    for entry in fs::read_dir(NETNS_ETC).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if netns::stale_owner(&name, NETNS_PREFIX).is_some() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The DNS directories and resolver directories that labs of process `pid` created and
/// still exist.
pub fn files_of(pid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for (dir, prefix, suffix) in [
        (RUN_DIR, PIN_PREFIX, DIR_SUFFIX),
        (NETNS_ETC, NETNS_PREFIX, ""),
    ] {
        let prefix = format!("{prefix}{pid}-");
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(suffix) {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Kills the process group of every dnsmasq whose pid file is in `dir`.
fn stop_servers_of(dir: &Path) {
    let pid_files = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pid"));
    for path in pid_files {
        let Some(pid) = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        // Only if that process is still a dnsmasq (the pid may have been reused since).
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "dnsmasq" {
            tracing::info!(pid, "stopping a stale lab DNS server");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Pod;

    fn dual_stack_cluster() -> Cluster {
        let mut c = Cluster::default();
        c.add_pod(Pod {
            id: ObjectRef::new("x", "a"),
            ips: vec!["10.1.2.53".parse().unwrap(), "fd00::1".parse().unwrap()],
            ..Pod::default()
        });
        c
    }

    #[test]
    fn the_add_on_is_added_where_free() {
        let mut c = dual_stack_cluster();
        let added = add_to_cluster(&mut c, &["10.1.2.54".parse().unwrap()]).unwrap();
        assert_eq!(
            added,
            Additions {
                namespace: true,
                pod: Some(ObjectRef::new(NAMESPACE, POD)),
                service: true,
            }
        );
        let pod = &c.pods[&ObjectRef::new(NAMESPACE, POD)];
        assert!(is_server_pod(pod));
        let want: Vec<IpAddr> = vec!["10.1.2.55".parse().unwrap(), "fd00::35".parse().unwrap()];
        assert_eq!(
            pod.ips, want,
            "in the first pod's subnets, taken addresses skipped"
        );
        let service = &c.services[&service_ref()];
        assert_eq!(
            service.cluster_ips,
            [IpAddr::from(CLUSTER_IP_V4), IpAddr::from(CLUSTER_IP_V6)]
        );
        assert_eq!(
            ready_endpoints(&c, &service_ref()),
            want,
            "the control plane made its slices"
        );
        assert_eq!(
            c.namespaces[NAMESPACE].labels["kubernetes.io/metadata.name"],
            NAMESPACE
        );
        let objects = added_objects(&added, &c);
        // Namespace, pod, Service and one slice per family.
        assert_eq!(objects.len(), 5, "{objects:?}");

        let mut empty = Cluster::default();
        add_to_cluster(&mut empty, &[]).unwrap();
        let pod = &empty.pods[&ObjectRef::new(NAMESPACE, POD)];
        assert_eq!(pod.ips, ["10.244.0.53".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_kube_dns_service_without_servers_is_refused() {
        let mut c = dual_stack_cluster();
        c.add_service(Service {
            id: service_ref(),
            ..Service::default()
        });
        assert!(add_to_cluster(&mut c, &[]).is_err());
    }

    #[test]
    fn the_names_are_the_cluster_dns_names() {
        let mut c = dual_stack_cluster();
        add_to_cluster(&mut c, &[]).unwrap();
        let hosts = hosts_file(&c);
        for line in [
            "10.96.0.10 kube-dns.kube-system.svc.cluster.local",
            "fd00:10:96::a kube-dns.kube-system.svc.cluster.local",
            "10.1.2.53 10-1-2-53.x.pod.cluster.local",
            "fd00::1 fd00--1.x.pod.cluster.local",
        ] {
            assert!(hosts.lines().any(|l| l == line), "{line:?} in\n{hosts}");
        }
        let lookup = ProbeLookup::new(&c);
        assert_eq!(
            lookup.addresses,
            [IpAddr::from(CLUSTER_IP_V4), IpAddr::from(CLUSTER_IP_V6)]
        );
        let conf = resolv_conf("x", &[IpAddr::from(CLUSTER_IP_V4)]);
        assert_eq!(
            conf.lines().skip(1).collect::<Vec<_>>(),
            [
                "search x.svc.cluster.local svc.cluster.local cluster.local",
                "nameserver 10.96.0.10",
                "options ndots:5",
            ]
        );
    }
}
