//! Services with real packets, in each of kube-proxy's modes: the lab's nodes carry
//! kube-proxy's rules, and every probe crosses them. What a real node does to Service traffic
//! (DNAT after our program ran, cluster IPs on the node with IPVS, masquerade of NodePort
//! traffic) must never open a path the policy denies, nor close one it allows.

use std::net::IpAddr;

use policy_agent::{
    lab::{
        Lab, LabConfig,
        config::{ProxyMode, ServiceProbes},
        probe,
    },
    model::{Cluster, ObjectRef, Protocol},
    report::Family,
};
use policy_tests::{block_on, standard_with};

/// The Service port clients dial.
const SERVICE_PORT: u16 = 8080;
/// The Service's node port.
const NODE_PORT: u16 = 30080;
/// The port y/a serves behind the Service (`targetPort: http`).
const TARGET_PORT: u16 = 80;
/// An external host, outside every pod network.
const EXTERNAL: &str = "203.0.113.5";

/// Service `y/web` in front of y/a (`app: a` in namespace y), on [`SERVICE_PORT`] and
/// [`NODE_PORT`], with `externalTrafficPolicy` `etp`.
fn web_service(etp: &str) -> String {
    format!(
        r#"
kind: Service
metadata: {{name: web, namespace: y}}
spec:
  type: NodePort
  selector: {{app: a}}
  externalTrafficPolicy: {etp}
  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: http, nodePort: {NODE_PORT}}}]
"#
    )
}

const EGRESS_DENY_ALL_X: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
"#;

const INGRESS_DENY_ALL_Y: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

/// Ingress to y's pods from `cidr` only.
fn ingress_from_block_y(cidr: &str) -> String {
    format!(
        r#"
kind: NetworkPolicy
metadata: {{name: from-block, namespace: y}}
spec:
  podSelector: {{}}
  ingress: [{{from: [{{ipBlock: {{cidr: "{cidr}"}}}}]}}]
"#
    )
}

fn config(proxy_mode: ProxyMode) -> LabConfig {
    LabConfig {
        proxy_mode,
        services: Some(ServiceProbes::On),
        externals: vec![EXTERNAL.parse().unwrap()],
        ..LabConfig::default()
    }
}

/// The IPv4 cluster IP of `y/web`.
fn cluster_ip(cluster: &Cluster) -> IpAddr {
    let id = ObjectRef::new("y", "web");
    cluster.services[&id]
        .cluster_ips
        .iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .expect("y/web has an IPv4 cluster IP")
}

/// The node's IPv4 address on the subnet of y/a, the gateway its CNI result names (the
/// node's veth holds it): what the node masquerades a forwarded connection to y/a with.
fn node_address(lab: &Lab) -> IpAddr {
    let sandbox = lab
        .host("y/a")
        .expect("y/a exists")
        .sandbox
        .as_ref()
        .expect("y/a has a sandbox");
    sandbox.result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["gateway"].as_str()?.parse().ok())
        .find(IpAddr::is_ipv4)
        .unwrap_or_else(|| panic!("no IPv4 gateway in y/a's CNI result: {}", sandbox.result))
}

/// Every IPv4 address the node's node ports answer on that a test dials: its Node object's
/// addresses (`InternalIP`) and its address on y/a's subnet.
fn node_port_addresses(lab: &Lab) -> Vec<IpAddr> {
    let node = lab.cluster().nodes.values().next().expect("one node");
    let mut out: Vec<IpAddr> = node
        .addresses
        .iter()
        .copied()
        .filter(IpAddr::is_ipv4)
        .collect();
    out.push(node_address(lab));
    out
}

/// One TCP connection from host `from` to `ip:port`.
async fn connects(lab: &Lab, from: &str, ip: IpAddr, port: u16) -> bool {
    probe::probe(
        lab.netns(from).expect("host exists"),
        ip,
        port,
        Protocol::Tcp,
    )
    .await
    .expect("probe runs")
}

/// Runs `f` on a lab of the standard model plus `manifests`, in `mode`.
fn with_lab(manifests: &str, mode: ProxyMode, f: impl AsyncFnOnce(&Lab)) {
    let cluster = standard_with(manifests);
    block_on(async {
        let lab = Lab::start(&cluster, &config(mode))
            .await
            .expect("lab starts");
        f(&lab).await;
        lab.shutdown().await;
    });
}

/// Under egress deny-all, neither a cluster IP (an address of the node with IPVS) nor the
/// own node's node port is a way out; a pod no policy isolates reaches both.
fn frontends_are_denied_under_egress_deny_all(mode: ProxyMode) {
    let manifests = format!("{}\n---\n{EGRESS_DENY_ALL_X}", web_service("Cluster"));
    with_lab(&manifests, mode, async |lab| {
        let vip = cluster_ip(lab.cluster());
        assert!(
            connects(lab, "y/b", vip, SERVICE_PORT).await,
            "{mode:?}: baseline, y/b reaches the cluster IP {vip}"
        );
        assert!(
            !connects(lab, "x/a", vip, SERVICE_PORT).await,
            "{mode:?}: x/a is egress-isolated, yet reached the cluster IP {vip}"
        );
        for node in node_port_addresses(lab) {
            assert!(
                connects(lab, "y/b", node, NODE_PORT).await,
                "{mode:?}: baseline, y/b reaches its node's node port {node}:{NODE_PORT}"
            );
            assert!(
                !connects(lab, "x/a", node, NODE_PORT).await,
                "{mode:?}: x/a is egress-isolated, yet reached its node's node port \
                 {node}:{NODE_PORT}"
            );
        }
    });
}

#[test]
fn frontends_are_denied_under_egress_deny_all_with_iptables() {
    frontends_are_denied_under_egress_deny_all(ProxyMode::Iptables);
}

