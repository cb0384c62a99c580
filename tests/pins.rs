//! Maps pinned by another agent (an older layout, other sizes) are checked before the
//! datapath loads: if any does not fit, all of the instance's maps are replaced together;
//! maps that fit are reused. Root and the real bpffs; every instance has a unique name and
//! is removed when its test ends, also when it fails.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo};
use aya_obj::generated::bpf_map_type::{
    BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_LRU_HASH,
};
use policy_agent::{
    capacity::MapSizes,
    datapath::{BpfDatapath, bpffs},
};
use policy_common::maps::{CtEntry, EndpointInfo, names};

/// Prefix of this test's instances (stale ones of killed runs are swept by it).
const PREFIX: &str = "pintest-";
/// `EndpointInfo` before it held the link-local address.
const OLD_ENDPOINT_INFO_SIZE: u32 = 40;
/// A conntrack key of another layout than `CtKey`.
const OTHER_CT_KEY_SIZE: u32 = 24;

/// A pin instance of this test, removed (maps, links, directory) when dropped.
struct Instance(String);

impl Instance {
    fn new(tag: &str) -> Self {
        bpffs::sweep_stale(PREFIX);
        Self(format!("{PREFIX}{}-{tag}", std::process::id()))
    }

    fn dir(&self) -> PathBuf {
        Path::new(bpffs::PIN_ROOT).join(&self.0)
    }

    fn info(&self, map: &str) -> MapInfo {
        MapInfo::from_pin(self.dir().join(map)).expect("the map is pinned")
    }

    /// The kernel's id of every pinned map: equal ids, the same maps.
    fn ids(&self) -> Vec<u32> {
        names::ALL.iter().map(|m| self.info(m).id()).collect()
    }

    /// Loads with `sizes` and drops the datapath, leaving its maps pinned.
    fn load_and_leave(&self, sizes: MapSizes) -> Vec<String> {
        let dp = BpfDatapath::load_with(&self.0, sizes).expect("the datapath loads");
        dp.replaced_maps().iter().map(ToString::to_string).collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = bpffs::remove_instance(&self.0) {
            eprintln!("removing test instance {}: {e}", self.0);
        }
    }
}

