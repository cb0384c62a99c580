//! The manifests under deploy/, parsed into their Kubernetes types: the agent gets only
//! the access and the privileges it needs, on every node, with arguments the binary accepts.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use policy_agent::{agent::api, datapath::bpffs};
use serde::{Deserialize, de::DeserializeOwned};

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Parses `deploy/<file>` as `T`; a wrong kind, apiVersion or field type fails here.
fn parse<T: DeserializeOwned>(file: &str) -> T {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct Kustomization {
    namespace: String,
    resources: Vec<String>,
    images: Vec<KustomizeImage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_tag: String,
}

struct Manifests {
    kustomization: Kustomization,
    service_account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    daemonset: DaemonSet,
}

fn manifests() -> Manifests {
    Manifests {
        kustomization: parse("kustomization.yaml"),
        service_account: parse("serviceaccount.yaml"),
        role: parse("clusterrole.yaml"),
        binding: parse("clusterrolebinding.yaml"),
        daemonset: parse("daemonset.yaml"),
    }
}

/// Asserts that the binary accepts `args` (clap rejects unknown ones before printing help).
fn assert_accepted(args: &[String]) {
    let out = Command::new(AGENT)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.template.spec.as_ref().unwrap();
    pod.containers.iter().find(|c| c.name == "agent").unwrap()
}

#[test]
fn kustomization_lists_every_manifest() {
    let m = manifests();
    let listed: BTreeSet<String> = m.kustomization.resources.iter().cloned().collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    assert_eq!(m.kustomization.namespace, "kube-system");
    assert_eq!(
        m.service_account.metadata.namespace.as_deref(),
        Some("kube-system")
    );
}

#[test]
fn rbac_reads_what_decides_policy_and_writes_only_events() {
    let m = manifests();
    let mut granted = BTreeSet::new();
    for rule in m.role.rules.as_deref().unwrap_or_default() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        let events = rule.api_groups.as_deref() == Some(&["events.k8s.io".to_owned()])
            && rule.resources.as_deref() == Some(&["events".to_owned()]);
        // Events on rejected objects: created, and patched as a series continues.
        let expected = if events {
            BTreeSet::from(["create", "patch"])
        } else {
            BTreeSet::from(["get", "list", "watch"])
        };
        assert_eq!(verbs, expected, "{rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                granted.insert(format!("{group}/{resource}"));
            }
        }
    }
    assert_eq!(
        granted,
        BTreeSet::from([
            "/pods".to_owned(),
            "/namespaces".to_owned(),
            "/services".to_owned(),
            "/nodes".to_owned(),
            "networking.k8s.io/networkpolicies".to_owned(),
            "discovery.k8s.io/endpointslices".to_owned(),
            "events.k8s.io/events".to_owned(),
        ])
    );

    // The binding gives exactly that role to the DaemonSet's service account.
    assert_eq!(m.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&m.binding.role_ref.name),
        m.role.metadata.name.as_ref()
    );
    let subjects = m.binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        m.service_account.metadata.name.as_ref()
    );
    assert_eq!(subjects[0].namespace, m.service_account.metadata.namespace);
    let pod = m.daemonset.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, m.service_account.metadata.name);
}

#[test]
fn daemonset_runs_on_every_node_with_only_the_capabilities_it_needs() {
    let m = manifests();
    let pod = m.daemonset.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true), "attaches to the host's veths");
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint: {tolerations:?}"
    );

    let agent = agent_container(&m.daemonset);
    let security = agent.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));

    let requests = agent.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
}

#[test]
fn daemonset_mounts_bpffs_and_the_socket_directory_from_the_host() {
    let m = manifests();
    let pod = m.daemonset.spec.template.spec.as_ref().unwrap();
    let host_path = |volume: &str| {
        let v = pod.volumes.iter().flatten().find(|v| v.name == volume);
        v.and_then(|v| Some(v.host_path.as_ref()?.path.clone()))
    };
    let agent = agent_container(&m.daemonset);
    let mounts: Vec<(String, Option<String>)> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| (mount.mount_path.clone(), host_path(&mount.name)))
        .collect();
    let socket_dir = api::default_socket("agent").parent().unwrap().to_owned();
    for path in [bpffs::BPFFS, socket_dir.to_str().unwrap()] {
        assert!(
            mounts.contains(&(path.to_owned(), Some(path.to_owned()))),
            "{path} from the host: {mounts:?}"
        );
    }
    // Pins stay on the host when the container goes: the restarted agent adopts them.
    let bpffs_mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == bpffs::BPFFS)
        .unwrap();
    assert_eq!(
        bpffs_mount.mount_propagation.as_deref(),
        Some("HostToContainer")
    );
}

