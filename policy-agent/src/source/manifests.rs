//! A directory of manifests as the cluster model: YAML or JSON files, several documents per
//! file, `kind: List` as `kubectl get -o yaml` prints it. Namespaces, Pods, NetworkPolicies,
//! Services, EndpointSlices and Nodes are read; other kinds are skipped with a note. A
//! Service without a cluster IP gets one, and a Service with a selector and no
//! EndpointSlice the slices, as the control plane would ([`super::control_plane`]).
//!
//! One bad object never spoils the others: each error names the file, the object and the
//! field, and the rest still loads.
//!
//! Memory is bounded by the largest document, not by the file: files are read as streams
//! of documents ([`super::documents`]), one document parsed at a time under budgets that
//! bound what aliases, nesting and long scalars may cost. An object's document may be
//! [`MAX_OBJECT_BYTES`] long; only a List may be longer, up to [`MAX_DOCUMENT_BYTES`], and
//! its items are decoded one at a time. A longer document is an error like one that does
//! not parse: its object, when its kind and name can be read, keeps its last good version
//! (a NetworkPolicy never read before isolates its whole namespace, both ways, and allows
//! nothing); otherwise the objects its file had stay in force.

use std::{
    collections::BTreeMap,
    fmt,
    io::BufRead,
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
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{
    Kind, Object,
    convert::{self, typed},
    documents::{Document, Documents, Unread},
};
use crate::{
    model::{Cluster, ObjectRef, Origin, Policy, PolicyMeta},
    report::escape,
    semantics::ParsedPolicy,
};

/// The longest object: 3 MiB of its document's text (for an item of a List longer than
/// that, of the item written as JSON). The API server takes no request body over 3 MiB and
/// etcd, by default, no object over 1.5 MiB, so no object of a cluster is longer; a longer
/// document is a mistake or an attack, and reading it would cost the node's memory.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;
/// The longest document: 256 MiB. Only a List (`kubectl get -A -o yaml` prints one
/// document for a whole cluster) may be longer than an object: its text is held while its
/// items are read, one at a time, and no document longer than this is held at all.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024 * 1024;
/// Collections and scalars one object's document may hold: a NetworkPolicy of 3 MiB of
/// `ipBlock`s holds about 100,000. With the limits below it bounds the parsed tree of any
/// document of an object, aliases and all, to tens of MiB.
const MAX_OBJECT_NODES: usize = 500_000;
/// Parser events per node, at most (a collection starts and ends).
const EVENTS_PER_NODE: usize = 2;
/// How deep collections nest: an object nests about 10 deep, a List's items 2 more; the
/// bound keeps the parser's and the decoder's recursion far from the stack's end.
const MAX_DEPTH: usize = 64;
/// Aliases (`*name`) and anchors (`&name`) one document may hold. Kubernetes writes none;
/// people sharing labels between objects by hand write a few.
const MAX_ALIASES: usize = 10_000;
/// Parser events that aliases of one document may replay: what stops a "billion laughs",
/// an alias of an alias of ..., from expanding to more than the document says.
const MAX_REPLAYED_EVENTS: usize = 100_000;
/// Errors reported per file; the others are counted in one more (a file of a million
/// broken documents must not cost a million messages).
const MAX_ERRORS_PER_FILE: usize = 1_000;
/// Objects of kinds the enforcer does not use noted per file; the others are counted in
/// one more note.
const MAX_SKIPPED_PER_FILE: usize = 1_000;

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
    /// An object that could not be read, with what it is when that much could be, and for
    /// a policy what enforces it if it was never read before (see [`fail_closed_policy`]).
    Failed {
        key: Option<(Kind, ObjectRef)>,
        error: ManifestError,
        fail_closed: Option<Policy>,
    },
    /// A kind the enforcer does not use.
    Skipped(String),
    /// A document that is not an object (a string, a number, a sequence): what it is.
    NotAnObject(&'static str),
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file of `dir` (not recursively, in name order).
pub fn load_dir(dir: &Path) -> anyhow::Result<Loaded> {
    let (mut loaded, now) = read_dir(dir, &LastGood::default(), &BTreeMap::new())?;
    // Nothing is kept for a next load: the objects move to the cluster.
    for object in now.objects.into_values() {
        loaded.cluster.apply(object);
    }
    super::control_plane::complete(&mut loaded.cluster);
    Ok(loaded)
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
    let (mut loaded, now) = read_dir(dir, last, busy)?;
    for object in now.objects.values() {
        loaded.cluster.apply(object.clone());
    }
    *last = now;
    super::control_plane::complete(&mut loaded.cluster);
    Ok(loaded)
}

/// Reads the files of `dir` (see [`load_dir`]): the errors and skipped objects, and the
/// objects, with the last good versions of `last` where they fail.
///
/// Each file is read as a stream of documents, one at a time: what a load holds is the
/// objects, one document's text and parsed tree, and the errors (at most
/// [`MAX_ERRORS_PER_FILE`] a file). A document over [`MAX_OBJECT_BYTES`] (a List: over
/// [`MAX_DOCUMENT_BYTES`]) is an error, as one that does not parse is.
fn read_dir(
    dir: &Path,
    last: &LastGood,
    busy: &BTreeMap<PathBuf, std::time::Instant>,
) -> anyhow::Result<(Loaded, LastGood)> {
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
        let mut load = FileLoad::new(&file, last, &mut now, &mut loaded, &mut copies);
        match (busy.get(&file), std::fs::File::open(&file)) {
            (Some(since), _) => load.unreadable(format!(
                "being written (modified {} s ago and not closed yet): what it had stays in \
                 force until it is closed",
                since.elapsed().as_secs()
            )),
            (None, Ok(f)) => load.read(std::io::BufReader::new(f)),
            (None, Err(e)) => load.unreadable(format!("cannot read: {e}")),
        }
        let keys = load.finish();
        now.files.insert(file, keys);
    }
    copies.resolve(last, &mut now, &mut loaded);
    Ok((loaded, now))
}

/// Adds the objects of one file's text to `loaded` (no last good versions).
pub fn load_str(text: &str, file: &Path, loaded: &mut Loaded) {
    let mut now = LastGood::default();
    let last = LastGood::default();
    let mut copies = Copies::default();
    let mut load = FileLoad::new(file, &last, &mut now, loaded, &mut copies);
    load.read(text.as_bytes());
    load.finish();
    copies.resolve(&last, &mut now, loaded);
    for object in now.objects.into_values() {
        loaded.cluster.apply(object);
    }
}

/// One file being read: what it gives goes into `now` as it comes, with, from `last`, the
/// last good version of each object that fails and, if a document could not be read at
/// all, the objects the file had.
struct FileLoad<'a> {
    file: &'a Path,
    last: &'a LastGood,
    now: &'a mut LastGood,
    loaded: &'a mut Loaded,
    /// Every copy of each object read so far (objects defined twice are resolved at the end).
    copies: &'a mut Copies,
    /// The objects the file accounts for.
    keys: Vec<(Kind, ObjectRef)>,
    /// A document (or the file) could not be read at all: which objects it held is unknown.
    unreadable: bool,
    /// Errors found in the file (reported or not).
    errors: usize,
    /// Objects of kinds not used found in the file (noted or not).
    skipped: usize,
}