#[test]
fn frontends_are_denied_under_egress_deny_all_with_nftables() {
    frontends_are_denied_under_egress_deny_all(ProxyMode::Nftables);
}

#[test]
fn frontends_are_denied_under_egress_deny_all_with_ipvs() {
    frontends_are_denied_under_egress_deny_all(ProxyMode::Ipvs);
}

/// From outside through the node port, `externalTrafficPolicy: Cluster` masquerades: the
/// connection reaches y/a from the node's address, which ingress isolation does not admit
/// as "the node". Admitting the external's address does not admit the masqueraded
/// connection either (its source is not the external's any more); admitting the node's
/// address does. With `Local`, the source is the external's, and decided as such.
#[test]
fn masqueraded_node_port_connections_are_decided_by_their_source() {
    for mode in [ProxyMode::Iptables, ProxyMode::Nftables] {
        with_lab(
            &format!("{}\n---\n{INGRESS_DENY_ALL_Y}", web_service("Cluster")),
            mode,
            async |lab| {
                let node = node_address(lab);
                assert!(
                    !connects(lab, EXTERNAL, node, NODE_PORT).await,
                    "{mode:?}: a masqueraded node port connection entered ingress-isolated y/a"
                );
            },
        );
        with_lab(
            &format!(
                "{}\n---\n{}",
                web_service("Cluster"),
                ingress_from_block_y(&format!("{EXTERNAL}/32"))
            ),
            mode,
            async |lab| {
                let node = node_address(lab);
                assert!(
                    connects(lab, EXTERNAL, y_a(lab), TARGET_PORT).await,
                    "{mode:?}: baseline, the external reaches y/a directly"
                );
                assert!(
                    !connects(lab, EXTERNAL, node, NODE_PORT).await,
                    "{mode:?}: masqueraded, the connection is not the external's any more"
                );
            },
        );
        with_lab(
            &format!(
                "{}\n---\n{}",
                web_service("Local"),
                ingress_from_block_y(&format!("{EXTERNAL}/32"))
            ),
            mode,
            async |lab| {
                let node = node_address(lab);
                assert!(
                    connects(lab, EXTERNAL, node, NODE_PORT).await,
                    "{mode:?}: externalTrafficPolicy Local keeps the external's address"
                );
                assert!(
                    !connects(lab, "x/a", y_a(lab), TARGET_PORT).await,
                    "{mode:?}: y/a admits only the external"
                );
            },
        );
    }
}

/// Admitting the node's address admits what the node masquerades (as Calico does).
#[test]
fn admitting_the_node_address_admits_masqueraded_node_port_connections() {
    // The address y/a's node masquerades with: the gateway of y/a's subnet, on its veth
    // (the lab gives a subnet the highest address no host has).
    let gateway = "10.100.0.254";
    with_lab(
        &format!(
            "{}\n---\n{}",
            web_service("Cluster"),
            ingress_from_block_y(&format!("{gateway}/32"))
        ),
        ProxyMode::Iptables,
        async |lab| {
            assert_eq!(node_address(lab).to_string(), gateway, "the node's address");
            assert!(
                connects(lab, EXTERNAL, node_address(lab), NODE_PORT).await,
                "masqueraded from the node's address, which the policy admits"
            );
            assert!(
                !connects(lab, EXTERNAL, y_a(lab), TARGET_PORT).await,
                "directly, the external itself is not admitted"
            );
        },
    );
}

/// y/a's IPv4 address.
fn y_a(lab: &Lab) -> IpAddr {
    lab.host("y/a")
        .expect("y/a exists")
        .spec
        .ip(Family::IPv4)
        .expect("y/a has IPv4")
}

/// The host port of y/h, which the `portmap` plugin publishes on its node.
const HOST_PORT: u16 = 30180;

/// Pod y/h, serving port 80 on host port [`HOST_PORT`], in a subnet of its own (`portmap`
/// masquerades clients of the pod's own subnet; these are not).
const HOST_PORT_POD: &str = r#"
kind: Pod
metadata: {name: h, namespace: y, labels: {app: h}}
spec: {containers: [{name: c, ports: [{containerPort: 80, hostPort: 30180}]}]}
status: {podIPs: [{ip: 10.100.1.5}]}
"#;

/// A pod's host port (the `portmap` plugin's DNAT on its node) is a frontend like any
/// other: no way out for an egress-isolated pod (the node's address is not "the node"
/// there), and no way in past the pod's ingress isolation, from a pod or from outside.
#[test]
fn host_ports_are_no_way_past_policy() {
    let node = |lab: &Lab| -> IpAddr {
        let node = lab.cluster().nodes.values().next().expect("one node");
        node.addresses
            .iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .expect("the node has an IPv4 address")
    };
    let manifests = format!("{HOST_PORT_POD}\n---\n{EGRESS_DENY_ALL_X}");
    with_lab(&manifests, ProxyMode::Iptables, async |lab| {
        let node = node(lab);
        for from in ["y/b", EXTERNAL] {
            assert!(
                connects(lab, from, node, HOST_PORT).await,
                "baseline: {from} reaches y/h through {node}:{HOST_PORT}"
            );
        }
        assert!(
            !connects(lab, "x/a", node, HOST_PORT).await,
            "x/a is egress-isolated, yet reached y/h through {node}:{HOST_PORT}"
        );
    });
    let manifests = format!("{HOST_PORT_POD}\n---\n{INGRESS_DENY_ALL_Y}");
    with_lab(&manifests, ProxyMode::Iptables, async |lab| {
        let node = node(lab);
        for from in ["x/a", EXTERNAL] {
            assert!(
                !connects(lab, from, node, HOST_PORT).await,
                "y/h is ingress-isolated, yet {from} reached it through {node}:{HOST_PORT}"
            );
        }
    });
}
