//! Where each local pod stands on its way to enforcement: one state per pod.
//!
//! A pod waits for its interface, gets one (or has the one it claims refused), and then
//! has the programs attached to it. Keeping that as one value per pod, rather than as
//! separate sets of pods found, attached and refused, makes impossible combinations (a pod
//! attached without an interface, found and refused at once) unrepresentable. Everything
//! here is plain data: the agent applies what it decides to the datapath.

use std::collections::{BTreeMap, BTreeSet};

use super::interfaces::{Interface, Lookup, Refusal};
use crate::model::ObjectRef;

/// One local pod's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// No interface found yet: why.
    Waiting(String),
    /// The interface found is not the pod's alone. With [`Refusal::Shared`], the interface
    /// the pod claims (so that a later claimant sees it is shared).
    Refused(Refusal, Option<Interface>),
    /// Its interface is known; the programs are not attached yet.
    Found(Interface),
    /// Its interface has the programs attached.
    Attached(Interface),
}

impl PodState {
    /// The pod's interface, once found.
    pub fn interface(&self) -> Option<&Interface> {
        match self {
            Self::Found(iface) | Self::Attached(iface) => Some(iface),
            Self::Waiting(_) | Self::Refused(..) => None,
        }
    }

    /// Why the pod has no interface, when it has none.
    pub fn not_attached(&self) -> Option<String> {
        match self {
            Self::Waiting(why) => Some(format!("waiting: {why}")),
            Self::Refused(refusal, _) => Some(format!("interface refused: {refusal}")),
            Self::Found(_) | Self::Attached(_) => None,
        }
    }

    /// The refusal, for a pod whose interface was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(refusal, _) => Some(refusal),
            _ => None,
        }
    }
}

/// Every local pod's state.
#[derive(Debug, Default)]
pub struct PodStates(BTreeMap<ObjectRef, PodState>);

/// What [`PodStates::settle`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Pods that got an interface (their index, for the datapath).
    pub found: Vec<(ObjectRef, u32)>,
    /// Pods that lost the interface they had (it turned out to be shared): detach them.
    pub lost: Vec<ObjectRef>,
    /// Pods newly refused, with the refusal (to count and report).
    pub refused: Vec<(ObjectRef, Refusal)>,
}

impl PodStates {
    /// A pod's state.
    pub fn get(&self, pod: &ObjectRef) -> Option<&PodState> {
        self.0.get(pod)
    }

    /// A pod's interface, once found.
    pub fn interface(&self, pod: &ObjectRef) -> Option<&Interface> {
        self.get(pod).and_then(PodState::interface)
    }

    /// Whether the pod's programs are attached.
    pub fn is_attached(&self, pod: &ObjectRef) -> bool {
        matches!(self.get(pod), Some(PodState::Attached(_)))
    }

    /// The refusal of a pod whose interface was refused.
    pub fn refusal(&self, pod: &ObjectRef) -> Option<&Refusal> {
        self.get(pod).and_then(PodState::refusal)
    }

    /// Pods with an interface, and the interface.
    pub fn with_interfaces(&self) -> impl Iterator<Item = (&ObjectRef, &Interface)> {
        self.0
            .iter()
            .filter_map(|(pod, state)| Some((pod, state.interface()?)))
    }

    /// Pods whose interface is known and not attached yet, with the interface.
    pub fn to_attach(&self) -> Vec<(ObjectRef, Interface)> {
        self.0
            .iter()
            .filter_map(|(pod, state)| match state {
                PodState::Found(iface) => Some((pod.clone(), iface.clone())),
                _ => None,
            })
            .collect()
    }

    /// How many pods have the programs attached.
    pub fn attached(&self) -> usize {
        self.0
            .values()
            .filter(|s| matches!(s, PodState::Attached(_)))
            .count()
    }

    /// How many pods have their interface refused.
    pub fn refused(&self) -> usize {
        self.0
            .values()
            .filter(|s| matches!(s, PodState::Refused(..)))
            .count()
    }

    /// Records that the pod's programs are attached.
    pub fn set_attached(&mut self, pod: &ObjectRef) {
        if let Some(state) = self.0.get_mut(pod)
            && let PodState::Found(iface) = state
        {
            *state = PodState::Attached(iface.clone());
        }
    }