impl<'a> FileLoad<'a> {
    fn new(
        file: &'a Path,
        last: &'a LastGood,
        now: &'a mut LastGood,
        loaded: &'a mut Loaded,
        copies: &'a mut Copies,
    ) -> Self {
        Self {
            file,
            last,
            now,
            loaded,
            copies,
            keys: Vec::new(),
            unreadable: false,
            errors: 0,
            skipped: 0,
        }
    }

    /// Reads every document of the file's stream.
    fn read(&mut self, reader: impl BufRead) {
        for document in Documents::new(reader, MAX_DOCUMENT_BYTES) {
            match document {
                Ok(document) => self.document(document),
                Err(e) => {
                    self.unreadable(format!("cannot read: {e}"));
                    return;
                }
            }
        }
    }

    /// Decodes one document and settles what it gives.
    fn document(&mut self, document: Document) {
        let at = format!("document {} (from line {})", document.index, document.line);
        let text = match &document.text {
            Ok(text) => text,
            Err(unread) => {
                let said = match unread {
                    Unread::NotUtf8 { lossy, .. } => salvage(lossy),
                    Unread::TooLarge { .. } => None,
                };
                return self.unparsed(said, format!("{at}: {unread}"));
            }
        };
        let mut out = Vec::new();
        let parsed = if text.len() <= MAX_OBJECT_BYTES {
            serde_saphyr::from_str_with_options::<Value>(text, options(MAX_OBJECT_BYTES)).map(
                |doc| {
                    if doc.is_object() || doc.is_null() {
                        decode(doc, self.file, &mut out);
                    } else {
                        out.push(Decoded::NotAnObject(shape(&doc)));
                    }
                },
            )
        } else {
            serde_saphyr::with_deserializer_from_str_with_options(
                text,
                options(MAX_DOCUMENT_BYTES),
                |de| Large { file: self.file }.deserialize(de),
            )
            .map(|large| large.decode(self.file, &at, text.len(), &mut out))
        };
        match parsed {
            Ok(()) => {
                for decoded in out {
                    self.settle(decoded);
                }
            }
            Err(e) => self.unparsed(salvage(text), format!("{at} is not valid YAML: {e}")),
        }
    }