/// Pins, at `path`, a plain map made by hand.
fn pin_map(path: &Path, map_type: u32, key: u32, value: u32, max_entries: u32) {
    let def = aya_obj::Map::new_from_params(map_type, key, value, max_entries, 0);
    let map = MapData::create(def, "stranger", None).expect("map created");
    map.pin(path).expect("map pinned");
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
/// Bytes of `union bpf_attr` passed (zero beyond the fields set).
const BPF_ATTR_SIZE: usize = 128;

fn bpf(cmd: libc::c_long, attr: &mut [u8; BPF_ATTR_SIZE]) -> libc::c_long {
    // SAFETY: `attr` is a zeroed bpf_attr of BPF_ATTR_SIZE bytes with the command's fields
    // set; the kernel reads no more than that.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), BPF_ATTR_SIZE) }
}

/// Pins, at `path`, a hash of maps laid out like `like` whose template is an LRU hash
/// with `inner_key`-byte keys (aya makes maps of maps only from an object).
fn pin_hash_of_maps(path: &Path, like: &MapInfo, inner_key: u32) {
    let inner = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_LRU_HASH as u32,
        inner_key,
        size_of::<CtEntry>() as u32,
        64,
        0,
    );
    let inner = MapData::create(inner, "template", None).expect("template created");
    let mut attr = [0u8; BPF_ATTR_SIZE];
    for (i, v) in [
        BPF_MAP_TYPE_HASH_OF_MAPS as u32,
        like.key_size(),
        like.value_size(),
        like.max_entries(),
        like.map_flags(),
        inner.fd().as_fd().as_raw_fd() as u32,
    ]
    .into_iter()
    .enumerate()
    {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    let fd = bpf(BPF_MAP_CREATE, &mut attr);
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut attr = [0u8; BPF_ATTR_SIZE];
    attr[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    let pinned = bpf(BPF_OBJ_PIN, &mut attr);
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is the descriptor the kernel just returned, owned here.
    unsafe { libc::close(fd as i32) };
    assert_eq!(pinned, 0, "BPF_OBJ_PIN: {error}");
}

#[test]
fn an_endpoints_map_of_the_old_layout_replaces_every_map_once() {
    let instance = Instance::new("layout");
    assert!(
        instance.load_and_leave(MapSizes::default()).is_empty(),
        "a first start"
    );
    let conntrack = instance.info(names::CONNTRACK).id();
    let endpoints = instance.dir().join(names::ENDPOINTS);
    std::fs::remove_file(&endpoints).unwrap();
    pin_map(
        &endpoints,
        BPF_MAP_TYPE_HASH as u32,
        4,
        OLD_ENDPOINT_INFO_SIZE,
        1024,
    );

    let replaced = instance.load_and_leave(MapSizes::default());
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert!(
        replaced[0].starts_with("ENDPOINTS: ")
            && replaced[0].contains(&format!(
                "value size {OLD_ENDPOINT_INFO_SIZE} (this agent: {})",
                size_of::<EndpointInfo>()
            )),
        "{replaced:?}"
    );
    let info = instance.info(names::ENDPOINTS);
    assert_eq!(info.value_size() as usize, size_of::<EndpointInfo>());
    assert_ne!(
        instance.info(names::CONNTRACK).id(),
        conntrack,
        "conntrack goes with the endpoints it belongs to"
    );

    let ids = instance.ids();
    assert!(instance.load_and_leave(MapSizes::default()).is_empty());
    assert_eq!(instance.ids(), ids, "maps that fit are reused");
}

#[test]
fn another_size_setting_replaces_the_maps_and_is_their_real_capacity() {
    let instance = Instance::new("sizes");
    instance.load_and_leave(MapSizes::default());
    let small = MapSizes {
        policy: 1000,
        ..MapSizes::default()
    };
    let dp = BpfDatapath::load_with(&instance.0, small).unwrap();
    let replaced: Vec<String> = dp.replaced_maps().iter().map(ToString::to_string).collect();
    assert_eq!(
        replaced,
        [format!(
            "POLICY: max entries {} (this agent: 1000)",
            MapSizes::default().policy
        )]
    );
    assert_eq!(dp.capacity(names::POLICY), 1000);
    let fill = dp.fill();
    let policy = fill.iter().find(|(m, _, _)| *m == names::POLICY).unwrap();
    assert_eq!(policy.2, 1000, "status and metrics show the real capacity");
    drop(dp);
    assert_eq!(instance.info(names::POLICY).max_entries(), 1000);
    let ids = instance.ids();
    assert!(instance.load_and_leave(small).is_empty());
    assert_eq!(instance.ids(), ids);
    assert_eq!(instance.load_and_leave(MapSizes::default()).len(), 1);
}

#[test]
fn a_conntrack_map_whose_tables_have_another_layout_is_replaced() {
    let instance = Instance::new("tables");
    instance.load_and_leave(MapSizes::default());
    let path = instance.dir().join(names::CONNTRACK);
    let like = instance.info(names::CONNTRACK);
    std::fs::remove_file(&path).unwrap();
    pin_hash_of_maps(&path, &like, OTHER_CT_KEY_SIZE);
    // The outer map looks the same: only the tables inside tell.
    let crafted = instance.info(names::CONNTRACK);
    assert_eq!(
        (
            crafted.key_size(),
            crafted.value_size(),
            crafted.max_entries()
        ),
        (like.key_size(), like.value_size(), like.max_entries())
    );

    let replaced = instance.load_and_leave(MapSizes::default());
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert!(
        replaced[0].starts_with("CONNTRACK: the kernel refused a per-pod table"),
        "{replaced:?}"
    );
    assert!(instance.load_and_leave(MapSizes::default()).is_empty());
}
