//! The reconcile step without root: a [`Reconciler`] on a [`MemoryDatapath`], fed
//! clusters from manifest text and the interface lookups the agent would make.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use policy_common::maps::{IpKey, IpcacheValue, names};
use tokio::time::Instant;

use super::{
    interfaces::{Interface, Lookup, Refusal},
    metrics::Metrics,
    pods::PodState,
    reconcile::{CompileDone, Reconciler},
    retry::FIRST_RETRY,
    source_state::{Applied, SourceState},
};
use crate::{
    capacity::MapSizes,
    compiler::{Compiler, NodeConfig},
    datapath::MemoryDatapath,
    model::{Cluster, ObjectRef},
    source::{
        InForce, Kind, Object, RejectReason, Rejection, SourceEvent,
        manifests::{self, Loaded},
    },
};

const NODE: &str = "node-1";

/// Namespace `shop`, pods a, b, c on this node and r on another; `policies` added.
fn cluster(policies: &str) -> Cluster {
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    for (name, node, ip) in [
        ("a", NODE, "10.1.0.1"),
        ("b", NODE, "10.1.0.2"),
        ("c", NODE, "10.1.0.3"),
        ("r", "node-2", "10.2.0.1"),
    ] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, \
             labels: {{app: {name}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, \
             image: i, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{phase: Running, podIP: \
             {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        ));
    }
    yaml.push_str(policies);
    let mut loaded = Loaded::default();
    manifests::load_str(&yaml, Path::new("test.yaml"), &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.cluster
}

/// A policy isolating pod a's ingress, allowing pod `from` on TCP `port`.
fn allow(name: &str, from: &str, port: u16) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, \
         namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  \
         - from: [{{podSelector: {{matchLabels: {{app: {from}}}}}}}]\n    ports: [{{protocol: TCP, \
         port: {port}}}]\n"
    )
}

fn pod(name: &str) -> ObjectRef {
    ObjectRef::new("shop", name)
}

fn node() -> NodeConfig {
    NodeConfig {
        name: NODE.into(),
        addresses: vec!["192.0.2.1".parse().unwrap()],
        sandboxes: Default::default(),
        map_sizes: MapSizes::default(),
    }
}

fn local() -> BTreeSet<ObjectRef> {
    ["a", "b", "c"].into_iter().map(pod).collect()
}

fn found(name: &str, index: u32) -> Lookup {
    Lookup::Found(Interface {
        name: name.into(),
        index,
    })
}

/// A reconciler on memory with interfaces veth-a, veth-b and veth-c (11, 12, 13).
fn reconciler() -> Reconciler<MemoryDatapath> {
    let mut datapath = MemoryDatapath::new(MapSizes::default());
    for (name, index) in [("veth-a", 11), ("veth-b", 12), ("veth-c", 13)] {
        datapath.add_link(name, index);
    }
    Reconciler::new(datapath, Metrics::new())
}

/// Each local pod finds its own interface.
fn own_interfaces() -> Vec<(ObjectRef, Lookup)> {
    vec![
        (pod("a"), found("veth-a", 11)),
        (pod("b"), found("veth-b", 12)),
        (pod("c"), found("veth-c", 13)),
    ]
}

/// Ends a sync with what `done` compiled, attaching every pod found.
fn finish(r: &mut Reconciler<MemoryDatapath>, done: CompileDone) {
    r.finish(
        done,
        None,
        std::time::Instant::now(),
        &BTreeSet::new(),
        usize::MAX,
    )
    .unwrap();
}

/// Syncs `cluster` with no new lookups.
fn sync(r: &mut Reconciler<MemoryDatapath>, cluster: &Cluster) -> Result<(), String> {
    r.reconcile(cluster, node(), &local(), Vec::new(), Instant::now())
        .map(|_| ())
}