    /// A document that could not be read, and which object it says it is, if its lines say
    /// that much: that object keeps its last good version (or, a policy never read, is
    /// enforced fail-closed) rather than vanish; the file's other objects stay as well.
    fn unparsed(&mut self, said: Option<(String, (Kind, ObjectRef))>, message: String) {
        let Some((label, key)) = said else {
            return self.unreadable(message);
        };
        self.unreadable = true;
        self.settle(Decoded::Failed {
            fail_closed: fail_closed_for(Some(&key), None, self.file),
            key: Some(key),
            error: ManifestError {
                file: self.file.to_owned(),
                object: Some(label),
                field: None,
                message,
            },
        });
    }

    /// Reports an error (the first [`MAX_ERRORS_PER_FILE`] of the file; the others are
    /// counted).
    fn error(&mut self, error: ManifestError) {
        self.errors += 1;
        if self.errors <= MAX_ERRORS_PER_FILE {
            self.loaded.errors.push(error);
        }
    }

    /// A document (or the file) that could not be read: what objects it held is unknown,
    /// so the objects the file had stay in force.
    fn unreadable(&mut self, message: String) {
        self.unreadable = true;
        self.error(ManifestError {
            file: self.file.to_owned(),
            object: None,
            field: None,
            message: format!("{message} (the objects this file had stay in force)"),
        });
    }

    /// Puts what one document (or List item) gave into `now`.
    fn settle(&mut self, decoded: Decoded) {
        match decoded {
            Decoded::Object(object) => {
                let key = object.key();
                let object = match (invalid_policy(&object), self.last.objects.get(&key)) {
                    // Read, but rejected by validation: the last good version stays (with
                    // none, the compiler enforces it fail-closed and reports it).
                    (Some(error), Some(good)) => {
                        self.error(ManifestError {
                            file: self.file.to_owned(),
                            object: Some(format!("NetworkPolicy {}", key.1)),
                            field: None,
                            message: format!("{error} (its last good version stays in force)"),
                        });
                        good.clone()
                    }
                    _ => object,
                };
                self.copies.put(self.now, key.clone(), object, self.file);
                self.keys.push(key);
            }
            Decoded::Skipped(label) => {
                self.skipped += 1;
                if self.skipped <= MAX_SKIPPED_PER_FILE {
                    self.loaded.skipped.push(label);
                }
            }
            Decoded::NotAnObject(shape) => self.error(ManifestError {
                file: self.file.to_owned(),
                object: None,
                field: None,
                message: format!("a document is {shape}, not an object (left out)"),
            }),
            Decoded::Failed {
                key,
                error,
                fail_closed,
            } => {
                let Some(key) = key else {
                    return self.error(error);
                };
                let (kept, what) = match (self.last.objects.get(&key), fail_closed) {
                    (Some(good), _) => (Some(good.clone()), "its last good version stays in force"),
                    (None, Some(policy)) => (
                        Some(Object::Policy(policy)),
                        "enforced fail-closed: it isolates the pods it selects and allows nothing",
                    ),
                    (None, None) => (None, "left out"),
                };
                self.error(ManifestError {
                    message: format!("{} ({what})", error.message),
                    ..error
                });
                match kept {
                    Some(kept) => self.copies.put(self.now, key.clone(), kept, self.file),
                    None => self.copies.seen(key.clone(), self.file),
                }
                self.keys.push(key);
            }
        }
    }

