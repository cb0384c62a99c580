//! The CNI plugin's requests (ADD, CHECK, DEL), taken on the agent's task: a new
//! sandbox's pod is synced at once and answered after the sync that enforces it.

use std::time::Instant;

use policy_common::maps::Direction;
use tokio::sync::oneshot;

use super::{
    Agent, Command, Waiting,
    api::{EndpointDelete, EndpointReply, EndpointRequest},
    endpoints::same_pod,
    interfaces::{Lookup, Refusal},
    pods::PodState,
};
use crate::{
    datapath::Datapath,
    model::{ObjectRef, Pod},
    source::Kind,
};

impl<D: Datapath> Agent<D> {
    pub(super) async fn command(&mut self, command: Command) {
        match command {
            Command::Add {
                request,
                pod,
                reply,
            } => self.add_endpoint(request, pod.map(|p| *p), reply).await,
            Command::Check { request, reply } => {
                let _ = reply.send(self.check_endpoint(&request));
            }
            Command::Delete { request, reply } => {
                self.delete_endpoint(&request);
                let _ = reply.send(EndpointReply::Deleted);
            }
        }
    }

    /// Takes a new sandbox's pod in: its addresses and interface come from the plugin,
    /// the rest from the source (or `fetched` from the API server). Answered after the sync.
    #[tracing::instrument(skip_all, fields(pod = %request.pod(), container = %request.container_id))]
    async fn add_endpoint(
        &mut self,
        request: EndpointRequest,
        fetched: Option<Pod>,
        reply: oneshot::Sender<EndpointReply>,
    ) {
        let id = request.pod();
        let known = self
            .source
            .cluster
            .pods
            .get(&id)
            .filter(|p| same_pod(p.uid.as_deref(), request.uid.as_deref()))
            .cloned();
        let Some(pod) = known.or(fetched) else {
            let _ = reply.send(EndpointReply::UnknownPod {
                message: format!(
                    "pod {id} is not known to the agent ({})",
                    self.config.source
                ),
            });
            return;
        };
        let replaced = self
            .cni
            .get(&id)
            .is_some_and(|old| old.container_id != request.container_id);
        // The pod's own among the interfaces the CNI result names; with none named, the
        // sync finds it by the route.
        let candidates = candidates(&request);
        let lookup = if candidates.is_empty() {
            None
        } else {
            Some(self.interfaces.named(&candidates).await)
        };
        if let Some(Lookup::Missing(why)) = &lookup {
            let _ = reply.send(EndpointReply::Failed {
                message: format!("pod {id}: {why}"),
            });
            return;
        }
        let interface = match &lookup {
            Some(Lookup::Found(iface)) => Some(iface),
            _ => None,
        };
        // A new sandbox of the pod: the old interface loses the programs first.
        if replaced || lookup.is_some() && self.reconciler.pods().interface(&id) != interface {
            self.reconciler.forget_interface(&id);
        }
        let mut request = request;
        request.interface = lookup.as_ref().and_then(recorded_interface);
        tracing::info!("sandbox added by the CNI plugin");
        self.cni.insert(&request, pod);
        self.overlay_sandboxes();
        self.changed(Instant::now());
        if let Some(lookup) = lookup {
            // Its endpoint entry is written before the programs are attached.
            self.settle(vec![(id.clone(), lookup)]);
        }
        match self.reconciler.pods().refusal(&id) {
            Some(refusal) => {
                let _ = reply.send(EndpointReply::Refused {
                    message: format!("pod {id}: {refusal}"),
                });
            }
            None => self.waiting.push((id, reply)),
        }
    }

    /// Lays the sandboxes over the cluster and saves them if that or a request changed
    /// them (before any ADD is answered).
    pub(super) fn overlay_sandboxes(&mut self) {
        let pods_listed = self.source.listed(Kind::Pod);
        self.cni.overlay(
            std::sync::Arc::make_mut(&mut self.source.cluster),
            &self.config.node_name,
            pods_listed,
        );
        self.save_sandboxes();
    }

    fn save_sandboxes(&mut self) {
        if let Err(e) = self.cni.save() {
            self.error(format!("saving the CNI sandboxes: {e}"));
        }
    }

