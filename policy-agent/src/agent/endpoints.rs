//! Pods the CNI plugin handed over before their containers started.
//!
//! At that moment the API server does not know the pod's addresses yet (the kubelet
//! reports them once the sandbox exists) and the watch may not even have delivered the
//! pod. The plugin's report fills the gap: its addresses and interface are laid over the
//! pod the source knows, and stay until the sandbox is deleted, so that a later watch
//! event without addresses does not undo them.
//!
//! They are also saved to a file next to the agent's socket (on the node's `/run`, so they
//! live exactly as long as the sandboxes can), for an agent restarted before the kubelet
//! has reported the addresses.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::api::EndpointRequest;
use crate::model::{Cluster, ObjectRef, Pod};

/// A sandbox as the CNI plugin reported it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CniEndpoint {
    /// `namespace/name` of the pod.
    pub pod_ref: ObjectRef,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The pod's uid, when the runtime passed it.
    pub uid: Option<String>,
    /// The pod's own host-side interface: the one the agent picked among those of the
    /// main plugin's result, if it found one there.
    pub interface: Option<String>,
    /// Addresses from the main plugin's result.
    pub ips: Vec<IpAddr>,
    /// The pod as known when the sandbox was added, for as long as the source lacks it
    /// (not saved: a restarted agent lists the pods afresh).
    #[serde(skip)]
    pub pod: Option<Pod>,
}

/// The sandboxes of this node's pods, by pod.
#[derive(Debug, Default)]
pub struct CniEndpoints {
    by_pod: BTreeMap<ObjectRef, CniEndpoint>,
    /// Where they are saved, if anywhere.
    file: Option<PathBuf>,
    /// Changed since last saved.
    dirty: bool,
}

/// The file an agent listening on `socket` keeps its sandboxes in.
pub fn sandboxes_file(socket: &Path) -> PathBuf {
    socket.with_extension("sandboxes.json")
}

/// The sandboxes file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not what an agent writes.
    #[error("{path}: not a sandboxes file: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
}

