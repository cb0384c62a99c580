//! Pods the CNI plugin handed over before their containers started.
//!
//! At that moment the API server does not know the pod's addresses yet (the kubelet
//! reports them once the sandbox exists) and the watch may not even have delivered the
//! pod. The plugin's report fills the gap: its addresses and interface are laid over the
//! pod the source knows, and stay until the sandbox is deleted, so that a later watch
//! event without addresses does not undo them.

use std::{collections::BTreeMap, net::IpAddr};

use super::api::EndpointRequest;
use crate::model::{Cluster, ObjectRef, Pod};

/// A sandbox as the CNI plugin reported it.
#[derive(Clone, Debug)]
pub struct CniEndpoint {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The pod's uid, when the runtime passed it.
    pub uid: Option<String>,
    /// Addresses from the main plugin's result.
    pub ips: Vec<IpAddr>,
    /// The pod as known when the sandbox was added, for as long as the source lacks it.
    pub pod: Pod,
}

/// The sandboxes of this node's pods, by pod.
#[derive(Debug, Default)]
pub struct CniEndpoints {
    by_pod: BTreeMap<ObjectRef, CniEndpoint>,
}

/// Whether two uids can belong to the same pod (an unknown uid matches any).
pub fn same_pod(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl CniEndpoints {
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
                container_id: request.container_id.clone(),
                uid: request.uid.clone().or_else(|| pod.uid.clone()),
                ips: request.ips.clone(),
                pod,
            },
        );
    }

    /// Forgets the sandbox `container_id` (of `pod`, if given); returns its pod.
    pub fn remove(&mut self, container_id: &str, pod: Option<&ObjectRef>) -> Option<ObjectRef> {
        let id = self
            .by_pod
            .iter()
            .find(|(id, e)| e.container_id == container_id && pod.is_none_or(|p| p == *id))
            .map(|(id, _)| id.clone())?;
        self.by_pod.remove(&id);
        Some(id)
    }

    /// Forgets whatever sandbox `pod` had (the API server deleted the pod).
    pub fn forget(&mut self, pod: &ObjectRef) {
        self.by_pod.remove(pod);
    }

    /// Lays the sandboxes over `cluster`: each pod runs on `node` with the addresses its
    /// main plugin gave it; a pod the source has not delivered yet is added as it was when
    /// fetched. A source pod with another uid is a new pod of the same name: its old
    /// sandbox is forgotten.
    pub fn overlay(&mut self, cluster: &mut Cluster, node: &str) {
        self.by_pod.retain(|id, e| {
            cluster
                .pods
                .get(id)
                .is_none_or(|p| same_pod(p.uid.as_deref(), e.uid.as_deref()))
        });
        for (id, e) in &self.by_pod {
            if !cluster.pods.contains_key(id) {
                cluster.add_pod(e.pod.clone());
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
            host_network: false,
            uid: uid.map(str::to_owned),
        }
    }

    fn request(name: &str, container: &str, ip: &str) -> EndpointRequest {
        EndpointRequest {
            namespace: "x".into(),
            name: name.into(),
            uid: Some("u1".into()),
            container_id: container.into(),
            interface: Some("veth1".into()),
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn a_sandbox_gives_a_pod_without_addresses_its_address_and_node() {
        let mut cluster = Cluster::default();
        cluster.add_pod(pod("a", Some("u1"), &[]));
        let mut cni = CniEndpoints::default();
        cni.insert(&request("a", "c1", "10.0.0.1"), pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1");
        let a = &cluster.pods[&ObjectRef::new("x", "a")];
        assert_eq!(a.ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.node.as_deref(), Some("node-1"));

        // A watch event without addresses does not undo it.
        cluster.add_pod(pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1");
        assert_eq!(cluster.pods[&ObjectRef::new("x", "a")].ips.len(), 1);
    }

    #[test]
    fn a_pod_the_source_lacks_is_added_and_a_new_uid_ends_the_sandbox() {
        let mut cluster = Cluster::default();
        let mut cni = CniEndpoints::default();
        cni.insert(&request("a", "c1", "10.0.0.1"), pod("a", Some("u1"), &[]));
        cni.overlay(&mut cluster, "node-1");
        assert!(cluster.pods.contains_key(&ObjectRef::new("x", "a")));

        cluster.add_pod(pod("a", Some("u2"), &[]));
        cni.overlay(&mut cluster, "node-1");
        assert!(cni.get(&ObjectRef::new("x", "a")).is_none());
        assert!(cluster.pods[&ObjectRef::new("x", "a")].ips.is_empty());
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
