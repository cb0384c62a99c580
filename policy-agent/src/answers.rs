//! Every question of a scenario ([`crate::plan`]) answered when the output asks for it, a
//! source at a time: `matrix` on 10,000 pods asks a hundred million questions, and neither
//! the questions nor their answers are ever held together. What is held grows with the
//! hosts (a row, the columns of a table), never with the pairs.
//!
//! The answers come in the order [`Reachability`](crate::report::Reachability) sorts them
//! and tables lay them out, so that the output is the one an in-memory run would print
//! (the tests compare the two).
//!
//! Only the questions between the hosts [`Shown`] (`matrix --from/--to/--namespace`) are
//! asked: a filtered matrix costs what it shows, and prints what the whole matrix would
//! with the other probes left out.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    plan::{
        Host, Question, ServiceQuestion, ServiceTarget, probe, questions_to, service_probe_verdict,
        service_questions_from,
    },
    report::{Family, Probe, TableKey, Tables, Through, escape},
};

/// The sources, destinations and Service frontends a matrix shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// Whether each host is a source shown.
    sources: Vec<bool>,
    /// The hosts shown as destinations, in host order.
    destinations: Vec<usize>,
    /// Whether each Service target is shown.
    targets: Vec<bool>,
}

impl Shown {
    /// Every host and target.
    pub fn all(hosts: &[Host], targets: &[ServiceTarget]) -> Self {
        Self::new(hosts, targets, |_| true, |_| true, |_| true)
    }

    /// The hosts `source` and `destination` say yes to, and the targets `target` does.
    pub fn new(
        hosts: &[Host],
        targets: &[ServiceTarget],
        source: impl Fn(&Host) -> bool,
        destination: impl Fn(&Host) -> bool,
        target: impl Fn(&ServiceTarget) -> bool,
    ) -> Self {
        Self {
            sources: hosts.iter().map(source).collect(),
            destinations: (0..hosts.len())
                .filter(|&i| destination(&hosts[i]))
                .collect(),
            targets: targets.iter().map(target).collect(),
        }
    }

    /// The indices of the sources shown.
    pub fn sources(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.sources.len()).filter(|&i| self.sources[i])
    }

    /// The indices of the destinations shown.
    pub fn destinations(&self) -> &[usize] {
        &self.destinations
    }

    /// The indices of the Service targets shown.
    pub fn targets(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.targets.len()).filter(|&i| self.targets[i])
    }
}

/// The answers of a scenario's questions, computed as they are asked for.
pub struct Answers<'a, A, T> {
    hosts: &'a [Host],
    targets: &'a [ServiceTarget],
    /// What is shown.
    shown: Shown,
    /// The verdict on a question by address.
    allowed: A,
    /// The verdict on a question through a Service (`None`: it depends on the backend).
    through: T,
    /// The hosts by label, in label order (the order of the probes' `from`).
    by_label: Vec<Vec<usize>>,
    /// The hosts by label as tables print it (escaped).
    by_row: BTreeMap<String, Vec<usize>>,
}