/// Whether two uids can belong to the same pod (an unknown uid matches any).
pub fn same_pod(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl CniEndpoints {
    /// No sandboxes yet; they will be saved in `file`.
    pub fn saved_in(file: PathBuf) -> Self {
        Self {
            file: Some(file),
            ..Self::default()
        }
    }

    /// Takes the sandboxes an earlier agent saved (none if there is no file). Those whose
    /// interface `exists` no more were deleted meanwhile and are dropped.
    pub fn load(&mut self, exists: impl Fn(&str) -> bool) -> Result<(), StateError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let text = match std::fs::read(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StateError::Io {
                    path: file.clone(),
                    source,
                });
            }
        };
        let saved: Vec<CniEndpoint> =
            serde_json::from_slice(&text).map_err(|source| StateError::Format {
                path: file.clone(),
                source,
            })?;
        for e in saved {
            if e.interface.as_deref().is_none_or(&exists) {
                self.by_pod.insert(e.pod_ref.clone(), e);
            } else {
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Writes the sandboxes to the file, if they changed (atomically: a crash leaves the
    /// old file or the new one).
    pub fn save(&mut self) -> Result<(), StateError> {
        let Some(path) = self.file.as_ref().filter(|_| self.dirty) else {
            return Ok(());
        };
        let saved: Vec<&CniEndpoint> = self.by_pod.values().collect();
        let text = serde_json::to_vec_pretty(&saved).expect("plain data serializes");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        self.dirty = false;
        Ok(())
    }

    /// The pods whose sandbox this node made.
    pub fn pods(&self) -> BTreeSet<ObjectRef> {
        self.by_pod.keys().cloned().collect()
    }

    /// The sandbox of `pod`, if one was added.
    pub fn get(&self, pod: &ObjectRef) -> Option<&CniEndpoint> {
        self.by_pod.get(pod)
    }

    /// Records a sandbox of `pod` (the pod as the agent knows it) from `request`,
    /// replacing an earlier sandbox of the pod.
    pub fn insert(&mut self, request: &EndpointRequest, pod: Pod) {
        self.by_pod.insert(
            request.pod(),
            CniEndpoint {
                pod_ref: request.pod(),
                container_id: request.container_id.clone(),
                uid: request.uid.clone().or_else(|| pod.uid.clone()),
                interface: request.interface.clone(),
                ips: request.ips.clone(),
                pod: Some(pod),
            },
        );
        self.dirty = true;
    }

    /// Forgets the sandbox `container_id` (of `pod`, if given); returns its pod.
    pub fn remove(&mut self, container_id: &str, pod: Option<&ObjectRef>) -> Option<ObjectRef> {
        let id = self
            .by_pod
            .iter()
            .find(|(id, e)| e.container_id == container_id && pod.is_none_or(|p| p == *id))
            .map(|(id, _)| id.clone())?;
        self.by_pod.remove(&id);
        self.dirty = true;
        Some(id)
    }

    /// Forgets whatever sandbox `pod` had (the API server deleted the pod).
    pub fn forget(&mut self, pod: &ObjectRef) {
        self.dirty |= self.by_pod.remove(pod).is_some();
    }

    /// Lays the sandboxes over `cluster`: each pod runs on `node` with the addresses its
    /// main plugin gave it; a pod the source has not delivered yet is added as it was when
    /// fetched. A source pod with another uid is a new pod of the same name: its old
    /// sandbox is forgotten. So is a sandbox loaded from the file whose pod the source
    /// lacks once `pods_listed` (it was deleted while no agent ran).
    pub fn overlay(&mut self, cluster: &mut Cluster, node: &str, pods_listed: bool) {
        let before = self.by_pod.len();
        self.by_pod.retain(|id, e| match cluster.pods.get(id) {
            Some(p) => same_pod(p.uid.as_deref(), e.uid.as_deref()),
            None => e.pod.is_some() || !pods_listed,
        });
        self.dirty |= self.by_pod.len() != before;
        for (id, e) in &self.by_pod {
            if !cluster.pods.contains_key(id) {
                match &e.pod {
                    Some(pod) => cluster.add_pod(pod.clone()),
                    None => continue,
                }
            }
            let pod = cluster.pods.get_mut(id).expect("just ensured");
            pod.ips.clone_from(&e.ips);
            pod.node = Some(node.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn pod(name: &str, uid: Option<&str>, ips: &[&str]) -> Pod {
        Pod {
            id: ObjectRef::new("x", name),
            labels: Labels::new(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            node: None,
            ports: Vec::new(),
            uid: uid.map(str::to_owned),
            ..Pod::default()
        }
    }

    fn request(name: &str, container: &str, ip: &str) -> EndpointRequest {
        EndpointRequest {
            namespace: "x".into(),
            name: name.into(),
            uid: Some("u1".into()),
            container_id: container.into(),
            interface: Some("veth1".into()),
            host_interfaces: vec!["veth1".into()],
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn a_sandbox_gives_a_pod_without_addresses_its_address_and_node() {
        let mut cluster = Cluster::default();
        cluster.add_pod(pod("a", Some("u1"), &[]));
        let mut cni = CniEndpoints::default();
        cni.insert(&request("a", "c1", "10.0.0.1"), pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1", true);
        let a = &cluster.pods[&ObjectRef::new("x", "a")];
        assert_eq!(a.ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.node.as_deref(), Some("node-1"));

        // A watch event without addresses does not undo it.
        cluster.add_pod(pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1", true);
        assert_eq!(cluster.pods[&ObjectRef::new("x", "a")].ips.len(), 1);
    }

    #[test]
    fn a_pod_the_source_lacks_is_added_and_a_new_uid_ends_the_sandbox() {
        let mut cluster = Cluster::default();
        let mut cni = CniEndpoints::default();
        cni.insert(&request("a", "c1", "10.0.0.1"), pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1", true);
        assert!(cluster.pods.contains_key(&ObjectRef::new("x", "a")));

        cluster.add_pod(pod("a", Some("u2"), &[]));
        cni.overlay(&mut cluster, "node-1", true);
        assert!(cni.get(&ObjectRef::new("x", "a")).is_none());
        assert!(cluster.pods[&ObjectRef::new("x", "a")].ips.is_empty());
    }

    /// A file of its own, removed on drop.
    struct StateFile(PathBuf);

    impl Drop for StateFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn saved_sandboxes_come_back_while_their_interface_and_pod_exist() {
        let file = StateFile(std::env::temp_dir().join(format!(
            "policy-agent-sandboxes-{}.json",
            std::process::id()
        )));
        let mut cni = CniEndpoints::saved_in(file.0.clone());
        cni.load(|_| true).unwrap();
        cni.insert(&request("a", "c1", "10.0.0.1"), pod("a", Some("u1"), &[]));
        cni.insert(&request("b", "c2", "10.0.0.2"), pod("b", Some("u1"), &[]));
        cni.save().unwrap();

        // The kubelet has not reported a's address: the restarted agent still knows it.
        let mut cni = CniEndpoints::saved_in(file.0.clone());
        cni.load(|_| true).unwrap();
        let mut cluster = Cluster::default();
        cluster.add_pod(pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1", false);
        assert_eq!(cluster.pods[&ObjectRef::new("x", "a")].ips.len(), 1);
        // b is not listed yet: kept, but not made up.
        assert!(cni.get(&ObjectRef::new("x", "b")).is_some());
        assert!(!cluster.pods.contains_key(&ObjectRef::new("x", "b")));
        // Pods listed without b: it was deleted while no agent ran.
        cni.overlay(&mut cluster, "node-1", true);
        assert!(cni.get(&ObjectRef::new("x", "b")).is_none());
        cni.save().unwrap();
        let mut cni = CniEndpoints::saved_in(file.0.clone());
        cni.load(|_| true).unwrap();
        assert!(cni.get(&ObjectRef::new("x", "b")).is_none());

        // A sandbox whose interface is gone was deleted meanwhile.
        let mut cni = CniEndpoints::saved_in(file.0.clone());
        cni.load(|_| false).unwrap();
        assert!(cni.get(&ObjectRef::new("x", "a")).is_none());
    }

    #[test]
    fn a_file_that_is_not_a_sandboxes_file_is_an_error_naming_it() {
        let file = StateFile(std::env::temp_dir().join(format!(
            "policy-agent-sandboxes-bad-{}.json",
            std::process::id()
        )));
        std::fs::write(&file.0, "{not json").unwrap();
        let e = CniEndpoints::saved_in(file.0.clone())
            .load(|_| true)
            .unwrap_err();
        assert!(e.to_string().contains(&file.0.display().to_string()), "{e}");
    }

    #[test]
    fn removing_a_sandbox_needs_its_container_id() {
        let mut cni = CniEndpoints::default();
        cni.insert(&request("a", "c1", "10.0.0.1"), pod("a", None, &[]));
        assert_eq!(cni.remove("c0", None), None);
        assert_eq!(cni.remove("c1", None), Some(ObjectRef::new("x", "a")));
        assert_eq!(cni.remove("c1", None), None);
    }
}