    /// Ends the file: the errors and notes not reported are counted, and if a document could not be
    /// read, the objects the file had and did not give again stay. Returns the objects the
    /// file accounts for.
    fn finish(mut self) -> Vec<(Kind, ObjectRef)> {
        if self.errors > MAX_ERRORS_PER_FILE {
            self.loaded.errors.push(ManifestError {
                file: self.file.to_owned(),
                object: None,
                field: None,
                message: format!(
                    "{} more errors, not shown (at most {MAX_ERRORS_PER_FILE} are shown per file)",
                    self.errors - MAX_ERRORS_PER_FILE
                ),
            });
        }
        if self.skipped > MAX_SKIPPED_PER_FILE {
            self.loaded.skipped.push(format!(
                "{}: {} more objects of kinds not used, not shown",
                self.file.display(),
                self.skipped - MAX_SKIPPED_PER_FILE
            ));
        }
        if self.unreadable {
            for key in self.last.files.get(self.file).into_iter().flatten() {
                if let (false, Some(good)) = (
                    self.now.objects.contains_key(key),
                    self.last.objects.get(key),
                ) {
                    self.now.objects.insert(key.clone(), good.clone());
                    self.keys.push(key.clone());
                }
            }
        }
        self.keys
    }
}

/// Parser options for a document of at most `bytes` bytes: every budget bounds what it
/// may cost, aliases included (see the limits above).
fn options(bytes: usize) -> serde_saphyr::Options {
    // Only true/false are booleans (YAML 1.2): `namespace: y` names a namespace, as
    // kubectl reads it, rather than being YAML 1.1's "yes".
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    // Comments are checked, not kept.
    options.emit_comments = false;
    let nodes = MAX_OBJECT_NODES.saturating_mul(bytes.div_ceil(MAX_OBJECT_BYTES));
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = nodes;
    budget.max_events = EVENTS_PER_NODE * nodes;
    budget.max_total_scalar_bytes = bytes;
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    options
}

/// A document longer than an object: a List, whose items are decoded one at a time as
/// they are parsed (its parsed tree is never held whole, and an item's is bounded as an
/// object's document is), or an object too long to use, of which only the kind and name
/// are read.
struct Large<'a> {
    file: &'a Path,
}

/// What a [`Large`] document held.
struct LargeDoc {
    kind: Option<String>,
    metadata: Option<NameOnly>,
    /// Its items, decoded (used only if it is a List).
    items: Vec<Decoded>,
}

/// The name of an object, and nothing else of its metadata.
#[derive(serde::Deserialize)]
struct NameOnly {
    name: Option<String>,
    namespace: Option<String>,
}

