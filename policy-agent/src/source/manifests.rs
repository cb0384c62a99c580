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
    load_dir_busy(dir, last, &BTreeMap::new())
}

/// As [`load_dir_with`], with files that are being written (modified and not closed yet,
/// since the given time) not read: what they had stays in force, as for a file that
/// cannot be read, since a file caught half-written may parse and mean less than it will
/// (a list of `except`s cut short, `10.0.0.0/16` cut to `10.0.0.0/1`).
pub fn load_dir_busy(
    dir: &Path,
    last: &mut LastGood,
    busy: &BTreeMap<PathBuf, std::time::Instant>,
) -> anyhow::Result<Loaded> {
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
    let mut copies = Copies::default();
    for file in files {
        let unreadable = |message: String, loaded: &mut Loaded| {
            loaded.errors.push(ManifestError {
                file: file.clone(),
                object: None,
                field: None,
                message,
            });
            FileRead {
                unreadable: true,
                ..FileRead::default()
            }
        };
        let read = match (busy.get(&file), std::fs::read(&file)) {
            (Some(since), _) => unreadable(
                format!(
                    "being written (modified {} s ago and not closed yet): what it had stays \
                     in force until it is closed",
                    since.elapsed().as_secs()
                ),
                &mut loaded,
            ),
            (None, Ok(bytes)) => read_bytes(&bytes, &file, &mut loaded.errors),
            (None, Err(e)) => unreadable(format!("cannot read: {e}"), &mut loaded),
        };
        let keys = settle(read, &file, last, &mut now, &mut loaded, &mut copies);
        now.files.insert(file, keys);
    }
    copies.resolve(last, &mut now, &mut loaded);
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
    copies: &mut Copies,
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
                copies.put(now, key.clone(), object, file);
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
                match kept {
                    Some(kept) => copies.put(now, key.clone(), kept, file),
                    None => copies.seen(key.clone(), file),
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

/// Every copy of each object one load found: an object defined twice (in one file or in
/// two) is ambiguous, since which copy was meant is unknown, and neither copy is trusted.
#[derive(Default)]
struct Copies {
    /// The files of each object's copies (a file twice for two copies in it), in the order
    /// read; the objects of the copies that could be read.
    found: BTreeMap<(Kind, ObjectRef), (Vec<PathBuf>, Vec<Object>)>,
}

impl Copies {
    /// Puts `object` into `now`, remembering the copy.
    fn put(&mut self, now: &mut LastGood, key: (Kind, ObjectRef), object: Object, file: &Path) {
        let entry = self.found.entry(key.clone()).or_default();
        entry.0.push(file.to_owned());
        entry.1.push(object.clone());
        now.objects.insert(key, object);
    }

    /// Remembers a copy that could not be read.
    fn seen(&mut self, key: (Kind, ObjectRef), file: &Path) {
        self.found.entry(key).or_default().0.push(file.to_owned());
    }

    /// Replaces every object defined more than once with its last good version, or, with
    /// none, a policy with its fail-closed form (isolating what any copy may select, in
    /// every direction any copy names) and anything else with its first copy; reports each.
    fn resolve(self, last: &LastGood, now: &mut LastGood, loaded: &mut Loaded) {
        for (key, (files, objects)) in self.found {
            if files.len() < 2 {
                continue;
            }
            let (kept, what) = match (last.objects.get(&key), &key.0) {
                (Some(good), _) => (Some(good.clone()), "its last good version stays in force"),
                (None, Kind::Policy) => (
                    Some(Object::Policy(fail_closed_of_copies(
                        &key.1, &objects, &files[0],
                    ))),
                    "enforced fail-closed: it isolates the pods any copy selects and allows \
                     nothing",
                ),
                (None, _) => (objects.first().cloned(), "the first copy is used"),
            };
            match kept {
                Some(kept) => {
                    now.objects.insert(key.clone(), kept);
                }
                None => {
                    now.objects.remove(&key);
                }
            }
            let places: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            loaded.errors.push(ManifestError {
                file: files.last().cloned().unwrap_or_default(),
                object: Some(format!("{} {}", kind_name(key.0), key.1)),
                field: None,
                message: format!(
                    "defined more than once ({}), so which copy is meant is unknown ({what})",
                    places.join(", ")
                ),
            });
        }
    }
}

/// A policy's form when its copies disagree and none was ever good: the pods its copies
/// select (every pod of the namespace, unless all copies select alike) isolated in every
/// direction a copy isolates, with no rule.
fn fail_closed_of_copies(id: &ObjectRef, copies: &[Object], file: &Path) -> Policy {
    let specs: Vec<&NetworkPolicySpec> = copies
        .iter()
        .filter_map(|o| match o {
            Object::Policy(p) => Some(&p.spec),
            _ => None,
        })
        .collect();
    let selector = match specs.first() {
        Some(first) if specs.iter().all(|s| s.pod_selector == first.pod_selector) => {
            first.pod_selector.clone()
        }
        _ => Some(LabelSelector::default()),
    };
    let mut types = std::collections::BTreeSet::new();
    for spec in &specs {
        match spec.policy_types.as_deref() {
            Some(named) if !named.is_empty() => types.extend(named.iter().cloned()),
            _ => {
                types.insert("Ingress".to_owned());
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    types.insert("Egress".to_owned());
                }
            }
        }
    }
    // Copies that could not be read at all say nothing: both directions.
    if specs.len() < copies.len() || types.is_empty() {
        types.extend(["Ingress".to_owned(), "Egress".to_owned()]);
    }
    Policy {
        id: id.clone(),
        spec: NetworkPolicySpec {
            pod_selector: selector,
            policy_types: Some(types.into_iter().collect()),
            ingress: None,
            egress: None,
        },
        meta: PolicyMeta::default(),
        origin: Origin {
            file: Some(file.to_owned()),
        },
    }
}

/// A kind's name as manifests spell it.
const fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "Namespace",
        Kind::Pod => "Pod",
        Kind::Policy => "NetworkPolicy",
        Kind::Service => "Service",
        Kind::EndpointSlice => "EndpointSlice",
        Kind::Node => "Node",
    }
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
        // Nothing of the spec could be read (a document that does not parse): both.
        None if has_egress || spec.is_none() => vec!["Ingress".to_owned(), "Egress".to_owned()],
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
    let read = read_bytes(text.as_bytes(), file, &mut loaded.errors);
    let (last, mut now, mut copies) = (LastGood::default(), LastGood::default(), Copies::default());
    settle(read, file, &last, &mut now, loaded, &mut copies);
    copies.resolve(&last, &mut now, loaded);
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

