//! The lab's cluster DNS with real packets: a real DNS server (dnsmasq) in pod
//! `kube-system/kube-dns-0` behind Service `kube-system/kube-dns`, and lookups from the pods'
//! namespaces through its cluster IP, across kube-proxy's rules and the datapath on both
//! veths. Under the canonical DNS policy (egress deny-all, plus egress to the kube-dns pods
//! on 53/UDP and 53/TCP) lookups work and nothing else leaves; without its DNS rule, they
//! fail.

use std::{net::IpAddr, path::PathBuf, process::Command};

use policy_agent::{
    lab::{
        Lab, LabConfig,
        config::{CniKind, ProxyMode, ServiceProbes},
        dns::{self, Answer, RCODE_REFUSED},
    },
    model::{ObjectRef, Protocol},
    report::{Family, Reachability},
};
use policy_tests::{assert_reachability, block_on, ns, standard_with, to_self};

/// The lab's DNS pod.
const DNS_POD: &str = "kube-system/kube-dns-0";
/// kube-dns's name.
const KUBE_DNS: &str = "kube-dns.kube-system.svc.cluster.local";

const DENY_EGRESS_X: &str = r#"
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
"#;

/// The canonical DNS rule: egress to the kube-dns pods of kube-system on 53/UDP and 53/TCP.
const ALLOW_DNS_X: &str = r#"
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"#;

/// The canonical DNS policy on namespace x.
fn canonical_policy() -> String {
    format!("{DENY_EGRESS_X}\n---\n{ALLOW_DNS_X}")
}

fn config(proxy_mode: ProxyMode) -> LabConfig {
    LabConfig {
        dns: true,
        proxy_mode,
        ..LabConfig::default()
    }
}

/// kube-dns's cluster IP of `family`.
fn kube_dns_ip(lab: &Lab, family: Family) -> IpAddr {
    lab.cluster().services[&ObjectRef::new("kube-system", "kube-dns")]
        .cluster_ips
        .iter()
        .copied()
        .find(|ip| Family::of(ip) == family)
        .unwrap_or_else(|| panic!("kube-dns has a {family:?} cluster IP"))
}

/// Every (family, protocol) a lookup goes over.
fn transports() -> impl Iterator<Item = (Family, Protocol)> {
    [Family::IPv4, Family::IPv6]
        .into_iter()
        .flat_map(|f| [Protocol::Udp, Protocol::Tcp].map(move |p| (f, p)))
}

/// Asserts that `from` looks up kube-dns's name through its cluster IP over every transport
/// and gets its cluster IP of that family (`works`), or gets no answer at all.
async fn assert_lookups(lab: &Lab, from: &str, works: bool, what: &str) {
    for (family, protocol) in transports() {
        let got = lab
            .lookup(from, KUBE_DNS, family, protocol)
            .await
            .expect("the lookup runs");
        let want = works.then(|| Answer::Addresses(vec![kube_dns_ip(lab, family)]));
        assert_eq!(got, want, "{what}: {from} {family:?} {protocol}");
    }
}

/// The probes of `reachability` through kube-dns from `from`.
fn dns_probes<'a>(
    reachability: &'a Reachability,
    from: &'a str,
) -> impl Iterator<Item = &'a policy_agent::report::Probe> {
    reachability
        .probes
        .iter()
        .filter(move |p| p.from == from && p.service.as_deref() == Some("kube-system/kube-dns"))
}

/// Under the canonical DNS policy on x: x's pods look names up through the cluster IP (UDP
/// and TCP, both families) and reach nothing else; every other pod reaches everything.
fn canonical_policy_allows_dns_only(config: LabConfig) {
    let cluster = standard_with(&canonical_policy());
    block_on(async {
        let lab = Lab::start(&cluster, &config).await.expect("lab starts");
        let mode = config.proxy_mode;
        assert_lookups(&lab, "x/a", true, "the canonical DNS policy").await;
        // A pod's name too, from its address (the answer is the lab's hosts file's).
        let y_a = lab.lookup(
            "x/a",
            "10-100-0-3.y.pod.cluster.local",
            Family::IPv4,
            Protocol::Udp,
        );
        assert_eq!(
            y_a.await.unwrap(),
            Some(Answer::Addresses(vec!["10.100.0.3".parse().unwrap()]))
        );
        assert!(
            !lab.probe("x/a", "y/a", 80, Protocol::Tcp, Family::IPv4)
                .await
                .unwrap(),
            "{mode:?}: x/a is egress-isolated but for DNS, yet reached y/a"
        );

        let reachability = lab.probe_all().await.expect("probes run");
        assert_reachability(&reachability, |p| {
            to_self(p) || ns(&p.from) != Some("x") || (p.to == DNS_POD && p.port == dns::PORT)
        });
        // Every pod probed kube-dns: by UDP and TCP, in both families, with lookups.
        for pod in ["x/a", "x/b", "y/a", DNS_POD] {
            let probes: Vec<_> = dns_probes(&reachability, pod).collect();
            assert_eq!(probes.len(), 4, "{mode:?}: {pod}'s probes through kube-dns");
            assert!(probes.iter().all(|p| p.to == DNS_POD && p.allowed));
        }
        // The JSON contract holds for them.
        let json: serde_json::Value = serde_json::from_str(&reachability.to_json()).unwrap();
        for probe in json["probes"].as_array().unwrap() {
            for key in ["from", "to", "port", "protocol", "family", "allowed"] {
                assert!(probe.get(key).is_some(), "{key} in {probe}");
            }
        }
        lab.shutdown().await;
    });
}