impl<'de> DeserializeSeed<'de> for Large<'_> {
    type Value = LargeDoc;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<LargeDoc, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Large<'_> {
    type Value = LargeDoc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object or List (a mapping)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LargeDoc, A::Error> {
        let mut doc = LargeDoc {
            kind: None,
            metadata: None,
            items: Vec::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => doc.kind = map.next_value()?,
                "metadata" => doc.metadata = map.next_value()?,
                "items" => map.next_value_seed(Items {
                    file: self.file,
                    out: &mut doc.items,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(doc)
    }
}

impl LargeDoc {
    /// What the document gives: a List's items, else an error naming the object (`at`
    /// names the document, `size` is its length).
    fn decode(self, file: &Path, at: &str, size: usize, out: &mut Vec<Decoded>) {
        let kind = self.kind.unwrap_or_default();
        if LIST_KINDS.contains(&kind.as_str()) {
            out.extend(self.items);
            return;
        }
        let (name, namespace) = self
            .metadata
            .map(|m| (m.name, m.namespace))
            .unwrap_or_default();
        let key = key_from(&kind, name.as_deref(), namespace.as_deref());
        out.push(Decoded::Failed {
            error: ManifestError {
                file: file.to_owned(),
                object: Some(label_from(&kind, name.as_deref(), namespace.as_deref())),
                field: None,
                message: format!(
                    "{at} is {size} bytes long, over the limit of {MAX_OBJECT_BYTES} bytes \
                     per object"
                ),
            },
            // Nothing of it was read: it isolates every pod of its namespace, both ways.
            fail_closed: fail_closed_for(key.as_ref(), None, file),
            key,
        });
    }
}

/// The items of a large List, decoded one at a time.
struct Items<'a> {
    file: &'a Path,
    out: &'a mut Vec<Decoded>,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let mut allowance = Allowance::default();
            let Some(item) = seq.next_element_seed(Within(&mut allowance))? else {
                return Ok(());
            };
            let size = if allowance.over {
                format!("more than {MAX_OBJECT_NODES} values or {MAX_OBJECT_BYTES} bytes of text")
            } else {
                let size = json_len(&item);
                if size <= MAX_OBJECT_BYTES {
                    decode(item, self.file, self.out);
                    continue;
                }
                format!("{size} bytes long as JSON")
            };
            // What was read before the allowance ran out usually names the object.
            let kind = item.get("kind").and_then(Value::as_str).unwrap_or_default();
            let key = key_of(kind, &item);
            self.out.push(Decoded::Failed {
                error: ManifestError {
                    file: self.file.to_owned(),
                    object: Some(object_label(kind, &item)),
                    field: None,
                    message: format!(
                        "an item of a List over the limit of {MAX_OBJECT_BYTES} bytes per \
                         object: {size}"
                    ),
                },
                fail_closed: fail_closed_for(key.as_ref(), None, self.file),
                key,
            });
        }
    }
}

/// What one item of a large List may still hold while it is read: its parsed tree is
/// bounded as an object's document is.
struct Allowance {
    nodes: usize,
    bytes: usize,
    /// It ran out: the rest of the item is read and dropped.
    over: bool,
}

impl Default for Allowance {
    fn default() -> Self {
        Self {
            nodes: MAX_OBJECT_NODES,
            bytes: MAX_OBJECT_BYTES,
            over: false,
        }
    }
}

impl Allowance {
    /// Takes one node holding `bytes` bytes of text; false once the allowance ran out.
    fn take(&mut self, bytes: usize) -> bool {
        if !self.over && self.nodes > 0 && self.bytes >= bytes {
            self.nodes -= 1;
            self.bytes -= bytes;
        } else {
            self.over = true;
        }
        !self.over
    }
}

/// A value read within an [`Allowance`]: once it runs out, what follows is read, dropped
/// and given as null.
struct Within<'b>(&'b mut Allowance);

impl Within<'_> {
    fn scalar(self, bytes: usize, value: impl FnOnce() -> Value) -> Value {
        if self.0.take(bytes) {
            value()
        } else {
            Value::Null
        }
    }
}