impl<'a, A, T> Answers<'a, A, T>
where
    A: Fn(&Question) -> bool,
    T: Fn(&ServiceQuestion) -> Option<bool>,
{
    /// The questions about `hosts` and through `targets`, answered by `allowed` (by
    /// address) and `through` (through a Service) when asked.
    pub fn new(hosts: &'a [Host], targets: &'a [ServiceTarget], allowed: A, through: T) -> Self {
        Self::shown(hosts, targets, Shown::all(hosts, targets), allowed, through)
    }

    /// The questions between the hosts and targets `shown`, as [`Answers::new`] asks them.
    pub fn shown(
        hosts: &'a [Host],
        targets: &'a [ServiceTarget],
        shown: Shown,
        allowed: A,
        through: T,
    ) -> Self {
        let mut order: Vec<usize> = shown.sources().collect();
        order.sort_by(|&a, &b| hosts[a].label.cmp(&hosts[b].label));
        let by_label = order
            .chunk_by(|&a, &b| hosts[a].label == hosts[b].label)
            .map(<[usize]>::to_vec)
            .collect();
        let mut by_row: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in shown.sources() {
            by_row
                .entry(escape(&hosts[i].label).to_string())
                .or_default()
                .push(i);
        }
        Self {
            hosts,
            targets,
            shown,
            allowed,
            through,
            by_label,
            by_row,
        }
    }

    /// Every probe, in canonical order (see [`Reachability::new`](crate::report::Reachability::new)),
    /// answered a source at a time.
    pub fn probes(&self) -> impl Iterator<Item = Probe> + '_ {
        self.by_label.iter().flat_map(|sources| {
            let mut row = self.answer(sources, None);
            row.sort();
            row
        })
    }

    /// The probes from `sources`: all of them, or those of one table.
    fn answer(&self, sources: &[usize], table: Option<&TableKey>) -> Vec<Probe> {
        let wanted = |key: TableKey| table.is_none_or(|t| *t == key);
        let mut out = Vec::new();
        for &from in sources {
            for q in questions_to(self.hosts, from, self.shown.destinations()) {
                if wanted(address_key(&q)) {
                    out.push(probe(self.hosts, &q, (self.allowed)(&q)));
                }
            }
            for q in service_questions_from(self.hosts, self.targets, from) {
                if self.shown.targets[q.target] && wanted(service_key(&self.targets[q.target])) {
                    let verdict = (self.through)(&q);
                    out.push(service_probe_verdict(self.hosts, self.targets, &q, verdict));
                }
            }
        }
        out
    }

    /// The sources shown with an address of `family`.
    fn sources_of(&self, family: Family) -> impl Iterator<Item = &Host> {
        self.shown
            .sources()
            .map(|i| &self.hosts[i])
            .filter(move |h| h.ip(family).is_some())
    }

    /// Whether some source shown is a pod with an address of `family`.
    fn source_pods_of(&self, family: Family) -> bool {
        self.sources_of(family).any(|h| h.pod.is_some())
    }

    /// Whether some source shown has an address of `family`.
    fn any_source_of(&self, family: Family) -> bool {
        self.sources_of(family).next().is_some()
    }

    /// The destinations shown with an address of `family`.
    fn destinations_of(&self, family: Family) -> impl Iterator<Item = &Host> {
        self.shown
            .destinations()
            .iter()
            .map(|&i| &self.hosts[i])
            .filter(move |h| h.ip(family).is_some())
    }

    /// Which destinations of `family` are asked about: a pod by any source of that
    /// family, an external host by a pod (external to external is never asked).
    fn asked_of(&self, family: Family) -> impl Fn(&Host) -> bool {
        let (any, pods) = (self.any_source_of(family), self.source_pods_of(family));
        move |dst: &Host| if dst.pod.is_some() { any } else { pods }
    }

    /// The Service targets shown.
    fn targets_shown(&self) -> impl Iterator<Item = &ServiceTarget> {
        self.shown.targets().map(|i| &self.targets[i])
    }
}

/// The table of a question by address.
fn address_key(q: &Question) -> TableKey {
    TableKey {
        through: Through::Address,
        protocol: q.protocol,
        port: q.port,
        family: q.family,
    }
}

/// The table of a question through a Service frontend.
fn service_key(t: &ServiceTarget) -> TableKey {
    TableKey {
        through: Through::Services,
        protocol: t.protocol,
        port: t.port,
        family: t.family(),
    }
}

/// Sorted, without repeats.
fn sorted(mut labels: Vec<String>) -> Vec<String> {
    labels.sort_unstable();
    labels.dedup();
    labels
}