/// Decodes every document of one file's bytes. A document that is not UTF-8 or not YAML
/// spoils itself only; if it still says which object it is (the lines `kind:` and
/// `metadata`'s `name:` and `namespace:`), that object keeps its last good version, or, a
/// policy never read, is enforced fail-closed, rather than vanish.
fn read_bytes(bytes: &[u8], file: &Path, errors: &mut Vec<ManifestError>) -> FileRead {
    // Split before decoding, so that a stray byte spoils its document, not the file.
    let (text, utf8) = match std::str::from_utf8(bytes) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), true),
        Err(_) => (String::from_utf8_lossy(bytes), false),
    };
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
    let docs = documents(&text);
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
        let parsed = if !utf8 && doc.contains(char::REPLACEMENT_CHARACTER) {
            Err("it is not valid UTF-8".to_owned())
        } else {
            serde_saphyr::from_str_with_options::<Value>(&doc, options.clone())
                .map_err(|e| format!("it is not valid YAML: {e}"))
        };
        match parsed {
            Ok(value) if value.is_object() || value.is_null() => {
                decode(value, file, &mut read.decoded);
            }
            Ok(value) => errors.push(ManifestError {
                file: file.to_owned(),
                object: None,
                field: None,
                message: format!(
                    "the document from line {line} is {}, not an object (left out)",
                    shape(&value)
                ),
            }),
            Err(why) => {
                read.unreadable = true;
                let error = |object: Option<String>, kept: &str| ManifestError {
                    file: file.to_owned(),
                    object,
                    field: None,
                    message: format!(
                        "the document from line {line} cannot be read ({kept}): {why}"
                    ),
                };
                match salvage(&doc) {
                    Some((kind, key)) => read.decoded.push(Decoded::Failed {
                        key: Some(key),
                        error: error(Some(kind), "it says which object it is"),
                        doc: Value::Null,
                    }),
                    None => errors.push(error(None, "the objects this file had stay in force")),
                }
            }
        }
    }
    read
}

/// What a document that is not an object is, in words.
fn shape(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "a sequence",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null | Value::Object(_) => "empty",
    }
}

/// Which object a document that does not parse is, from its lines alone: `kind:` at the
/// top level, and `name:` and `namespace:` in `metadata` (block or flow style). The kind
/// and name of a key only; `None` if that much is not there.
fn salvage(doc: &str) -> Option<(String, (Kind, ObjectRef))> {
    let unquote = |v: &str| {
        let v = v.trim();
        let v = v.split(" #").next().unwrap_or(v).trim();
        v.trim_matches(|c| c == '"' || c == '\'').to_owned()
    };
    let mut kind = None;
    let mut meta: BTreeMap<&str, String> = BTreeMap::new();
    let mut in_meta = false;
    let mut meta_indent = None;
    for line in doc.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 0 {
            in_meta = false;
            if let Some(v) = line.strip_prefix("kind:") {
                kind.get_or_insert_with(|| unquote(v));
            } else if let Some(v) = line.strip_prefix("metadata:") {
                let v = v.trim();
                if let Some(flow) = v.strip_prefix('{') {
                    for pair in flow.trim_end_matches('}').split(',') {
                        if let Some((k, v)) = pair.split_once(':') {
                            let k = k.trim();
                            if k == "name" || k == "namespace" {
                                meta.entry(if k == "name" { "name" } else { "namespace" })
                                    .or_insert_with(|| unquote(v));
                            }
                        }
                    }
                } else {
                    in_meta = true;
                    meta_indent = None;
                }
            }
        } else if in_meta {
            // Only the keys directly under `metadata`, not those of its labels.
            if *meta_indent.get_or_insert(indent) != indent {
                continue;
            }
            for k in ["name", "namespace"] {
                if let Some(v) = trimmed.strip_prefix(k).and_then(|r| r.strip_prefix(':')) {
                    meta.entry(k).or_insert_with(|| unquote(v));
                }
            }
        }
    }
    let kind = kind?;
    let name = meta.get("name").filter(|n| !n.is_empty())?;
    let mut doc = serde_json::json!({"kind": kind, "metadata": {"name": name}});
    if let Some(ns) = meta.get("namespace") {
        doc["metadata"]["namespace"] = Value::String(ns.clone());
    }
    let key = key_of(&known_kind(&kind)?, &doc)?;
    Some((object_label(&kind, &doc), key))
}