impl<'de> DeserializeSeed<'de> for Within<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Within<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(self.scalar(0, || Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(self.scalar(0, || Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(self.scalar(0, || Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(self.scalar(0, || Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(self.scalar(v.len(), || Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(self.scalar(v.len(), || Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(self.scalar(0, || Value::Null))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(self.scalar(0, || Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        self.deserialize(de)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let keep = self.0.take(0);
        let mut out = Vec::new();
        loop {
            // The value that runs out is kept as far as it was read (it may name the
            // object); none after it.
            let keep_value = !self.0.over;
            let Some(value) = seq.next_element_seed(Within(&mut *self.0))? else {
                break;
            };
            if keep_value {
                out.push(value);
            }
        }
        Ok(if keep { Value::Array(out) } else { Value::Null })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let keep = self.0.take(0);
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let keep_key = keep && self.0.take(key.len());
            let value = map.next_value_seed(Within(&mut *self.0))?;
            if keep_key {
                out.insert(key, value);
            }
        }
        Ok(if keep {
            Value::Object(out)
        } else {
            Value::Null
        })
    }
}

/// The length of `value` written as JSON, counted, not written.
fn json_len(value: &Value) -> usize {
    /// Counts what is written to it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A `Value` always writes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
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

/// What enforces an object that failed to read if it is a policy never read before (its
/// fail-closed form, see [`fail_closed_policy`]); `None` for other kinds.
fn fail_closed_for(
    key: Option<&(Kind, ObjectRef)>,
    doc: Option<&Value>,
    file: &Path,
) -> Option<Policy> {
    key.filter(|k| k.0 == Kind::Policy)
        .map(|k| fail_closed_policy(doc, &k.1, file))
}

/// A policy that could not be read and never was: what it selects (every pod of its
/// namespace if that cannot be read) isolated in the directions it names (both if they
/// cannot be read), with no rule. `doc` is the document, if it could be parsed.
fn fail_closed_policy(doc: Option<&Value>, id: &ObjectRef, file: &Path) -> Policy {
    let spec = doc.map(|doc| doc.get("spec"));
    let field = |name: &str| spec.flatten().and_then(|s| s.get(name)).cloned();
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
    let both = || vec!["Ingress".to_owned(), "Egress".to_owned()];
    let policy_types = match named {
        Some(types) if !types.is_empty() => types,
        Some(_) => both(),
        None if has_egress || spec.is_none() => both(),
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

/// The kinds of a List of objects.
const LIST_KINDS: [&str; 7] = [
    "List",
    "NamespaceList",
    "PodList",
    "NetworkPolicyList",
    "ServiceList",
    "EndpointSliceList",
    "NodeList",
];

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

/// A document of an object of `kind` whose `field` is wrong: its last good version stays
/// in force, or, a policy never read, its fail-closed form.
fn failed_field(
    kind: &str,
    doc: &Value,
    file: &Path,
    label: String,
    field: &str,
    message: String,
) -> Decoded {
    let key = key_of(kind, doc);
    Decoded::Failed {
        fail_closed: fail_closed_for(key.as_ref(), Some(doc), file),
        key,
        error: ManifestError {
            file: file.to_owned(),
            object: Some(label),
            field: Some(field.to_owned()),
            message,
        },
    }
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
        let message = format!("{version:?} is not a version of {kind} (only {want:?} is)");
        out.push(failed_field(
            &kind,
            &doc,
            file,
            label,
            "apiVersion",
            message,
        ));
        return;
    }
    if LIST_KINDS.contains(&kind.as_str()) {
        if let Some(Value::Array(items)) = doc.get("items") {
            for item in items.clone() {
                decode(item, file, out);
            }
        }
        return;
    }
    let result = match kind.as_str() {
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
                let message = format!("unknown kind (did you mean {meant:?}?)");
                out.push(failed_field(&meant, &doc, file, label, "kind", message));
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
        Err((field, message)) => {
            let key = key_of(&kind, &doc);
            Decoded::Failed {
                fail_closed: fail_closed_for(key.as_ref(), Some(&doc), file),
                key,
                error: ManifestError {
                    file: file.to_owned(),
                    object: Some(label),
                    field,
                    message,
                },
            }
        }
    });
}

/// The kind and name of a document, when it has them.
fn key_of(kind: &str, doc: &Value) -> Option<(Kind, ObjectRef)> {
    let meta = doc.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    key_from(kind, field("name"), field("namespace"))
}

/// The kind and name of an object, when it has them.
fn key_from(kind: &str, name: Option<&str>, namespace: Option<&str>) -> Option<(Kind, ObjectRef)> {
    let kind = match kind {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        "NetworkPolicy" => Kind::Policy,
        "Service" => Kind::Service,
        "EndpointSlice" => Kind::EndpointSlice,
        "Node" => Kind::Node,
        _ => return None,
    };
    let name = name.filter(|n| !n.is_empty())?;
    let namespace = if kind.namespaced() {
        namespace
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
    label_from(kind, field("name"), field("namespace"))
}

/// `Kind namespace/name`, as errors name an object.
fn label_from(kind: &str, name: Option<&str>, namespace: Option<&str>) -> String {
    match (namespace, name) {
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

    /// A policy document of `bytes` bytes or more (a long annotation).
    fn long_policy(name: &str, bytes: usize) -> String {
        format!(
            "kind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: x\n  annotations: {{note: {}}}\nspec: {{podSelector: {{matchLabels: {{app: a}}}}, ingress: [{{}}]}}\n",
            "n".repeat(bytes)
        )
    }

    #[test]
    fn a_document_over_the_object_limit_is_an_error_naming_it_and_the_policy_fails_closed() {
        let text = format!(
            "kind: Namespace\nmetadata: {{name: x}}\n---\n{}---\nkind: Namespace\nmetadata: {{name: y}}\n",
            long_policy("big", MAX_OBJECT_BYTES)
        );
        let loaded = load(&text);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let error = loaded.errors[0].to_string();
        let size = text.len() - "kind: Namespace\nmetadata: {name: x}\n".len() * 2 - 4;
        assert!(
            error.starts_with("test.yaml: NetworkPolicy x/big: document 2 (from line 3) is ")
                && error.contains(&format!(
                    "is {size} bytes long, over the limit of {MAX_OBJECT_BYTES} bytes per object"
                ))
                && error.contains("enforced fail-closed"),
            "{error}"
        );
        // Nothing of it was read: it isolates its whole namespace, both ways.
        let policy = &loaded.cluster.policies[&ObjectRef::new("x", "big")];
        assert_eq!(policy.spec.pod_selector, Some(LabelSelector::default()));
        assert_eq!(
            policy.spec.policy_types.as_deref(),
            Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
        );
        assert_eq!(
            (policy.spec.ingress.as_ref(), policy.spec.egress.as_ref()),
            (None, None)
        );
        assert!(
            loaded.cluster.namespaces.contains_key("y"),
            "the rest loads"
        );
    }

    #[test]
    fn a_list_may_be_longer_than_an_object_but_not_its_items() {
        let pod = |i: usize| {
            format!(
                "- kind: Pod\n  metadata: {{name: p{i}, namespace: x, annotations: {{a: {}}}}}\n  status: {{podIP: 10.0.{}.{}}}\n",
                "n".repeat(1_000),
                i / 250,
                i % 250 + 1
            )
        };
        let items: String = (0..4_000).map(pod).collect();
        let mut text = format!("apiVersion: v1\nitems:\n{items}");
        text.push_str("- ");
        text.push_str(&long_policy("big", MAX_OBJECT_BYTES).replace('\n', "\n  "));
        text.push_str("\nkind: List\nmetadata: {}\n");
        assert!(text.len() > MAX_OBJECT_BYTES);
        let loaded = load(&text);
        assert_eq!(loaded.cluster.pods.len(), 4_000);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let error = loaded.errors[0].to_string();
        assert!(
            error.contains("NetworkPolicy x/big: an item of a List")
                && error.contains("enforced fail-closed"),
            "{error}"
        );
    }

    #[test]
    fn a_file_reports_a_bounded_number_of_errors_and_notes() {
        let text = "kind: Pod\n---\nkind: ConfigMap\n---\n".repeat(MAX_ERRORS_PER_FILE + 10);
        let loaded = load(&text);
        assert_eq!(loaded.skipped.len(), MAX_SKIPPED_PER_FILE + 1);
        assert_eq!(
            loaded.skipped[MAX_SKIPPED_PER_FILE],
            "test.yaml: 10 more objects of kinds not used, not shown"
        );
        assert_eq!(loaded.errors.len(), MAX_ERRORS_PER_FILE + 1);
        assert!(
            loaded.errors[MAX_ERRORS_PER_FILE]
                .message
                .starts_with("10 more errors, not shown"),
            "{}",
            loaded.errors[MAX_ERRORS_PER_FILE]
        );
    }

    #[test]
    fn document_markers_follow_yaml() {
        // Directives belong to the document after them; a marker's line may hold the
        // document or a comment; `---#` is text (here, of the last document).
        let loaded = load(
            "kind: Namespace\nmetadata: {name: a}\n...\n%YAML 1.2\n---\nkind: Namespace\nmetadata: {name: b}\n--- {kind: Namespace, metadata: {name: c}}\n--- # d\nkind: Namespace\nmetadata: {name: d}\n---#\n",
        );
        let names: Vec<&String> = loaded.cluster.namespaces.keys().collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(
            loaded.errors[0]
                .message
                .starts_with("document 4 (from line 9) is not valid YAML"),
            "{}",
            loaded.errors[0]
        );
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
