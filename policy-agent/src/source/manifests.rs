//! A directory of manifests as the cluster model: YAML or JSON files, several documents per
//! file, `kind: List` as `kubectl get -o yaml` prints it. Namespaces, Pods, NetworkPolicies,
//! Services, EndpointSlices and Nodes are read; other kinds are skipped with a note. A
//! Service without a cluster IP gets one, and a Service with a selector and no
//! EndpointSlice the slices, as the control plane would ([`super::control_plane`]).
//!
//! One bad object never spoils the others: each error names the file, the object and the
//! field, and the rest still loads.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use k8s_openapi::{
    api::{
        core::v1::{
            Namespace as ApiNamespace, Node as ApiNode, Pod as ApiPod, Service as ApiService,
        },
        discovery::v1::EndpointSlice as ApiEndpointSlice,
        networking::v1::NetworkPolicySpec,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use serde_json::Value;

use super::{
    Kind, Object,
    convert::{self, typed},
};
use crate::{
    model::{Cluster, ObjectRef, Origin, Policy, PolicyMeta},
    report::escape,
    semantics::ParsedPolicy,
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
    /// Objects that were not (and, with a [`LastGood`], what stays in force instead).
    pub errors: Vec<ManifestError>,
    /// Objects of kinds the enforcer does not use.
    pub skipped: Vec<String>,
}

/// What the last load of a directory held: the last good version of every object, and
/// which objects each file gave. A reload keeps what a bad edit would otherwise lose (an
/// editor saving in place, a half-written file): an object that fails to read keeps its
/// last good version, and a file with a document that is not YAML keeps the objects it had.
#[derive(Debug, Default)]
pub struct LastGood {
    objects: BTreeMap<(Kind, ObjectRef), Object>,
    files: BTreeMap<PathBuf, Vec<(Kind, ObjectRef)>>,
}

/// What one document (or `List` item) gave.
enum Decoded {
    /// An object.
    Object(Object),
    /// An object that could not be read, with what it is when that much could be.
    Failed {
        key: Option<(Kind, ObjectRef)>,
        error: ManifestError,
        doc: Value,
    },
    /// A kind the enforcer does not use.
    Skipped(String),
}

/// What one file gave.
#[derive(Default)]
struct FileRead {
    decoded: Vec<Decoded>,
    /// A document (or the file) could not be read at all: which objects it held is unknown.
    unreadable: bool,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file of `dir` (not recursively, in name order).
pub fn load_dir(dir: &Path) -> anyhow::Result<Loaded> {
    load_dir_with(dir, &mut LastGood::default())
}

/// As [`load_dir`], keeping in force, from `last`, the last good version of what fails to
/// read now (see [`LastGood`]); `last` then holds this load.
pub fn load_dir_with(dir: &Path, last: &mut LastGood) -> anyhow::Result<Loaded> {
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
    let mut now = LastGood::default();
    for file in files {
        let read = match std::fs::read_to_string(&file) {
            Ok(text) => read_str(&text, &file, &mut loaded.errors),
            Err(e) => {
                loaded.errors.push(ManifestError {
                    file: file.clone(),
                    object: None,
                    field: None,
                    message: format!("cannot read: {e}"),
                });
                FileRead {
                    unreadable: true,
                    ..FileRead::default()
                }
            }
        };
        let keys = settle(read, &file, last, &mut now, &mut loaded);
        now.files.insert(file, keys);
    }
    for object in now.objects.values() {
        loaded.cluster.apply(object.clone());
    }
    *last = now;
    super::control_plane::complete(&mut loaded.cluster);
    Ok(loaded)
}

/// Puts what one file gave into `now`, with, from `last`, the last good version of each
/// object that failed and, if the file could not be read whole, the objects it had;
/// returns the objects the file now accounts for.
fn settle(
    read: FileRead,
    file: &Path,
    last: &LastGood,
    now: &mut LastGood,
    loaded: &mut Loaded,
) -> Vec<(Kind, ObjectRef)> {
    let mut keys = Vec::new();
    for decoded in read.decoded {
        match decoded {
            Decoded::Object(object) => {
                let key = object.key();
                let object = match (invalid_policy(&object), last.objects.get(&key)) {
                    // Read, but rejected by validation: the last good version stays (with
                    // none, the compiler enforces it fail-closed and reports it).
                    (Some(error), Some(good)) => {
                        loaded.errors.push(ManifestError {
                            file: file.to_owned(),
                            object: Some(format!("NetworkPolicy {}", key.1)),
                            field: None,
                            message: format!("{error} (its last good version stays in force)"),
                        });
                        good.clone()
                    }
                    _ => object,
                };
                now.objects.insert(key.clone(), object);
                keys.push(key);
            }
            Decoded::Skipped(label) => loaded.skipped.push(label),
            Decoded::Failed { key, error, doc } => {
                let Some(key) = key else {
                    loaded.errors.push(error);
                    continue;
                };
                let (kept, what) = match last.objects.get(&key) {
                    Some(good) => (Some(good.clone()), "its last good version stays in force"),
                    None if key.0 == Kind::Policy => (
                        Some(Object::Policy(fail_closed_policy(&doc, &key.1, file))),
                        "enforced fail-closed: it isolates the pods it selects and allows nothing",
                    ),
                    None => (None, "left out"),
                };
                loaded.errors.push(ManifestError {
                    message: format!("{} ({what})", error.message),
                    ..error
                });
                if let Some(kept) = kept {
                    now.objects.insert(key.clone(), kept);
                }
                keys.push(key);
            }
        }
    }
    if read.unreadable {
        for key in last.files.get(file).into_iter().flatten() {
            if let (false, Some(good)) = (now.objects.contains_key(key), last.objects.get(key)) {
                now.objects.insert(key.clone(), good.clone());
                keys.push(key.clone());
            }
        }
    }
    keys
}

/// Why `object` is a policy that fails validation, if it is one.
fn invalid_policy(object: &Object) -> Option<String> {
    match object {
        Object::Policy(policy) => ParsedPolicy::parse(policy).err().map(|e| {
            e.errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }),
        _ => None,
    }
}

/// A policy that could not be read and never was: what it selects (every pod of its
/// namespace if that cannot be read) isolated in the directions it names (both if they
/// cannot be read), with no rule.
fn fail_closed_policy(doc: &Value, id: &ObjectRef, file: &Path) -> Policy {
    let spec = doc.get("spec");
    let field = |name: &str| spec.and_then(|s| s.get(name)).cloned();
    let pod_selector = field("podSelector")
        .and_then(|v| serde_json::from_value::<LabelSelector>(v).ok())
        .unwrap_or_default();
    let named: Option<Vec<String>> = field("policyTypes").map(|v| {
        serde_json::from_value::<Vec<String>>(v)
            .ok()
            .filter(|t| t.iter().all(|t| t == "Ingress" || t == "Egress"))
            .unwrap_or_default()
    });
    let has_egress = field("egress").is_some_and(|e| e.as_array().is_none_or(|a| !a.is_empty()));
    let policy_types = match named {
        Some(types) if !types.is_empty() => types,
        Some(_) => vec!["Ingress".to_owned(), "Egress".to_owned()],
        None if has_egress => vec!["Ingress".to_owned(), "Egress".to_owned()],
        None => vec!["Ingress".to_owned()],
    };
    Policy {
        id: id.clone(),
        spec: NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(policy_types),
            ingress: None,
            egress: None,
        },
        meta: PolicyMeta::default(),
        origin: Origin {
            file: Some(file.to_owned()),
        },
    }
}

/// Adds the objects of one file's text to `loaded` (no last good versions).
pub fn load_str(text: &str, file: &Path, loaded: &mut Loaded) {
    let read = read_str(text, file, &mut loaded.errors);
    let mut now = LastGood::default();
    settle(read, file, &LastGood::default(), &mut now, loaded);
    for object in now.objects.into_values() {
        loaded.cluster.apply(object);
    }
}

/// The documents of a YAML stream, each with the number of its first line: split at the
/// `---` and `...` markers (which start a line; inside a document no line can), so that a
/// syntax error spoils one document, not the file.
fn documents(text: &str) -> Vec<(usize, String)> {
    let marker = |line: &str| {
        ["---", "..."].iter().any(|m| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']))
        })
    };
    let mut out = Vec::new();
    let mut current = String::new();
    let mut first = 1;
    for (i, line) in text.lines().enumerate() {
        if marker(line) {
            if !current.trim().is_empty() {
                out.push((first, std::mem::take(&mut current)));
            }
            current.clear();
            // A document may begin on the marker's line (`--- {kind: Pod}`).
            let rest = &line[3..];
            current.push_str(rest.trim_start());
            current.push('\n');
            first = i + 1;
        } else {
            if current.is_empty() {
                first = i + 1;
            }
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push((first, current));
    }
    out
}

/// Decodes every document of one file's text.
fn read_str(text: &str, file: &Path, errors: &mut Vec<ManifestError>) -> FileRead {
    // Only true/false are booleans (YAML 1.2): `namespace: y` names a namespace, as
    // kubectl reads it, rather than being YAML 1.1's "yes".
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = MAX_NODES;
    budget.max_events = MAX_EVENTS;
    options.budget = Some(budget);
    let mut read = FileRead::default();
    let docs = documents(text);
    if docs.len() > MAX_DOCUMENTS {
        errors.push(ManifestError {
            file: file.to_owned(),
            object: None,
            field: None,
            message: format!("more than {MAX_DOCUMENTS} documents"),
        });
        read.unreadable = true;
        return read;
    }
    for (line, doc) in docs {
        match serde_saphyr::from_str_with_options::<Value>(&doc, options.clone()) {
            Ok(value) => decode(value, file, &mut read.decoded),
            Err(e) => {
                errors.push(ManifestError {
                    file: file.to_owned(),
                    object: None,
                    field: None,
                    message: format!(
                        "the document from line {line} is not valid YAML (the objects this \
                         file had stay in force): {e}"
                    ),
                });
                read.unreadable = true;
            }
        }
    }
    read
}

/// Decodes one document (a `List`: each item) into `out`.
fn decode(doc: Value, file: &Path, out: &mut Vec<Decoded>) {
    if doc.is_null() {
        return;
    }
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let label = object_label(&kind, &doc);
    let result = match kind.as_str() {
        "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" | "ServiceList"
        | "EndpointSliceList" | "NodeList" => {
            if let Some(Value::Array(items)) = doc.get("items") {
                for item in items.clone() {
                    decode(item, file, out);
                }
            }
            return;
        }
        "Namespace" => typed::<ApiNamespace>(doc.clone())
            .and_then(convert::namespace)
            .map(Object::Namespace),
        "Pod" => typed::<ApiPod>(doc.clone())
            .and_then(convert::pod)
            .map(Object::Pod),
        "NetworkPolicy" => convert::network_policy_strict(doc.clone())
            .and_then(|np| {
                let origin = Origin {
                    file: Some(file.to_owned()),
                };
                convert::policy(np, origin)
            })
            .map(Object::Policy),
        "Service" => typed::<ApiService>(doc.clone())
            .and_then(convert::service)
            .map(Object::Service),
        "EndpointSlice" => typed::<ApiEndpointSlice>(doc.clone())
            .and_then(convert::endpoint_slice)
            .map(Object::EndpointSlice),
        "Node" => typed::<ApiNode>(doc.clone())
            .and_then(convert::node)
            .map(Object::Node),
        "" => Err((None, "document has no kind".to_owned())),
        _ => {
            out.push(Decoded::Skipped(format!("{}: {label}", file.display())));
            return;
        }
    };
    out.push(match result {
        Ok(object) => Decoded::Object(object),
        Err((field, message)) => Decoded::Failed {
            key: key_of(&kind, &doc),
            error: ManifestError {
                file: file.to_owned(),
                object: Some(label),
                field,
                message,
            },
            doc,
        },
    });
}

/// The kind and name of a document, when it has them.
fn key_of(kind: &str, doc: &Value) -> Option<(Kind, ObjectRef)> {
    let kind = match kind {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        "NetworkPolicy" => Kind::Policy,
        "Service" => Kind::Service,
        "EndpointSlice" => Kind::EndpointSlice,
        "Node" => Kind::Node,
        _ => return None,
    };
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let namespace = if kind.namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or(convert::DEFAULT_NAMESPACE)
    } else {
        ""
    };
    Some((kind, ObjectRef::new(namespace, name)))
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

    #[test]
    fn a_syntax_error_spoils_one_document_not_the_file() {
        let loaded = load(
            "kind: Namespace\nmetadata: {name: x}\n---\nkind: Pod\nmetadata: {name: [broken\n---\nkind: Namespace\nmetadata: {name: y}\n",
        );
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(
            loaded.errors[0].message.contains("from line 3"),
            "{}",
            loaded.errors[0]
        );
        assert!(loaded.cluster.namespaces.contains_key("x"));
        assert!(loaded.cluster.namespaces.contains_key("y"));
    }

    #[test]
    fn misspelt_policy_fields_are_errors_that_say_what_was_meant() {
        for (typo, meant) in [
            ("{podSelector: {}, ingres: []}", "ingress"),
            ("{podSelector: {}, policyType: [Ingress]}", "policyTypes"),
            ("{podSelectr: {matchLabels: {app: a}}}", "podSelector"),
            ("{podSelector: {matchLabel: {app: a}}}", "matchLabels"),
            ("{podSelector: {}, ingress: [{form: []}]}", "from"),
        ] {
            let loaded = load(&format!(
                "kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {typo}\n"
            ));
            let error = loaded
                .errors
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                error.contains(&format!("did you mean {meant:?}")),
                "{typo}: {error}"
            );
            // Never read before: it isolates what it may select, and allows nothing.
            let policy = &loaded.cluster.policies[&ObjectRef::new("x", "p")];
            assert_eq!(policy.spec.ingress, None, "{typo}");
            assert_eq!(policy.spec.egress, None, "{typo}");
        }
    }

    /// A directory rewritten badly keeps what it said last: an object that fails keeps its
    /// last good version, a file with a document that is not YAML its objects.
    #[test]
    fn bad_edits_keep_the_last_good_version() {
        let dir = std::env::temp_dir().join(format!("manifests-lkg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policies.yaml");
        let good = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {}}]}]}\n---\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec: {podSelector: {}}\n";
        let mut last = LastGood::default();
        let load = |text: &str, last: &mut LastGood| {
            std::fs::write(&file, text).unwrap();
            load_dir_with(&dir, last).unwrap()
        };
        let first = load(good, &mut last);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        let p = ObjectRef::new("x", "p");
        let q = ObjectRef::new("x", "q");
        let was = first.cluster.policies[&p].spec.clone();

        // Half-saved: the second document is cut off mid-way.
        let cut = &good[..good.len() - 20];
        let half = load(cut, &mut last);
        assert_eq!(half.cluster.policies[&p].spec, was);
        assert!(half.cluster.policies.contains_key(&q), "q stays in force");

        // A typo in p: its last good version stays.
        let typo = good.replace("from:", "form:");
        let typoed = load(&typo, &mut last);
        assert_eq!(typoed.cluster.policies[&p].spec, was);
        assert!(
            typoed.errors[0]
                .message
                .contains("last good version stays in force"),
            "{:?}",
            typoed.errors
        );

        // An invalid CIDR in p (read, but rejected by validation): its last good version
        // stays.
        let invalid = good.replace("podSelector: {}}]}", "ipBlock: {cidr: 10.0.0.0/33}}]}");
        assert_ne!(invalid, good);
        let rejected = load(&invalid, &mut last);
        assert_eq!(rejected.cluster.policies[&p].spec, was);
        assert!(
            rejected.errors[0]
                .message
                .contains("last good version stays in force"),
            "{:?}",
            rejected.errors
        );

        // Deleting q on purpose (the file reads whole) deletes it.
        let only_p = good.split("---").next().unwrap().to_owned();
        let deleted = load(&only_p, &mut last);
        assert!(!deleted.cluster.policies.contains_key(&q));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