/// Kinds the enforcer reads (lists aside).
const KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Service",
    "EndpointSlice",
    "Node",
];

/// The kind `kind` is, or is a misspelling of: the same but for case, or for short kinds
/// alone (other real kinds are a few letters from `Pod` and `Node`: `Role`), within two
/// edits.
fn known_kind(kind: &str) -> Option<String> {
    /// Kinds shorter than this are never taken as misspelt.
    const MIN_FUZZY: usize = 7;
    /// Most edits between a misspelt kind and the kind it is taken for.
    const MAX_DISTANCE: usize = 2;
    KINDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(kind))
        .or_else(|| {
            KINDS.iter().filter(|k| k.len() >= MIN_FUZZY).find(|k| {
                strsim::damerau_levenshtein(&k.to_ascii_lowercase(), &kind.to_ascii_lowercase())
                    <= MAX_DISTANCE
            })
        })
        .map(|k| (*k).to_owned())
}

/// The apiVersion objects of `kind` have.
fn api_version_of(kind: &str) -> Option<&'static str> {
    use k8s_openapi::Resource as _;
    Some(match kind {
        "Namespace" => ApiNamespace::API_VERSION,
        "Pod" => ApiPod::API_VERSION,
        "NetworkPolicy" => k8s_openapi::api::networking::v1::NetworkPolicy::API_VERSION,
        "Service" => ApiService::API_VERSION,
        "EndpointSlice" => ApiEndpointSlice::API_VERSION,
        "Node" => ApiNode::API_VERSION,
        _ => return None,
    })
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
    // An apiVersion that is not the kind's: kubectl refuses it, and so do we (the schema
    // may differ), rather than read it as the version we know.
    let api_version = doc.get("apiVersion").and_then(Value::as_str);
    if let (Some(version), Some(want)) = (api_version, api_version_of(&kind))
        && version != want
    {
        out.push(Decoded::Failed {
            key: key_of(&kind, &doc),
            error: ManifestError {
                file: file.to_owned(),
                object: Some(label),
                field: Some("apiVersion".to_owned()),
                message: format!("{version:?} is not a version of {kind} (only {want:?} is)"),
            },
            doc,
        });
        return;
    }
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
        "" => Err((Some("kind".to_owned()), "required".to_owned())),
        _ => match known_kind(&kind) {
            // A misspelt kind is not a kind to skip: the object would silently go (and a
            // policy with it, opening what it isolated).
            Some(meant) => {
                out.push(Decoded::Failed {
                    key: key_of(&meant, &doc),
                    error: ManifestError {
                        file: file.to_owned(),
                        object: Some(label),
                        field: Some("kind".to_owned()),
                        message: format!("unknown kind (did you mean {meant:?}?)"),
                    },
                    doc,
                });
                return;
            }
            None => {
                out.push(Decoded::Skipped(format!("{}: {label}", file.display())));
                return;
            }
        },
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

        // q misspelt as another kind, cut mid-way, or defined twice (the second copy
        // admitting everyone): its last good version stays, never the open copy.
        let q_open = "kind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}\n";
        for bad in [
            good.replace(
                "kind: NetworkPolicy\nmetadata: {name: q",
                "kind: NetworkPolicey\nmetadata: {name: q",
            ),
            good.replace("spec: {podSelector: {}}", "spec: {podSelector: {"),
            format!("{good}---\n{q_open}"),
        ] {
            let kept = load(&bad, &mut last);
            assert_eq!(kept.cluster.policies[&q].spec.ingress, None, "{bad}");
            assert!(!kept.errors.is_empty(), "{bad}");
            assert_eq!(kept.cluster.policies[&p].spec, was, "{bad}");
        }
        // Never good (a fresh load): the copies are enforced fail-closed.
        std::fs::write(&file, format!("{good}---\n{q_open}")).unwrap();
        let fresh = load_dir(&dir).unwrap();
        assert_eq!(fresh.cluster.policies[&q].spec.ingress, None);
        assert!(
            fresh.errors[0]
                .to_string()
                .contains("defined more than once"),
            "{:?}",
            fresh.errors
        );

        // Deleting q on purpose (the file reads whole) deletes it.
        let only_p = good.split("---").next().unwrap().to_owned();
        let deleted = load(&only_p, &mut last);
        assert!(!deleted.cluster.policies.contains_key(&q));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