    fn check_endpoint(&self, request: &EndpointRequest) -> EndpointReply {
        let id = request.pod();
        let sandbox = self
            .cni
            .get(&id)
            .is_some_and(|e| e.container_id == request.container_id);
        if let Some(refusal) = self.reconciler.pods().refusal(&id) {
            return EndpointReply::Refused {
                message: format!("pod {id}: {refusal}"),
            };
        }
        let iface = self.reconciler.pods().interface(&id);
        let attached = self.reconciler.pods().is_attached(&id);
        let candidates = candidates(request);
        let interface_matches =
            iface.is_some_and(|i| candidates.is_empty() || candidates.contains(&i.name));
        if !sandbox || !interface_matches || !attached {
            return EndpointReply::Failed {
                message: format!(
                    "pod {id} (container {}) is not enforced: sandbox {}, interface {}, programs {}",
                    request.container_id,
                    if sandbox { "known" } else { "unknown" },
                    iface.map_or("not found", |i| i.name.as_str()),
                    if attached { "attached" } else { "not attached" },
                ),
            };
        }
        self.enforced(&id)
    }

    fn delete_endpoint(&mut self, request: &EndpointDelete) {
        let Some(id) = self.cni.remove(&request.container_id, request.pod.as_ref()) else {
            return;
        };
        tracing::info!(pod = %id, container = %request.container_id, "sandbox deleted");
        self.save_sandboxes();
        // The sandbox's addresses are gone with it, whatever the source still says.
        if self.source.cluster.pods.contains_key(&id) {
            let cluster = std::sync::Arc::make_mut(&mut self.source.cluster);
            if let Some(pod) = cluster.pods.get_mut(&id) {
                pod.ips.clear();
            }
        }
        self.reconciler.remove_pod(&id);
        self.changed(Instant::now());
    }

    /// The answer for an enforced pod.
    fn enforced(&self, pod: &ObjectRef) -> EndpointReply {
        let info = self.reconciler.compiled().endpoints.get(pod);
        EndpointReply::Enforced {
            interface: self
                .reconciler
                .pods()
                .interface(pod)
                .map(|i| i.name.clone())
                .unwrap_or_default(),
            ingress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Ingress)),
            egress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Egress)),
        }
    }

    /// Answers the CNI requests `waiting` for a sync that ended (`error`: it failed).
    pub(super) fn answer_waiting(&self, waiting: Waiting, error: Option<&str>) {
        for (pod, reply) in waiting {
            let answer = match error {
                Some(e) => EndpointReply::Failed {
                    message: format!("the agent could not sync: {e}"),
                },
                None if self.reconciler.datapath().left_out().contains(&pod) => {
                    EndpointReply::Failed {
                        message: format!(
                            "pod {pod}: ENDPOINTS is full ({} pods): its traffic is dropped; \
                         raise --map-size endpoints",
                            self.reconciler
                                .datapath()
                                .capacity(policy_common::maps::names::ENDPOINTS)
                        ),
                    }
                }
                None if self.reconciler.pods().is_attached(&pod) => self.enforced(&pod),
                None => match self.reconciler.pods().get(&pod) {
                    Some(PodState::Refused(refusal, _)) => EndpointReply::Refused {
                        message: format!("pod {pod}: {refusal}"),
                    },
                    Some(PodState::Waiting(why)) => EndpointReply::Failed {
                        message: format!("no programs attached for pod {pod}: {why}"),
                    },
                    Some(PodState::Found(_) | PodState::Attached(_)) | None => {
                        EndpointReply::Failed {
                            message: format!(
                                "no programs attached for pod {pod}: {}",
                                self.errors
                                    .back()
                                    .map_or("its interface was not found", String::as_str)
                            ),
                        }
                    }
                },
            };
            let _ = reply.send(answer);
        }
    }
}

/// The host-side interfaces a CNI request names.
fn candidates(request: &EndpointRequest) -> Vec<String> {
    if request.host_interfaces.is_empty() {
        request.interface.iter().cloned().collect()
    } else {
        request.host_interfaces.clone()
    }
}

/// The interface a sandbox records as its pod's, to be checked again after a restart: the
/// one found, or the one refused (but never a bridge: behind it, the pod's port may still
/// be found by the route).
fn recorded_interface(lookup: &Lookup) -> Option<String> {
    match lookup {
        Lookup::Found(iface) => Some(iface.name.clone()),
        Lookup::Refused(Refusal::Bridge { .. }) | Lookup::Missing(_) => None,
        Lookup::Refused(refusal) => refusal.interface().map(str::to_owned),
    }
}
