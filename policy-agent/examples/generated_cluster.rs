//! Writes a generated cluster (`policy_agent::generate`) as a manifest directory, for
//! timing the CLI (`explain`, `matrix`) on the cluster the control-plane bench compiles:
//!
//! ```text
//! cargo run --release -p policy-agent --example generated_cluster -- DIR [--unique-labels]
//!     [--pods N] [--policies N] [--namespaces N]
//! ```
//!
//! Each workload (the pods sharing an `app` label) is given a controller as a cluster
//! would: most are Deployments (pods owned by ReplicaSet `<app>-<hash>`, carrying the
//! `pod-template-hash` label), every fifth a StatefulSet.

use std::{
    fs,
    io::{BufWriter, Write as _},
    path::PathBuf,
};

use anyhow::Context as _;
use policy_agent::{
    generate::{self, Shape},
    model::{Cluster, Pod},
};
use serde_json::{Value, json};

/// The default shape: the control-plane bench's.
const PODS: usize = 10_000;
const POLICIES: usize = 2_000;
const NAMESPACES: usize = 100;
const NODES: usize = 100;
/// Every this many workloads one is a StatefulSet rather than a Deployment.
const STATEFUL_EVERY: usize = 5;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: generated_cluster DIR [options]")?,
    );
    let mut shape = Shape {
        pods: PODS,
        policies: POLICIES,
        namespaces: NAMESPACES,
        nodes: NODES,
        unique_labels: false,
        big_policy_peers: None,
    };
    while let Some(flag) = args.next() {
        let mut number = || -> anyhow::Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{flag} needs a number"))?;
            v.parse().with_context(|| format!("{flag} {v}"))
        };
        match flag.as_str() {
            "--unique-labels" => shape.unique_labels = true,
            "--pods" => shape.pods = number()?,
            "--policies" => shape.policies = number()?,
            "--namespaces" => shape.namespaces = number()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cluster = generate::cluster(&shape);
    write(&dir, "namespaces.yaml", namespaces(&cluster))?;
    write(&dir, "pods.yaml", cluster.pods.values().map(pod))?;
    write(&dir, "policies.yaml", policies(&cluster))?;
    Ok(())
}

/// Writes `documents` as one YAML stream.
fn write(
    dir: &std::path::Path,
    file: &str,
    documents: impl Iterator<Item = Value>,
) -> anyhow::Result<()> {
    let path = dir.join(file);
    let mut out = BufWriter::new(fs::File::create(&path)?);
    for doc in documents {
        writeln!(out, "---")?;
        out.write_all(serde_saphyr::to_string(&doc)?.as_bytes())?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn namespaces(cluster: &Cluster) -> impl Iterator<Item = Value> + '_ {
    cluster.namespaces.values().map(|ns| {
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns.name, "labels": ns.labels},
        })
    })
}

fn pod(pod: &Pod) -> Value {
    let app = pod.labels.get("app").cloned().unwrap_or_default();
    let index: usize = app
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    let mut labels = pod.labels.clone();
    let owner = if index % STATEFUL_EVERY == STATEFUL_EVERY - 1 {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": app, "uid": format!("uid-{app}"), "controller": true})
    } else {
        let hash = format!("{:x}", 0x5d00_0000 + index);
        labels.insert("pod-template-hash".to_owned(), hash.clone());
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"), "uid": format!("uid-{app}-rs"), "controller": true})
    };
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.to_string()}))
        .collect();
    let ips: Vec<Value> = pod
        .ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.id.name,
            "namespace": pod.id.namespace,
            "labels": labels,
            "uid": pod.uid,
            "ownerReferences": [owner],
        },
        "spec": {
            "nodeName": pod.node,
            "containers": [{"name": "main", "image": "registry.example/app:1", "ports": ports}],
        },
        "status": {"phase": "Running", "podIP": pod.ips.first().map(ToString::to_string), "podIPs": ips},
    })
}

fn policies(cluster: &Cluster) -> impl Iterator<Item = Value> + '_ {
    cluster.policies.values().map(|p| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": p.id.name, "namespace": p.id.namespace},
            "spec": p.spec,
        })
    })
}