#[test]
fn the_first_sync_writes_what_the_compiler_produced_and_attaches() {
    let cluster = cluster(&allow("web", "b", 80));
    let mut r = reconciler();
    assert!(!r.ready());
    r.reconcile(&cluster, node(), &local(), own_interfaces(), Instant::now())
        .unwrap();
    // An independent compile of the same cluster says what the maps must hold.
    let expected = Compiler::new().compile(&cluster, &node());
    let maps = &r.datapath().maps.contents;
    assert!(!expected.policy.is_empty());
    assert_eq!(maps.policy, expected.policy);
    assert_eq!(maps.ipcache, expected.ipcache);
    assert_eq!(maps.cidr, expected.cidr);
    assert_eq!(maps.endpoints.len(), 3);
    for (name, index) in [("a", 11), ("b", 12), ("c", 13)] {
        let written = maps.endpoints[&index];
        let compiled = expected.endpoints[&pod(name)];
        assert_eq!(written.endpoint_id, compiled.endpoint_id, "pod {name}");
        assert_eq!(
            written.ingress_ruleset, compiled.ingress_ruleset,
            "pod {name}"
        );
        assert_eq!(written.flags, compiled.flags, "pod {name}");
        assert!(written.generation > 0, "pod {name}");
        assert_eq!(r.datapath().attached_to(index), Some(&pod(name)));
        assert!(r.pods().is_attached(&pod(name)));
    }
    assert!(r.ready());
    assert_eq!(r.syncs(), 1);
    assert_eq!(r.datapath().writes(), 1);
}

#[test]
fn a_failed_sync_keeps_the_last_state_backs_off_and_recovery_clears_it() {
    let metrics = Metrics::new();
    let mut datapath = MemoryDatapath::new(MapSizes::default());
    for (name, index) in [("veth-a", 11), ("veth-b", 12), ("veth-c", 13)] {
        datapath.add_link(name, index);
    }
    let mut r = Reconciler::new(datapath, Arc::clone(&metrics));
    let v1 = cluster(&allow("web", "b", 80));
    r.reconcile(&v1, node(), &local(), own_interfaces(), Instant::now())
        .unwrap();
    let enforced = r.datapath().maps.contents.clone();

    let v2 = cluster(&allow("web", "c", 81));
    r.datapath_mut().refuse_writes(Some(names::POLICY));
    let mut now = Instant::now();
    let mut waits = Vec::new();
    for failures in 1..=4u32 {
        let e = r
            .reconcile(&v2, node(), &local(), Vec::new(), now)
            .unwrap_err();
        assert!(e.contains("POLICY"), "{e}");
        // Nothing half-written: the last state stays enforced.
        assert_eq!(r.datapath().maps.contents, enforced);
        let retry = r.retry().expect("backing off");
        assert_eq!(retry.failures(), failures);
        assert!(retry.last_error().contains("POLICY"));
        waits.push(retry.next() - now);
        now = retry.next();
    }
    assert_eq!(metrics.sync_failures.get(), 4);
    // Each wait is the doubled one plus up to as much again of jitter: it grows, and it
    // is not the bare doubling (jittered).
    for (i, wait) in waits.iter().enumerate() {
        let base = FIRST_RETRY * 2u32.pow(i as u32);
        assert!(*wait >= base && *wait < base * 2, "wait {i}: {wait:?}");
    }
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
    assert!(
        waits
            .iter()
            .enumerate()
            .any(|(i, w)| *w != FIRST_RETRY * 2u32.pow(i as u32)),
        "no jitter: {waits:?}"
    );
    // The pods stay attached and enforced by the last good state.
    assert!(r.pods().is_attached(&pod("a")));
    assert_eq!(r.syncs(), 1);

    r.datapath_mut().refuse_writes(None);
    sync(&mut r, &v2).unwrap();
    assert!(r.retry().is_none(), "a success clears the backoff");
    let expected = Compiler::new().compile(&v2, &node());
    assert_eq!(
        r.datapath().maps.contents.policy.len(),
        expected.policy.len()
    );
    assert_ne!(r.datapath().maps.contents.policy, enforced.policy);
    assert_eq!(r.syncs(), 2);
}

#[test]
fn a_map_too_small_for_the_compile_fails_before_writing_anything() {
    let sizes = MapSizes::with(&["ipcache=2".parse().unwrap()]).unwrap();
    let mut datapath = MemoryDatapath::new(sizes);
    datapath.add_link("veth-a", 11);
    let mut r = Reconciler::new(datapath, Metrics::new());
    let e = r
        .reconcile(
            &cluster(""),
            node(),
            &local(),
            vec![(pod("a"), found("veth-a", 11))],
            Instant::now(),
        )
        .unwrap_err();
    assert!(e.contains("IPCACHE is full"), "{e}");
    assert_eq!(r.datapath().writes(), 0);
    // Nothing written, so no programs either: an attached interface never lacks its entry.
    assert!(!r.pods().is_attached(&pod("a")));
    assert!(r.datapath().attached_to(11).is_none());
    assert!(!r.ready());
}

