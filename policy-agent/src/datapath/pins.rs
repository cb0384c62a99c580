//! The maps an earlier agent pinned: can this object reuse them?
//!
//! aya reuses a pinned map by name without looking at it, so an agent upgraded in place
//! (whose keys or values grew) or started with other `--map-size` settings would write
//! entries of one layout into a map of another: every write fails, or worse, the programs
//! read what the agent did not mean. Before loading, every pin of the instance is compared
//! with what the object and the settings make (map type, key size, value size, max
//! entries, flags). The per-pod tables inside CONNTRACK and FRAGMENTS are checked for real:
//! the kernel compares an inner map with the outer map's template when one is inserted,
//! and nothing else reveals the template.
//!
//! If any map differs, all of the instance's maps are replaced, never only the one that
//! differs: conntrack and fragment keys are only safe together with the ENDPOINTS map
//! they belong to. A pod's tables are keyed by its endpoint id, and the generation in
//! every key tells the id's holders apart; generations are counted on from the ones in
//! ENDPOINTS. A fresh ENDPOINTS next to kept tables starts counting again, so a new pod
//! could get an old pod's id and generation and inherit its connections (replies it never
//! asked for would pass). A fresh ENDPOINTS with fresh tables cannot. The old programs,
//! still attached, keep the old maps alive (a map lives while a program uses it) and go on
//! enforcing the previous state until the agent swaps each link to the new programs, after
//! its first sync has filled the new maps: enforcement has no gap, but tracked connections
//! restart (an established connection of an isolated pod must be allowed again by policy).

use std::{collections::BTreeMap, fmt, io, path::Path};

use aya::maps::{HashOfMaps, Map, MapData, MapError, MapInfo};
use policy_common::maps::{CtEntry, CtKey, FragKey, FragValue, names};

use super::{EBPF_OBJECT, maps::MapOpError, tables::lru_table_data};
use crate::capacity::MapSizes;

/// Errors checking the pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum PinCheckError {
    /// The embedded object does not parse (a broken build).
    #[error("the embedded eBPF object: {0}")]
    Object(#[from] aya_obj::ParseError),
    /// The object lacks a map.
    #[error("the embedded eBPF object lacks map {0}")]
    MissingMap(&'static str),
    /// Making a probe table failed.
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// A pin could not be removed.
    #[error("removing the pinned map {path}: {source}")]
    Remove {
        /// The pin.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What must be equal for a pinned map to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// `BPF_F_*` flags.
    pub flags: u32,
}

impl Layout {
    fn of_object(map: &aya_obj::Map) -> Self {
        Self {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
            flags: map.map_flags(),
        }
    }

    fn of_info(info: &MapInfo) -> Self {
        Self {
            // An unknown type compares unequal to every type this object declares.
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }

    /// The fields that differ, as "value size 40 (this agent: 56)".
    fn differences(&self, expected: &Self, with_max_entries: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, found: u32, wanted: u32| {
            if found != wanted {
                out.push(format!("{name} {found} (this agent: {wanted})"));
            }
        };
        field("map type", self.map_type, expected.map_type);
        field("key size", self.key_size, expected.key_size);
        field("value size", self.value_size, expected.value_size);
        if with_max_entries {
            field("max entries", self.max_entries, expected.max_entries);
        }
        field("flags", self.flags, expected.flags);
        out
    }
}

/// A pinned map this agent cannot reuse, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The map.
    pub map: &'static str,
    /// How it differs.
    pub difference: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.map, self.difference)
    }
}

/// What each map should be: the object's definitions with the settings' sizes, and the
/// template of the per-pod tables of the maps of maps.
pub fn expected(
    sizes: &MapSizes,
) -> Result<BTreeMap<&'static str, (Layout, Option<Layout>)>, PinCheckError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)?;
    let overrides: BTreeMap<&str, u32> = sizes.max_entries().into_iter().collect();
    names::ALL
        .iter()
        .map(|&name| {
            let map = object
                .maps
                .get(name)
                .ok_or(PinCheckError::MissingMap(name))?;
            let mut layout = Layout::of_object(map);
            if let Some(&n) = overrides.get(name) {
                layout.max_entries = n;
            }
            Ok((name, (layout, map.inner().as_ref().map(Layout::of_object))))
        })
        .collect()
}

/// The maps pinned in `pin_dir` that this object, with `sizes`, cannot reuse. Empty when
/// nothing is pinned (a first start) or everything fits.
pub fn check(pin_dir: &Path, sizes: &MapSizes) -> Result<Vec<Mismatch>, PinCheckError> {
    let expected = expected(sizes)?;
    let mut mismatches = Vec::new();
    let mut missing = Vec::new();
    for (&name, (layout, inner)) in &expected {
        let path = pin_dir.join(name);
        if !path.exists() {
            missing.push(name);
            continue;
        }
        let info = match MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => {
                mismatches.push(Mismatch {
                    map: name,
                    difference: format!("the pin cannot be opened as a map ({e})"),
                });
                continue;
            }
        };
        let differences = Layout::of_info(&info).differences(layout, true);
        if !differences.is_empty() {
            mismatches.push(Mismatch {
                map: name,
                difference: differences.join(", "),
            });
            continue;
        }
        if let Some(inner) = inner
            && let Some(difference) = check_tables(name, &path, inner, sizes)?
        {
            mismatches.push(Mismatch {
                map: name,
                difference,
            });
        }
    }
    // Some maps pinned and others not: a state no agent leaves, and kept maps would be
    // paired with fresh ones (tables with a fresh ENDPOINTS: see the module's docs).
    // COUNTERS alone may be missing: agents before it did not make it, and a fresh one
    // only restarts the datapath's counts (fill figures are then low until tables refill).
    let missing: Vec<&str> = missing
        .into_iter()
        .filter(|name| *name != names::COUNTERS || missing_others(&expected, pin_dir))
        .collect();
    if !missing.is_empty() && missing.len() < expected.len() {
        for name in missing {
            mismatches.push(Mismatch {
                map: name,
                difference: "not pinned, while other maps of the instance are".into(),
            });
        }
    }
    Ok(mismatches)
}

