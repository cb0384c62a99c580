//! A directory of manifests as the cluster model: YAML or JSON files, several documents per
//! file, `kind: List` as `kubectl get -o yaml` prints it. Namespaces, Pods, NetworkPolicies,
//! Services, EndpointSlices and Nodes are read; other kinds are skipped with a note. A
//! Service without a cluster IP gets one, and a Service with a selector and no
//! EndpointSlice the slices, as the control plane would ([`super::control_plane`]).
//!
//! One bad object never spoils the others: each error names the file, the object and the
//! field, and the rest still loads.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use k8s_openapi::api::{
    core::v1::{Namespace as ApiNamespace, Node as ApiNode, Pod as ApiPod, Service as ApiService},
    discovery::v1::EndpointSlice as ApiEndpointSlice,
    networking::v1::NetworkPolicy as ApiNetworkPolicy,
};
use serde_json::Value;

use super::convert::{self, typed};
use crate::{
    model::{Cluster, Origin},
    report::escape,
};

/// Documents one file may hold. Manifests are the administrator's own, as for
/// `kubectl apply -f`; the YAML parser's defaults (1,024 documents, 250,000 nodes) are
/// below a generated policy set or a `kubectl get -A -o yaml` export of a large cluster.
/// Alias expansion keeps the parser's default caps.
const MAX_DOCUMENTS: usize = 1_000_000;
/// Collections and scalars one file may hold.
const MAX_NODES: usize = 50_000_000;
/// Parser events one file may produce (about two per node).
const MAX_EVENTS: usize = 2 * MAX_NODES;

/// An object (or document) that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// File it is in.
    pub file: PathBuf,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// Path of the offending field, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The file's name and the object's are the administrator's, and may hold anything.
        write!(f, "{}", escape(&self.file.display().to_string()))?;
        if let Some(object) = &self.object {
            write!(f, ": {}", escape(object))?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {}", escape(field))?;
        }
        write!(f, ": {}", escape(&self.message))
    }
}

impl std::error::Error for ManifestError {}

/// A loaded directory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Everything that was read.
    pub cluster: Cluster,
    /// Objects that were not.
    pub errors: Vec<ManifestError>,
    /// Objects of kinds the enforcer does not use.
    pub skipped: Vec<String>,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file of `dir` (not recursively, in name order).