#[test]
fn daemonset_image_args_and_probes_match_the_binary() {
    let m = manifests();
    let agent = agent_container(&m.daemonset);
    let image = &m.kustomization.images[0];
    assert_eq!(image.new_tag, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        agent.image.as_deref(),
        Some(format!("{}:{}", image.name, image.new_tag).as_str())
    );

    let args = agent.args.as_deref().unwrap();
    assert_eq!(args[0], "run");
    assert_accepted(args);
    // The map sizes it shows, commented out, are the binary's defaults, and accepted.
    let text = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    let sizes: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# - --map-size="))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let defaults = policy_agent::capacity::MapSizes::default().to_string();
    assert_eq!(sizes.join(" "), defaults);
    let mut with_sizes = args.to_vec();
    with_sizes.extend(sizes.iter().map(|s| format!("--map-size={s}")));
    assert_accepted(&with_sizes);

    // The probes ask the metrics server the arguments configure.
    let metrics = args
        .iter()
        .position(|a| a == "--metrics-address")
        .map(|i| args[i + 1].parse::<std::net::SocketAddr>().unwrap())
        .unwrap();
    for (probe, path) in [
        (&agent.readiness_probe, "/readyz"),
        (&agent.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(metrics.port().into())
        );
    }

    // The image's entrypoint is the binary it copies in, with the CNI plugin beside it.
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    assert!(containerfile.contains("COPY target/release/policy-agent /usr/local/bin/policy-agent"));
    assert!(
        containerfile
            .contains("COPY target/release/policy-agent-cni /usr/local/bin/policy-agent-cni")
    );
    assert!(containerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/policy-agent"]"#));
}

#[test]
fn an_init_container_chains_the_cni_plugin_for_the_agent_s_socket() {
    let m = manifests();
    let pod = m.daemonset.spec.template.spec.as_ref().unwrap();
    let install = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "install-cni")
        .expect("an install-cni init container");
    let args = install.args.as_deref().unwrap();
    assert_eq!(args[..2], ["cni", "install"]);
    assert_accepted(args);
    let value = |args: &[String], flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    // The plugin talks to the socket the agent serves.
    assert_eq!(
        value(args, "--socket").as_deref(),
        api::default_socket("agent").to_str()
    );
    // The node's CNI directories, from the host.
    let host_path = |volume: &str| {
        let v = pod.volumes.iter().flatten().find(|v| v.name == volume)?;
        Some(v.host_path.as_ref()?.path.clone())
    };
    let mounted = |c: &Container, path: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .and_then(|m| host_path(&m.name))
    };
    let conf_dir = value(args, "--conf-dir").unwrap();
    let bin_dir = value(args, "--bin-dir").unwrap();
    assert_eq!(
        mounted(install, &conf_dir).as_deref(),
        Some("/etc/cni/net.d")
    );
    assert_eq!(mounted(install, &bin_dir).as_deref(), Some("/opt/cni/bin"));
    // Fail-closed unless the operator says otherwise, in one place.
    let fail_open = install
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POLICY_AGENT_CNI_FAIL_OPEN")
        .and_then(|e| e.value.clone());
    assert_eq!(fail_open.as_deref(), Some("false"));
    // The agent reads the same directory to report the plugin's mode in `status`.
    let agent = agent_container(&m.daemonset);
    let agent_args = agent.args.as_deref().unwrap();
    assert_eq!(value(agent_args, "--cni-conf-dir"), Some(conf_dir.clone()));
    assert_eq!(mounted(agent, &conf_dir).as_deref(), Some("/etc/cni/net.d"));
}