/// Whether a map other than COUNTERS is not pinned in `pin_dir`.
fn missing_others<V>(expected: &BTreeMap<&'static str, V>, pin_dir: &Path) -> bool {
    expected
        .keys()
        .any(|name| *name != names::COUNTERS && !pin_dir.join(name).exists())
}

/// Whether the map of maps pinned at `path` takes the tables this agent makes: a fresh
/// table of the agent's layout is inserted under a key no pod uses, and removed. If the
/// map is full, one of its tables is compared with the template instead (the kernel made
/// sure it matches the map's template when it was inserted). `None`: it does.
fn check_tables(
    name: &'static str,
    path: &Path,
    template: &Layout,
    sizes: &MapSizes,
) -> Result<Option<String>, PinCheckError> {
    let outer = MapData::from_pin(path)
        .and_then(Map::from_map_data)
        .and_then(HashOfMaps::<MapData, u32, MapData>::try_from);
    let mut outer = match outer {
        Ok(outer) => outer,
        Err(e) => return Ok(Some(format!("cannot be opened as a map of maps ({e})"))),
    };
    let (key_size, value_size) = if name == names::CONNTRACK {
        (size_of::<CtKey>(), size_of::<CtEntry>())
    } else {
        (size_of::<FragKey>(), size_of::<FragValue>())
    };
    // The agent's tables must match what the object's template says, or the loaded
    // programs would read them otherwise.
    if (key_size as u32, value_size as u32) != (template.key_size, template.value_size) {
        return Ok(Some(format!(
            "the object's per-pod table template (key {} bytes, value {}) differs from the \
             tables this agent makes (key {key_size}, value {value_size})",
            template.key_size, template.value_size
        )));
    }
    let table = if name == names::CONNTRACK {
        lru_table_data::<CtKey, CtEntry>(name, "ct_probe", sizes.conntrack)?
    } else {
        lru_table_data::<FragKey, FragValue>(name, "frag_probe", sizes.fragments)?
    };
    let Some(key) = (PROBE_KEYS_FROM..=u32::MAX)
        .rev()
        .find(|k| matches!(outer.get(k, 0), Err(MapError::KeyNotFound)))
    else {
        return Ok(Some("no free key to probe its per-pod tables".into()));
    };
    match outer.insert(key, &table, 0) {
        Ok(()) => {
            // Gone again before any pod could get this id (ids count up from 1).
            let _ = outer.remove(&key);
            Ok(None)
        }
        Err(MapError::SyscallError(e)) if is_full(&e.io_error) => compare_a_table(&outer, template),
        Err(e) => Ok(Some(format!(
            "the kernel refused a per-pod table of this agent's layout (key {key_size} \
             bytes, value {value_size}): {e}"
        ))),
    }
}

/// Probe keys are taken from the top of the key space, far from any endpoint id.
const PROBE_KEYS_FROM: u32 = u32::MAX - 16;

fn is_full(e: &io::Error) -> bool {
    use nix::errno::Errno;
    [Errno::E2BIG, Errno::ENOSPC]
        .iter()
        .any(|&errno| e.raw_os_error() == Some(errno as i32))
}

/// Compares one of the tables in a full map of maps with `template`.
fn compare_a_table(
    outer: &HashOfMaps<MapData, u32, MapData>,
    template: &Layout,
) -> Result<Option<String>, PinCheckError> {
    let Some(Ok(key)) = outer.keys().next() else {
        return Ok(Some("full, yet no table can be read from it".into()));
    };
    let info = outer.get(&key, 0).and_then(|t| t.info());
    Ok(match info {
        Ok(info) => {
            let differences = Layout::of_info(&info).differences(template, false);
            (!differences.is_empty())
                .then(|| format!("its per-pod tables have {}", differences.join(", ")))
        }
        Err(e) => Some(format!("its per-pod table {key} cannot be read ({e})")),
    })
}

/// Unpins every map of the instance in `pin_dir` (its links stay: the next attach swaps
/// their programs), so that loading makes them afresh.
pub fn unpin_maps(pin_dir: &Path) -> Result<(), PinCheckError> {
    for name in names::ALL {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(PinCheckError::Remove {
                    path: path.display().to_string(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the pins in `pin_dir` and, if any cannot be reused, replaces all of them (see
/// the module's docs): logs which map differs and how. Returns what differed.
pub fn replace_incompatible(
    pin_dir: &Path,
    sizes: &MapSizes,
) -> Result<Vec<Mismatch>, PinCheckError> {
    let mismatches = check(pin_dir, sizes)?;
    if mismatches.is_empty() {
        return Ok(mismatches);
    }
    for m in &mismatches {
        tracing::warn!(
            pin_dir = %pin_dir.display(),
            map = m.map,
            difference = %m.difference,
            "pinned map does not fit this agent"
        );
    }
    tracing::warn!(
        pin_dir = %pin_dir.display(),
        "replacing all pinned maps of the instance: tracked connections restart; the old \
         programs enforce the previous state until the first sync swaps them"
    );
    unpin_maps(pin_dir)?;
    Ok(mismatches)
}