pub fn load_dir(dir: &Path) -> anyhow::Result<Loaded> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading manifest directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    let mut loaded = Loaded::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_str(&text, &file, &mut loaded),
            Err(e) => loaded.errors.push(ManifestError {
                file,
                object: None,
                field: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    super::control_plane::complete(&mut loaded.cluster);
    Ok(loaded)
}

/// Adds the objects of one file's text to `loaded`.
pub fn load_str(text: &str, file: &Path, loaded: &mut Loaded) {
    // Only true/false are booleans (YAML 1.2): `namespace: y` names a namespace, as
    // kubectl reads it, rather than being YAML 1.1's "yes".
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = MAX_NODES;
    budget.max_events = MAX_EVENTS;
    options.budget = Some(budget);
    let docs: Vec<Value> = match serde_saphyr::from_multiple_with_options(text, options) {
        Ok(docs) => docs,
        Err(e) => {
            loaded.errors.push(ManifestError {
                file: file.to_owned(),
                object: None,
                field: None,
                message: format!("not valid YAML: {e}"),
            });
            return;
        }
    };
    for doc in docs {
        load_value(doc, file, loaded);
    }
}

fn load_value(doc: Value, file: &Path, loaded: &mut Loaded) {
    if doc.is_null() {
        return;
    }
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let label = object_label(&kind, &doc);
    let error = |field: Option<String>, message: String| ManifestError {
        file: file.to_owned(),
        object: Some(label.clone()),
        field,
        message,
    };
    let result = match kind.as_str() {
        "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" | "ServiceList"
        | "EndpointSliceList" | "NodeList" => {
            if let Some(Value::Array(items)) = doc.get("items") {
                for item in items.clone() {
                    load_value(item, file, loaded);
                }
            }
            return;
        }
        "Namespace" => typed::<ApiNamespace>(doc)
            .and_then(convert::namespace)
            .map(|ns| loaded.cluster.add_namespace(ns)),
        "Pod" => typed::<ApiPod>(doc)
            .and_then(convert::pod)
            .map(|pod| loaded.cluster.add_pod(pod)),
        "NetworkPolicy" => typed::<ApiNetworkPolicy>(doc)
            .and_then(|np| {
                let origin = Origin {
                    file: Some(file.to_owned()),
                };
                convert::policy(np, origin)
            })
            .map(|policy| loaded.cluster.add_policy(policy)),
        "Service" => typed::<ApiService>(doc)
            .and_then(convert::service)
            .map(|svc| loaded.cluster.add_service(svc)),
        "EndpointSlice" => typed::<ApiEndpointSlice>(doc)
            .and_then(convert::endpoint_slice)
            .map(|slice| loaded.cluster.add_endpoint_slice(slice)),
        "Node" => typed::<ApiNode>(doc)
            .and_then(convert::node)
            .map(|node| loaded.cluster.add_node(node)),
        "" => Err((None, "document has no kind".to_owned())),
        _ => {
            loaded.skipped.push(format!("{}: {label}", file.display()));
            return;
        }
    };
    if let Err((field, message)) = result {
        loaded.errors.push(error(field, message));
    }
}

fn object_label(kind: &str, doc: &Value) -> String {
    let meta = doc.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => format!("{kind} (unnamed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectRef, Protocol};

    const FILE: &str = "test.yaml";

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_str(text, Path::new(FILE), &mut loaded);
        loaded
    }

    #[test]
    fn a_file_may_hold_thousands_of_documents() {
        let text: String = (0..5_000)
            .map(|i| format!("---\nkind: Namespace\nmetadata: {{name: ns-{i}}}\n"))
            .collect();
        let loaded = load(&text);
        assert_eq!(loaded.errors, []);
        assert_eq!(loaded.cluster.namespaces.len(), 5_000);
    }

    #[test]
    fn reads_documents_and_lists() {
        let loaded = load(
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {app: a}}
  spec:
    nodeName: n1
    containers:
    - name: c
      ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]
  status:
    podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny}
  spec: {podSelector: {}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: s}
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let c = &loaded.cluster;
        assert_eq!(c.namespaces["x"].labels["team"], "a");
        assert_eq!(c.namespaces["x"].labels["kubernetes.io/metadata.name"], "x");
        let pod = &c.pods[&ObjectRef::new("x", "a")];
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(pod.named_port("http", Protocol::Tcp), Some(80));
        assert_eq!(pod.ports[1].protocol, Protocol::Udp);
        assert!(c.policies.contains_key(&ObjectRef::new("default", "deny")));
        assert!(c.namespaces.contains_key("default"), "implied namespace");
        assert_eq!(loaded.skipped.len(), 1);
    }

    #[test]
    fn a_bad_object_names_file_object_and_field_and_spares_the_rest() {
        let loaded = load(
            r#"
kind: Pod
metadata: {name: bad, namespace: x}
status: {podIP: "10.0.0.300"}
---
kind: NetworkPolicy
metadata: {name: typo, namespace: x}
spec: {ingress: [{ports: [{port: {}}]}]}
---
kind: Pod
metadata: {name: good, namespace: x}
status: {podIP: 10.0.0.2}
"#,
        );
        assert_eq!(loaded.errors.len(), 2, "{:?}", loaded.errors);
        let pod_err = loaded.errors[0].to_string();
        assert!(
            pod_err.contains("test.yaml: Pod x/bad: status.podIP: invalid IP address"),
            "{pod_err}"
        );
        let np_err = loaded.errors[1].to_string();
        assert!(
            np_err.contains("NetworkPolicy x/typo: spec.ingress[0].ports[0].port"),
            "{np_err}"
        );
        assert!(
            loaded
                .cluster
                .pods
                .contains_key(&ObjectRef::new("x", "good"))
        );
    }
}