#[test]
fn canonical_dns_policy_with_iptables() {
    canonical_policy_allows_dns_only(config(ProxyMode::Iptables));
}

#[test]
fn canonical_dns_policy_with_ipvs() {
    canonical_policy_allows_dns_only(config(ProxyMode::Ipvs));
}

#[test]
fn canonical_dns_policy_with_nftables() {
    canonical_policy_allows_dns_only(config(ProxyMode::Nftables));
}

/// Two nodes on bridges: the DNS pod is on node-1 and x/a on node-2, so lookups from x/a
/// cross the fabric after the DNAT.
#[test]
fn canonical_dns_policy_across_two_nodes_on_bridges() {
    canonical_policy_allows_dns_only(LabConfig {
        nodes: 2,
        cni: CniKind::Bridge,
        ..config(ProxyMode::Iptables)
    });
}

/// Egress deny-all without the DNS rule: x/a's lookups get no answer while y/a's do; once
/// the rule is added to the running lab, x/a's are answered too.
#[test]
fn without_the_dns_rule_lookups_are_denied_until_it_is_added() {
    for mode in [ProxyMode::Iptables, ProxyMode::Ipvs] {
        block_on(async {
            let (cluster, config) = (standard_with(DENY_EGRESS_X), config(mode));
            let mut lab = Lab::start(&cluster, &config).await.expect("lab starts");
            assert_lookups(&lab, "x/a", false, "egress deny-all alone").await;
            assert_lookups(&lab, "y/a", true, "no policy isolates y/a").await;
            lab.update(&standard_with(&canonical_policy()))
                .await
                .expect("the lab takes the DNS rule");
            assert_lookups(&lab, "x/a", true, "the DNS rule added").await;
            lab.shutdown().await;
        });
    }
}

/// What `getent` prints for `name` from the network namespace `netns` (`ip netns exec`
/// shows the pod's resolver as /etc/resolv.conf), or `None` when it resolves nothing.
fn getent(netns: &str, database: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "getent", database, name])
        .output()
        .expect("ip netns exec runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every pod's resolver is kube-dns, with its namespace's search list: short names resolve
/// through it (unknown ones in the cluster domain do not exist, so the search goes on), and
/// names outside the cluster are refused (nothing leaves the lab).
#[test]
fn every_pod_resolves_cluster_names_with_its_resolver() {
    let config = LabConfig {
        services: Some(ServiceProbes::PerPod),
        ..config(ProxyMode::Iptables)
    };
    block_on(async {
        let lab = Lab::start(&standard_with(""), &config)
            .await
            .expect("lab starts");
        let s_x_b = lab.cluster().services[&ObjectRef::new("x", "s-x-b")].cluster_ips[0];
        let kube_dns = kube_dns_ip(&lab, Family::IPv4).to_string();
        for pod in ["x/a", "y/b", DNS_POD] {
            let netns = lab.netns(pod).unwrap().name().to_owned();
            let resolver = std::fs::read_to_string(dns::resolver_path(&netns)).unwrap();
            assert!(
                resolver.contains(&format!("nameserver {kube_dns}")),
                "{resolver}"
            );
            let found = getent(&netns, "ahostsv4", "kube-dns.kube-system");
            assert!(
                found.as_deref().is_some_and(|f| f.contains(&kube_dns)),
                "{pod}: kube-dns.kube-system through the search list: {found:?}"
            );
            let six = getent(&netns, "ahostsv6", KUBE_DNS);
            let want = kube_dns_ip(&lab, Family::IPv6).to_string();
            assert!(
                six.as_deref().is_some_and(|f| f.contains(&want)),
                "{pod}: {six:?}"
            );
        }
        // A Service of the pod's own namespace by its bare name.
        let found = getent(lab.netns("x/a").unwrap().name(), "ahostsv4", "s-x-b");
        assert!(
            found
                .as_deref()
                .is_some_and(|f| f.contains(&s_x_b.to_string())),
            "s-x-b from x/a: {found:?}"
        );
        let outside = lab.lookup("x/a", "example.com", Family::IPv4, Protocol::Udp);
        assert_eq!(outside.await.unwrap(), Some(Answer::Error(RCODE_REFUSED)));
        lab.shutdown().await;
    });
}

/// Whether process `pid` still exists.
fn running(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A lab's DNS servers and files go with it: when it shuts down, and when it is dropped
/// without (as on a failure).
#[test]
fn the_dns_server_and_its_files_go_with_the_lab() {
    block_on(async {
        for shut_down in [true, false] {
            let (cluster, config) = (standard_with(""), config(ProxyMode::Iptables));
            let lab = Lab::start(&cluster, &config).await.expect("lab starts");
            let dns = lab.dns().expect("the lab runs the cluster DNS");
            let pids: Vec<u32> = dns.server_pids().into_values().collect();
            let files: Vec<PathBuf> = dns.files();
            assert_eq!(pids.len(), 1, "one DNS pod");
            assert!(pids.iter().all(|&pid| running(pid)));
            // The DNS directory and a resolver directory per pod.
            assert_eq!(files.len(), 1 + 5, "{files:?}");
            assert!(files.iter().all(|f| f.exists()), "{files:?}");
            if shut_down {
                lab.shutdown().await;
            } else {
                drop(lab);
            }
            assert!(
                !pids.iter().any(|&pid| running(pid)),
                "shut down: {shut_down}"
            );
            let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
            assert!(left.is_empty(), "shut down: {shut_down}: {left:?}");
        }
    });
}