// Which tables, rows and columns hold a probe follows from `plan::questions_from` and
// `plan::service_questions_from` without asking every question: a host to a host when one
// of them is a pod and both have the family, a pod to a Service frontend of its family;
// among the sources, destinations and targets shown.
impl<A, T> Tables for Answers<'_, A, T>
where
    A: Fn(&Question) -> bool,
    T: Fn(&ServiceQuestion) -> Option<bool>,
{
    fn keys(&self) -> Vec<TableKey> {
        let mut keys = BTreeSet::new();
        for family in [Family::IPv4, Family::IPv6] {
            let asked = self.asked_of(family);
            for dst in self.destinations_of(family).filter(|h| asked(h)) {
                keys.extend(dst.serves.iter().map(|&(protocol, port)| TableKey {
                    through: Through::Address,
                    protocol,
                    port,
                    family,
                }));
            }
        }
        keys.extend(
            self.targets_shown()
                .filter(|t| self.source_pods_of(t.family()))
                .map(service_key),
        );
        keys.into_iter().collect()
    }

    fn layout(&self, key: &TableKey) -> (Vec<String>, Vec<String>) {
        let label = |h: &Host| escape(&h.label).to_string();
        match key.through {
            Through::Address => {
                let asked = self.asked_of(key.family);
                let columns: Vec<&Host> = self
                    .destinations_of(key.family)
                    .filter(|h| h.serves.contains(&(key.protocol, key.port)))
                    .filter(|h| asked(h))
                    .collect();
                let pod_column = columns.iter().any(|h| h.pod.is_some());
                let rows = self
                    .sources_of(key.family)
                    .filter(|h| {
                        if h.pod.is_some() {
                            !columns.is_empty()
                        } else {
                            pod_column
                        }
                    })
                    .map(label)
                    .collect();
                let columns = columns.into_iter().map(label).collect();
                (sorted(rows), sorted(columns))
            }
            Through::Services => {
                let targets: Vec<&ServiceTarget> = self
                    .targets_shown()
                    .filter(|t| service_key(t) == *key)
                    .collect();
                let rows = self
                    .sources_of(key.family)
                    .filter(|h| h.pod.is_some() && !targets.is_empty())
                    .map(label)
                    .collect();
                let pods = self.source_pods_of(key.family);
                let columns = targets
                    .into_iter()
                    .filter(|_| pods)
                    .map(|t| escape(&t.label).to_string())
                    .collect();
                (sorted(rows), sorted(columns))
            }
            // Node ports and host ports are probed by the lab only.
            Through::Node(_) => (Vec::new(), Vec::new()),
        }
    }

    fn row(&self, key: &TableKey, row: &str) -> Vec<Probe> {
        let sources = self.by_row.get(row).map_or(&[][..], Vec::as_slice);
        let mut probes = self.answer(sources, Some(key));
        probes.sort();
        probes
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        model::{ObjectRef, Protocol},
        plan::answer_with_services,
        report::{Reachability, write_json, write_tables},
    };

    /// A host: a pod `ns/name` (or, without a namespace, an external host) with addresses
    /// and ports.
    fn host(ns: Option<&str>, name: &str, ips: &[&str], serves: &[(Protocol, u16)]) -> Host {
        Host {
            label: ns.map_or_else(|| name.to_owned(), |ns| format!("{ns}/{name}")),
            pod: ns.map(|ns| ObjectRef::new(ns, name)),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            serves: serves.to_vec(),
        }
    }

    fn target(label: &str, address: &str, protocol: Protocol, port: u16) -> ServiceTarget {
        let (ns, name) = label.split_once('/').unwrap();
        ServiceTarget {
            label: label.to_owned(),
            service: ObjectRef::new(ns, name),
            address: address.parse::<IpAddr>().unwrap(),
            protocol,
            port,
            backends: Vec::new(),
        }
    }

    /// Streamed JSON and tables, and those of the same answers held in memory.
    fn both_ways(hosts: &[Host], targets: &[ServiceTarget]) -> [(String, String); 2] {
        // Any verdict will do, as long as both ways get the same.
        let allowed =
            |q: &Question| !(q.from * 7 + q.to * 3 + usize::from(q.port)).is_multiple_of(3);
        let through = |q: &ServiceQuestion| match (q.from + q.target) % 3 {
            0 => None,
            n => Some(n == 1),
        };
        let answers = Answers::new(hosts, targets, allowed, through);
        let mut json = Vec::new();
        write_json(&mut json, answers.probes()).unwrap();
        let mut tables = Vec::new();
        write_tables(&mut tables, &answers).unwrap();
        let held: Reachability = answer_with_services(hosts, targets, allowed, through);
        [
            (String::from_utf8(json).unwrap(), held.to_json()),
            (String::from_utf8(tables).unwrap(), held.render_table()),
        ]
    }

    #[test]
    fn streamed_output_is_what_the_answers_held_in_memory_print() {
        let tcp = Protocol::Tcp;
        let hosts = vec![
            host(
                Some("b"),
                "web",
                &["10.0.0.2", "fd00::2"],
                &[(tcp, 80), (Protocol::Udp, 53)],
            ),
            // Sorts before `b/web` as a label, after it as an ObjectRef.
            host(Some("a-b"), "x", &["10.0.0.3"], &[]),
            host(Some("a"), "x\nfake", &["10.0.0.4"], &[(tcp, 80)]),
            host(None, "203.0.113.5", &["203.0.113.5"], &[(tcp, 443)]),
            host(None, "2001:db8::5", &["2001:db8::5"], &[(tcp, 22)]),
        ];
        let targets = vec![
            target("b/svc", "10.96.0.1", tcp, 80),
            target("b/svc", "fd00:96::1", tcp, 80),
            target("a/other", "10.96.0.2", Protocol::Udp, 53),
        ];
        for (streamed, held) in both_ways(&hosts, &targets) {
            assert_eq!(streamed, held);
        }
    }

    /// Whether `label` is in the part of labels that `seed` picks (any subset may come out).
    fn picked(seed: u8, label: &str) -> bool {
        let sum = label
            .bytes()
            .fold(u32::from(seed), |a, b| a.wrapping_mul(31) + u32::from(b));
        sum % 3 != 0 || seed == 0
    }

    /// Streamed output of a matrix showing the sources, destinations and Services whose
    /// labels `seeds` pick, and that of the whole matrix's answers held in memory with the
    /// other probes left out.
    fn filtered_both_ways(
        hosts: &[Host],
        targets: &[ServiceTarget],
        [from, to, through_seed]: [u8; 3],
    ) -> [(String, String); 2] {
        let allowed = |q: &Question| (q.from * 5 + q.to + usize::from(q.port)).is_multiple_of(2);
        let through = |q: &ServiceQuestion| match (q.from * 3 + q.target) % 3 {
            0 => None,
            n => Some(n == 1),
        };
        let shown = Shown::new(
            hosts,
            targets,
            |h| picked(from, &h.label),
            |h| picked(to, &h.label),
            |t| picked(through_seed, &t.label),
        );
        let answers = Answers::shown(hosts, targets, shown, allowed, through);
        let mut json = Vec::new();
        write_json(&mut json, answers.probes()).unwrap();
        let mut tables = Vec::new();
        write_tables(&mut tables, &answers).unwrap();
        let whole: Reachability = answer_with_services(hosts, targets, allowed, through);
        let restricted = Reachability::new(
            whole
                .probes
                .into_iter()
                .filter(|p| {
                    picked(from, &p.from)
                        && match &p.service {
                            Some(s) => picked(through_seed, s),
                            None => picked(to, &p.to),
                        }
                })
                .collect(),
        );
        [
            (String::from_utf8(json).unwrap(), restricted.to_json()),
            (
                String::from_utf8(tables).unwrap(),
                restricted.render_table(),
            ),
        ]
    }

    fn arbitrary_host() -> impl Strategy<Value = Host> {
        let protocol = prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)];
        (
            proptest::option::of("[ab]{1,2}"),
            "[a-c]{1,2}",
            any::<(bool, bool)>(),
            proptest::collection::vec((protocol, 79u16..82), 0..3),
        )
            .prop_map(|(ns, name, (v4, v6), serves)| {
                let mut ips = Vec::new();
                // Names may repeat: two hosts with one label are one row.
                if v4 {
                    ips.push("10.0.0.1");
                }
                if v6 || !v4 {
                    ips.push("fd00::1");
                }
                host(ns.as_deref(), &name, &ips, &serves)
            })
    }

    proptest! {
        #[test]
        fn streamed_output_is_what_held_answers_print_for_any_hosts(
            hosts in proptest::collection::vec(arbitrary_host(), 0..8),
            services in proptest::collection::vec((0u16..2, any::<bool>(), 79u16..82), 0..3),
        ) {
            let targets: Vec<ServiceTarget> = services
                .iter()
                .map(|&(n, v6, port)| {
                    let address = if v6 { "fd00:96::1" } else { "10.96.0.1" };
                    target(&format!("s/svc{n}"), address, Protocol::Tcp, port)
                })
                .collect();
            for (streamed, held) in both_ways(&hosts, &targets) {
                prop_assert_eq!(streamed, held);
            }
        }

        #[test]
        fn a_filtered_matrix_is_the_whole_one_restricted_to_the_filter(
            hosts in proptest::collection::vec(arbitrary_host(), 0..8),
            services in proptest::collection::vec((0u16..2, any::<bool>(), 79u16..82), 0..3),
            seeds in any::<[u8; 3]>(),
        ) {
            let targets: Vec<ServiceTarget> = services
                .iter()
                .map(|&(n, v6, port)| {
                    let address = if v6 { "fd00:96::1" } else { "10.96.0.1" };
                    target(&format!("s/svc{n}"), address, Protocol::Tcp, port)
                })
                .collect();
            for (filtered, restricted) in filtered_both_ways(&hosts, &targets, seeds) {
                prop_assert_eq!(filtered, restricted);
            }
        }
    }
}