    /// Forgets the pod's interface; returns whether it had one (which the datapath must
    /// then detach). A refusal or a reason to wait is kept.
    pub fn forget_interface(&mut self, pod: &ObjectRef) -> bool {
        if self.interface(pod).is_some() {
            self.0.remove(pod);
            true
        } else {
            false
        }
    }

    /// Forgets everything about the pod.
    pub fn remove(&mut self, pod: &ObjectRef) {
        self.0.remove(pod);
    }

    /// Keeps the pods that have no interface only if they are still local (a pod with an
    /// interface is detached by the sync when it goes).
    pub fn retain_local(&mut self, local: &BTreeSet<ObjectRef>) {
        self.0
            .retain(|pod, state| state.interface().is_some() || local.contains(pod));
    }

    /// Records why a pod has no interface; returns the refusal if it is a new one (to
    /// count and report), `None` if nothing changed or the pod just waits.
    pub fn set_not_attached(&mut self, pod: &ObjectRef, state: PodState) -> Option<Refusal> {
        debug_assert!(state.interface().is_none());
        if self.0.get(pod) == Some(&state) {
            return None;
        }
        let refusal = state.refusal().cloned();
        self.0.insert(pod.clone(), state);
        refusal
    }

    /// Takes in what looking for pods' interfaces found: an interface found for a pod
    /// becomes its own unless another pod claims it too, in which case none of them keeps
    /// it (an interface that carries two pods is no pod's).
    pub fn settle(&mut self, lookups: Vec<(ObjectRef, Lookup)>) -> Settled {
        let shared = self.shared_interfaces(&lookups);
        let mut settled = Settled::default();
        for (pod, (refusal, iface)) in &shared {
            if self.forget_interface(pod) {
                settled.lost.push(pod.clone());
            }
            let state = PodState::Refused(refusal.clone(), Some(iface.clone()));
            if let Some(refusal) = self.set_not_attached(pod, state) {
                settled.refused.push((pod.clone(), refusal));
            }
        }
        for (pod, lookup) in lookups {
            match lookup {
                Lookup::Found(_) if shared.contains_key(&pod) => {}
                Lookup::Found(iface) => {
                    settled.found.push((pod.clone(), iface.index));
                    self.0.insert(pod, PodState::Found(iface));
                }
                Lookup::Missing(why) => {
                    self.set_not_attached(&pod, PodState::Waiting(why));
                }
                Lookup::Refused(refusal) => {
                    if let Some(refusal) =
                        self.set_not_attached(&pod, PodState::Refused(refusal, None))
                    {
                        settled.refused.push((pod, refusal));
                    }
                }
            }
        }
        settled
    }

