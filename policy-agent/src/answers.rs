//! Every question of a scenario ([`crate::plan`]) answered when the output asks for it, a
//! source at a time: `matrix` on 10,000 pods asks a hundred million questions, and neither
//! the questions nor their answers are ever held together. What is held grows with the
//! hosts (a row, the columns of a table), never with the pairs.
//!
//! The answers come in the order [`Reachability`](crate::report::Reachability) sorts them
//! and tables lay them out, so that the output is the one an in-memory run would print
//! (the tests compare the two).

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    plan::{
        Host, Question, ServiceQuestion, ServiceTarget, probe, questions_from,
        service_probe_verdict, service_questions_from,
    },
    report::{Family, Probe, TableKey, Tables, Through, escape},
};

/// The answers of a scenario's questions, computed as they are asked for.
pub struct Answers<'a, A, T> {
    hosts: &'a [Host],
    targets: &'a [ServiceTarget],
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
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        order.sort_by(|&a, &b| hosts[a].label.cmp(&hosts[b].label));
        let by_label = order
            .chunk_by(|&a, &b| hosts[a].label == hosts[b].label)
            .map(<[usize]>::to_vec)
            .collect();
        let mut by_row: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, host) in hosts.iter().enumerate() {
            by_row
                .entry(escape(&host.label).to_string())
                .or_default()
                .push(i);
        }
        Self {
            hosts,
            targets,
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
            for q in questions_from(self.hosts, from) {
                if wanted(address_key(&q)) {
                    out.push(probe(self.hosts, &q, (self.allowed)(&q)));
                }
            }
            for q in service_questions_from(self.hosts, self.targets, from) {
                if wanted(service_key(&self.targets[q.target])) {
                    let verdict = (self.through)(&q);
                    out.push(service_probe_verdict(self.hosts, self.targets, &q, verdict));
                }
            }
        }
        out
    }

    /// Whether some pod has an address of `family`.
    fn pods_of(&self, family: Family) -> bool {
        self.hosts
            .iter()
            .any(|h| h.pod.is_some() && h.ip(family).is_some())
    }

    /// The hosts that serve a table's protocol and port on an address of its family.
    fn serving(&self, key: &TableKey) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| h.ip(key.family).is_some() && h.serves.contains(&(key.protocol, key.port)))
            .collect()
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
// of them is a pod and both have the family, a pod to a Service frontend of its family.
impl<A, T> Tables for Answers<'_, A, T>
where
    A: Fn(&Question) -> bool,
    T: Fn(&ServiceQuestion) -> Option<bool>,
{
    fn keys(&self) -> Vec<TableKey> {
        let mut keys = BTreeSet::new();
        for family in [Family::IPv4, Family::IPv6] {
            let pods = self.pods_of(family);
            for dst in self.hosts.iter().filter(|h| h.ip(family).is_some()) {
                if dst.pod.is_none() && !pods {
                    continue;
                }
                keys.extend(dst.serves.iter().map(|&(protocol, port)| TableKey {
                    through: Through::Address,
                    protocol,
                    port,
                    family,
                }));
            }
        }
        keys.extend(
            self.targets
                .iter()
                .filter(|t| self.pods_of(t.family()))
                .map(service_key),
        );
        keys.into_iter().collect()
    }

    fn layout(&self, key: &TableKey) -> (Vec<String>, Vec<String>) {
        let pods = self.pods_of(key.family);
        let label = |h: &Host| escape(&h.label).to_string();
        match key.through {
            Through::Address => {
                let serving = self.serving(key);
                let pod_serves = serving.iter().any(|h| h.pod.is_some());
                let rows = self
                    .hosts
                    .iter()
                    .filter(|h| h.ip(key.family).is_some())
                    .filter(|h| {
                        if h.pod.is_some() {
                            !serving.is_empty()
                        } else {
                            pod_serves
                        }
                    })
                    .map(label)
                    .collect();
                let columns = serving
                    .into_iter()
                    .filter(|h| h.pod.is_some() || pods)
                    .map(label)
                    .collect();
                (sorted(rows), sorted(columns))
            }
            Through::Services => {
                let targets: Vec<&ServiceTarget> = self
                    .targets
                    .iter()
                    .filter(|t| service_key(t) == *key)
                    .collect();
                let rows = self
                    .hosts
                    .iter()
                    .filter(|h| h.pod.is_some() && h.ip(key.family).is_some())
                    .filter(|_| !targets.is_empty())
                    .map(label)
                    .collect();
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
    }
}