#[test]
fn a_full_resync_corrects_entries_written_behind_the_agents_back() {
    let metrics = Metrics::new();
    let mut datapath = MemoryDatapath::new(MapSizes::default());
    datapath.add_link("veth-a", 11);
    let mut r = Reconciler::new(datapath, Arc::clone(&metrics));
    let cluster = cluster(&allow("web", "b", 80));
    r.reconcile(
        &cluster,
        node(),
        &local(),
        vec![(pod("a"), found("veth-a", 11))],
        Instant::now(),
    )
    .unwrap();
    let good = r.datapath().maps.contents.clone();

    // Another process adds an address, deletes a policy entry and opens pod a's ingress.
    let contents = &mut r.datapath_mut().maps.contents;
    let foreign = IpKey::default();
    contents.ipcache.insert(foreign, IpcacheValue::default());
    let first = *contents.policy.keys().next().unwrap();
    contents.policy.remove(&first);
    contents.endpoints.get_mut(&11).unwrap().flags = 0;
    let tampered = contents.clone();

    // An ordinary sync trusts its record of what it wrote: nothing to do.
    sync(&mut r, &cluster).unwrap();
    assert_eq!(r.datapath().maps.contents, tampered);
    assert_eq!(metrics.drift_corrected.get(), 0);

    r.request_full_resync();
    sync(&mut r, &cluster).unwrap();
    assert_eq!(r.datapath().maps.contents, good);
    assert_eq!(metrics.drift_corrected.get(), 3);
    let errors = r.take_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("full resync: 3 map entries")),
        "{errors:?}"
    );
    // Corrected once: the next check finds nothing.
    r.request_full_resync();
    sync(&mut r, &cluster).unwrap();
    assert_eq!(metrics.drift_corrected.get(), 3);
}

#[test]
fn a_pods_interface_is_found_refused_fails_to_attach_and_is_lost() {
    let mut r = reconciler();
    let cluster = cluster("");
    // a: its own veth; b: a bridge (refused); c: attach fails.
    r.datapath_mut().refuse_attach("veth-c", true);
    r.reconcile(
        &cluster,
        node(),
        &local(),
        vec![
            (pod("a"), found("veth-a", 11)),
            (
                pod("b"),
                Lookup::Refused(Refusal::Bridge {
                    name: "cni0".into(),
                }),
            ),
            (pod("c"), found("veth-c", 13)),
        ],
        Instant::now(),
    )
    .unwrap();
    assert!(r.pods().is_attached(&pod("a")));
    assert!(matches!(
        r.pods().get(&pod("b")),
        Some(PodState::Refused(..))
    ));
    assert!(!r.pods().is_attached(&pod("b")));
    match r.pods().get(&pod("c")) {
        Some(PodState::Waiting(why)) => assert!(why.contains("veth-c"), "{why}"),
        other => panic!("c: {other:?}"),
    }
    assert!(r.pods().interface(&pod("c")).is_none(), "looked up again");
    let errors = r.take_errors();
    assert!(
        errors.iter().any(|e| e.contains("cni0 is a bridge")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("attaching to veth-c")),
        "{errors:?}"
    );

    // c's interface works now, and b claims a's veth: shared, so neither a nor b has it.
    r.datapath_mut().refuse_attach("veth-c", false);
    r.reconcile(
        &cluster,
        node(),
        &local(),
        vec![
            (pod("b"), found("veth-a", 11)),
            (pod("c"), found("veth-c", 13)),
        ],
        Instant::now(),
    )
    .unwrap();
    assert!(r.pods().is_attached(&pod("c")));
    assert_eq!(r.datapath().attached_to(13), Some(&pod("c")));
    for name in ["a", "b"] {
        assert!(r.pods().refusal(&pod(name)).is_some(), "pod {name}");
    }
    assert!(r.datapath().attached_to(11).is_none(), "a lost its veth");
    let endpoints = &r.datapath().maps.contents.endpoints;
    assert!(!endpoints.contains_key(&11), "{endpoints:?}");
    assert!(endpoints.contains_key(&13));

    // c leaves the node: detached, its entry removed.
    let staying: BTreeSet<ObjectRef> = ["a", "b"].into_iter().map(pod).collect();
    r.reconcile(&cluster, node(), &staying, Vec::new(), Instant::now())
        .unwrap();
    assert!(r.datapath().attached_to(13).is_none());
    assert!(r.datapath().maps.contents.endpoints.is_empty());
    assert!(r.pods().get(&pod("c")).is_none());
}