    /// The pods that claim an interface another pod claims too, each with its refusal:
    /// among the pods that have one, those refused for sharing one (unless looked up again
    /// now), and what `lookups` just found.
    fn shared_interfaces(
        &self,
        lookups: &[(ObjectRef, Lookup)],
    ) -> BTreeMap<ObjectRef, (Refusal, Interface)> {
        let looked_up: BTreeSet<&ObjectRef> = lookups.iter().map(|(pod, _)| pod).collect();
        let held = self.0.iter().filter_map(|(pod, state)| match state {
            _ if looked_up.contains(pod) => None,
            PodState::Found(iface) | PodState::Attached(iface) => Some((pod, iface)),
            PodState::Refused(_, Some(iface)) => Some((pod, iface)),
            _ => None,
        });
        let new = lookups.iter().filter_map(|(pod, l)| match l {
            Lookup::Found(iface) => Some((pod, iface)),
            _ => None,
        });
        let mut claims: BTreeMap<u32, Vec<(&ObjectRef, &Interface)>> = BTreeMap::new();
        for (pod, iface) in held.chain(new) {
            claims.entry(iface.index).or_default().push((pod, iface));
        }
        let mut shared = BTreeMap::new();
        for holders in claims.values().filter(|h| h.len() > 1) {
            for &(pod, iface) in holders {
                let others: Vec<String> = holders
                    .iter()
                    .filter(|(other, _)| *other != pod)
                    .map(|(other, _)| other.to_string())
                    .collect();
                let refusal = Refusal::Shared {
                    name: iface.name.clone(),
                    others: others.join(", "),
                };
                shared.insert(pod.clone(), (refusal, iface.clone()));
            }
        }
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> ObjectRef {
        ObjectRef::new("x", name)
    }

    fn iface(name: &str, index: u32) -> Interface {
        Interface {
            name: name.to_owned(),
            index,
        }
    }

    #[test]
    fn a_pod_goes_from_waiting_to_found_to_attached() {
        let mut pods = PodStates::default();
        let settled = pods.settle(vec![(pod("a"), Lookup::Missing("no route".into()))]);
        assert_eq!(settled, Settled::default());
        assert_eq!(
            pods.get(&pod("a")),
            Some(&PodState::Waiting("no route".into()))
        );
        assert!(pods.to_attach().is_empty());

        let settled = pods.settle(vec![(pod("a"), Lookup::Found(iface("veth1", 7)))]);
        assert_eq!(settled.found, vec![(pod("a"), 7)]);
        assert_eq!(pods.to_attach(), vec![(pod("a"), iface("veth1", 7))]);
        assert!(!pods.is_attached(&pod("a")));

        pods.set_attached(&pod("a"));
        assert!(pods.is_attached(&pod("a")) && pods.to_attach().is_empty());
        assert_eq!(pods.attached(), 1);
        assert!(pods.forget_interface(&pod("a")));
        assert!(pods.get(&pod("a")).is_none());
        // Attaching what has no interface changes nothing.
        pods.set_attached(&pod("a"));
        assert!(!pods.is_attached(&pod("a")));
    }

    #[test]
    fn an_interface_two_pods_claim_is_neither_pods_and_the_holder_loses_it() {
        let mut pods = PodStates::default();
        pods.settle(vec![(pod("a"), Lookup::Found(iface("veth1", 7)))]);
        pods.set_attached(&pod("a"));
        // Another pod's lookup finds the same interface: both are refused, and the one
        // that had it must be detached.
        let settled = pods.settle(vec![(pod("b"), Lookup::Found(iface("veth1", 7)))]);
        assert_eq!(settled.lost, vec![pod("a")]);
        assert!(settled.found.is_empty());
        assert_eq!(settled.refused.len(), 2);
        for p in ["a", "b"] {
            assert!(
                matches!(pods.refusal(&pod(p)), Some(Refusal::Shared { name, .. }) if name == "veth1"),
                "{:?}",
                pods.get(&pod(p))
            );
            assert!(pods.interface(&pod(p)).is_none());
        }
        assert_eq!(pods.refused(), 2);
        // A third claimant sees the interface is shared too, and a repeated refusal is
        // not reported again.
        let settled = pods.settle(vec![(pod("c"), Lookup::Found(iface("veth1", 7)))]);
        assert_eq!(
            settled
                .refused
                .iter()
                .map(|(p, _)| p.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"],
            "the others' refusals name the new claimant"
        );
        let again = pods.settle(vec![(pod("c"), Lookup::Found(iface("veth1", 7)))]);
        assert!(
            again.refused.is_empty() && again.found.is_empty(),
            "{again:?}"
        );
    }

    #[test]
    fn a_pod_looked_up_again_is_not_counted_against_itself() {
        let mut pods = PodStates::default();
        pods.settle(vec![(pod("a"), Lookup::Found(iface("veth1", 7)))]);
        let settled = pods.settle(vec![(pod("a"), Lookup::Found(iface("veth1", 7)))]);
        assert!(settled.refused.is_empty() && settled.lost.is_empty());
        assert_eq!(pods.interface(&pod("a")), Some(&iface("veth1", 7)));
    }

    #[test]
    fn pods_gone_from_the_node_are_forgotten_unless_they_still_hold_an_interface() {
        let mut pods = PodStates::default();
        pods.settle(vec![
            (pod("a"), Lookup::Found(iface("veth1", 7))),
            (pod("b"), Lookup::Missing("no route".into())),
        ]);
        pods.retain_local(&BTreeSet::new());
        assert!(pods.interface(&pod("a")).is_some(), "the sync detaches it");
        assert!(pods.get(&pod("b")).is_none());
    }
}