#[test]
fn a_rejected_policy_version_keeps_the_last_good_one_in_force() {
    let mut source = SourceState::default();
    let v1 = cluster(&allow("web", "b", 80));
    assert_eq!(
        source.apply(SourceEvent::Snapshot {
            cluster: Box::new(v1.clone()),
            errors: Vec::new(),
        }),
        Applied::Changed
    );
    assert!(source.complete());
    let mut r = reconciler();
    r.reconcile(
        &source.cluster,
        node(),
        &local(),
        own_interfaces(),
        Instant::now(),
    )
    .unwrap();
    let enforced = r.datapath().maps.contents.clone();

    let id = pod("web");
    let rejected = Rejection {
        kind: Kind::Policy,
        id: id.clone(),
        reason: RejectReason::Invalid,
        message: "spec.ingress[0].ports[0].port: must be between 1 and 65535".into(),
        in_force: InForce::LastGood,
    };
    assert_eq!(
        source.apply(SourceEvent::Rejected(rejected)),
        Applied::Rejected
    );
    sync(&mut r, &source.cluster).unwrap();
    assert_eq!(r.datapath().maps.contents, enforced, "v1 stays in force");
    assert!(source.rejections.contains_key(&(Kind::Policy, id.clone())));

    // A good version replaces it, and clears the rejection.
    let v3 = cluster(&allow("web", "c", 81));
    let Some(policy) = v3.policies.get(&id).cloned() else {
        panic!("no policy {id}");
    };
    assert_eq!(
        source.apply(SourceEvent::Applied(Object::Policy(policy))),
        Applied::Changed
    );
    assert!(source.rejections.is_empty());
    sync(&mut r, &source.cluster).unwrap();
    assert_ne!(r.datapath().maps.contents.policy, enforced.policy);
    assert_eq!(source.events(), 3);
}

#[test]
fn one_compile_at_a_time() {
    let mut r = reconciler();
    let cluster = cluster("");
    let job = r.start(&Arc::new(cluster.clone()), node()).unwrap();
    assert!(r.compiling());
    assert!(
        r.start(&Arc::new(cluster.clone()), node()).is_err(),
        "a second compile started"
    );
    let done = std::thread::spawn(move || job.run()).join().unwrap();
    finish(&mut r, done);
    assert!(!r.compiling());
    assert!(r.start(&Arc::new(cluster.clone()), node()).is_ok());
}

#[test]
fn found_pods_are_attached_a_few_at_a_time_waiting_sandboxes_first() {
    let cluster = cluster(&allow("web", "b", 80));
    let mut r = reconciler();
    r.forget_gone(&local());
    r.settle(own_interfaces());
    let job = r.start(&Arc::new(cluster.clone()), node()).unwrap();
    let done = job.run();
    // Pod c's sandbox waits for it: attached whatever the budget.
    let waiting: BTreeSet<ObjectRef> = [pod("c")].into_iter().collect();
    r.finish(done, None, std::time::Instant::now(), &waiting, 1)
        .unwrap();
    let attached = |r: &Reconciler<MemoryDatapath>| {
        ["a", "b", "c"]
            .into_iter()
            .filter(|p| r.pods().is_attached(&pod(p)))
            .collect::<Vec<_>>()
    };
    assert_eq!(attached(&r), ["a", "c"], "the waiting pod and one more");
    assert!(r.attaches_left());
    assert!(
        !r.ready(),
        "ready while a pod the sync found is not attached"
    );
    // Every endpoint entry is written before any attach: none waits for a later sync.
    let endpoints = &r.datapath().maps.contents.endpoints;
    for index in [11, 12, 13] {
        assert!(endpoints.contains_key(&index), "no entry for {index}");
    }
    r.attach_found(None, &BTreeSet::new(), 1);
    assert_eq!(attached(&r), ["a", "b", "c"]);
    assert!(!r.attaches_left());
    assert!(r.ready());
}

#[test]
fn an_id_the_maps_may_still_use_after_a_failed_sync_is_not_given_to_another_ruleset() {
    let mut r = reconciler();
    let v1 = cluster(&allow("web", "b", 80));
    r.reconcile(&v1, node(), &local(), own_interfaces(), Instant::now())
        .unwrap();
    let enforced = r.datapath().maps.contents.clone();
    // Pod a's rules change (its ruleset gets another id), but the sync fails: a's
    // endpoint still points at its old ruleset.
    let v2 = cluster(&allow("web", "c", 81));
    r.datapath_mut().refuse_writes(Some(names::POLICY));
    r.reconcile(&v2, node(), &local(), Vec::new(), Instant::now())
        .unwrap_err();
    assert_eq!(r.datapath().maps.contents, enforced);
    // Now pod b gets rules of its own: a new ruleset, which must not take the id pod a's
    // endpoint still reads until the next sync moves it.
    let other = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: \
                 {name: other, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  \
                 ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n    ports: \
                 [{protocol: TCP, port: 82}]\n";
    let v3 = cluster(&format!("{}{other}", allow("web", "c", 81)));
    let job = r.start(&Arc::new(v3), node()).unwrap();
    let done = job.run();
    let in_maps: BTreeSet<u32> = enforced
        .endpoints
        .values()
        .flat_map(|e| [e.ingress_ruleset, e.egress_ruleset])
        .collect();
    let entries = |c: &crate::datapath::MapContents, ruleset: u32| {
        c.policy
            .iter()
            .filter(|(k, _)| k.data.ruleset == ruleset)
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>()
    };
    r.datapath_mut().refuse_writes(None);
    finish(&mut r, done);
    let written = r.datapath().maps.contents.clone();
    for ruleset in in_maps {
        let now = entries(&written, ruleset);
        assert!(
            now.is_empty() || now == entries(&enforced, ruleset),
            "ruleset {ruleset}, still read by an endpoint during the sync, was given other \
             rules: {now:?}"
        );
    }
}

#[test]
fn a_pod_is_attached_only_to_the_interface_its_written_entry_is_for() {
    let cluster = cluster(&allow("web", "b", 80));
    let mut r = reconciler();
    let local = local();
    r.forget_gone(&local);
    r.settle(vec![(pod("a"), found("veth-a", 11))]);
    sync(&mut r, &cluster).unwrap();
    assert!(r.pods().is_attached(&pod("a")));
    // Pod b's interface is found after that sync wrote the maps: the compile had an entry
    // for b, but the maps have none for its interface until the next sync.
    r.settle(vec![(pod("b"), found("veth-b", 12))]);
    r.attach_found(None, &BTreeSet::new(), usize::MAX);
    assert!(
        !r.pods().is_attached(&pod("b")),
        "attached before its endpoint entry was written: all its traffic would be dropped"
    );
    // Pod c's name now belongs to a new interface (its veth was replaced): the entry
    // written for index 13 must not send another interface's programs astray.
    r.settle(vec![(pod("c"), found("veth-c", 13))]);
    r.datapath_mut().add_link("veth-c", 99);
    sync(&mut r, &cluster).unwrap();
    assert!(r.pods().is_attached(&pod("b")), "b's entry is written now");
    assert!(!r.pods().is_attached(&pod("c")));
    let errors = r.take_errors().join("\n");
    assert!(
        errors.contains("veth-c is now index 99, not 13"),
        "{errors}"
    );
}

#[test]
fn each_sync_writes_what_a_full_compile_of_the_cluster_then_gives() {
    // The reconciler's compiler follows the cluster by its differences; a compiler with
    // the same history that compiles the whole cluster from nothing else each time says
    // what the maps must hold after every sync.
    let mut full = Compiler::new();
    let mut r = reconciler();
    let v1 = cluster(&allow("web", "b", 80));
    let mut v2 = cluster(&format!(
        "{}{}",
        allow("web", "b", 80),
        allow("db", "c", 5432)
    ));
    let mut v3 = v2.clone();
    v3.pods
        .get_mut(&pod("b"))
        .unwrap()
        .labels
        .insert("app".into(), "c".into());
    let mut v4 = v3.clone();
    v4.policies.remove(&ObjectRef::new("shop", "web"));
    v4.pods.remove(&pod("r"));
    // A namespace the source never declared, as a relist of namespaces leaves it.
    v2.namespaces.clear();
    for (step, cluster) in [&v1, &v2, &v3, &v4, &v1].into_iter().enumerate() {
        let lookups = if step == 0 {
            own_interfaces()
        } else {
            Vec::new()
        };
        r.reconcile(cluster, node(), &local(), lookups, Instant::now())
            .unwrap();
        full.forget_caches();
        let expected = full.compile(cluster, &node());
        // The sync succeeded: ids dropped so far may be reused, as the reconciler's are.
        full.written();
        assert_eq!(r.compiled(), &expected, "step {step}");
        let maps = &r.datapath().maps.contents;
        assert_eq!(maps.policy, expected.policy, "step {step}");
        assert_eq!(maps.ipcache, expected.ipcache, "step {step}");
        assert_eq!(maps.cidr, expected.cidr, "step {step}");
    }
}
