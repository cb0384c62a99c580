//! `matrix --summary`: the probes of a matrix folded into pairs of workloads (see
//! [`crate::workload`]), per table (how, protocol, port, family). A cell says whether
//! every probe between the two workloads was allowed, every one denied, or whether the
//! pods of the pair differ ("partly"). What is held grows with the workload pairs shown,
//! never with the pod pairs: the probes are folded in as they stream by.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    io,
};

use serde::Serialize;

use crate::{
    model::{Cluster, Protocol},
    plan::Host,
    report::{
        ALLOWED, BACKEND_DEPENDENT, DENIED, Family, NodeFrontend, Probe, TableKey, Through, escape,
    },
    workload::Workload,
};

/// Symbol of a workload pair whose pods differ: some probes allowed, some not.
pub const PARTLY: &str = "~";

/// What the probes between two groups say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Probes allowed.
    pub allowed: u64,
    /// Probes denied.
    pub denied: u64,
    /// Probes whose verdict depends on the backend the proxy picks.
    pub backend_dependent: u64,
}

/// The verdict on a pair of groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every probe allowed.
    Allowed,
    /// Every probe denied.
    Denied,
    /// Every probe depends on the backend the proxy picks.
    BackendDependent,
    /// The probes differ: some pods of the pair reach each other and some do not.
    Partly,
}

impl Counts {
    fn add(&mut self, p: &Probe) {
        if p.backend_dependent {
            self.backend_dependent += 1;
        } else if p.allowed {
            self.allowed += 1;
        } else {
            self.denied += 1;
        }
    }

    /// The verdict the counts make.
    pub fn verdict(&self) -> Verdict {
        match (self.allowed, self.denied, self.backend_dependent) {
            (_, 0, 0) => Verdict::Allowed,
            (0, _, 0) => Verdict::Denied,
            (0, 0, _) => Verdict::BackendDependent,
            _ => Verdict::Partly,
        }
    }
}

impl Verdict {
    fn symbol(self) -> &'static str {
        match self {
            Self::Allowed => ALLOWED,
            Self::Denied => DENIED,
            Self::BackendDependent => BACKEND_DEPENDENT,
            Self::Partly => PARTLY,
        }
    }
}

/// A workload of the summary, and the pods it has among the hosts shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// `namespace/kind/name`, as rows and columns name it.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its pods, `namespace/pod`.
    pub pods: Vec<String>,
}

/// Probes folded into workload pairs.
pub struct Summary {
    /// The group (a workload, or an external host's address) of each host label.
    group_of: HashMap<String, u32>,
    /// The groups' names, by index.
    names: Vec<String>,
    /// The workloads and their pods.
    members: BTreeMap<String, Member>,
    /// The counts of each table's cells: (table, source group, destination) where the
    /// destination is a group, or a Service for probes through one.
    cells: BTreeMap<(TableKey, u32, u32), Counts>,
}

impl Summary {
    /// An empty summary of `hosts` (pods of `cluster` and external hosts).
    pub fn new(cluster: &Cluster, hosts: &[Host]) -> Self {
        let mut summary = Self {
            group_of: HashMap::new(),
            names: Vec::new(),
            members: BTreeMap::new(),
            cells: BTreeMap::new(),
        };
        let mut index: HashMap<String, u32> = HashMap::new();
        for host in hosts {
            let pod = host.pod.as_ref().and_then(|id| cluster.pods.get(id));
            let name = match pod {
                Some(pod) => {
                    let w = Workload::of(pod);
                    let name = w.to_string();
                    summary
                        .members
                        .entry(name.clone())
                        .or_insert_with(|| Member {
                            workload: name.clone(),
                            namespace: w.namespace,
                            kind: w.kind,
                            name: w.name,
                            pods: Vec::new(),
                        })
                        .pods
                        .push(host.label.clone());
                    name
                }
                None => host.label.clone(),
            };
            let i = summary.intern(&mut index, name);
            summary.group_of.insert(host.label.clone(), i);
        }
        summary
    }

    fn intern(&mut self, index: &mut HashMap<String, u32>, name: String) -> u32 {
        if let Some(&i) = index.get(&name) {
            return i;
        }
        let i = u32::try_from(self.names.len()).expect("fewer than 2^32 groups");
        self.names.push(name.clone());
        index.insert(name, i);
        i
    }

    /// Folds every probe of `probes` in.
    pub fn add_all(&mut self, probes: impl Iterator<Item = Probe>) {
        let mut services: HashMap<String, u32> = HashMap::new();
        for p in probes {
            let from = self.group_of[&p.from];
            let to = match &p.service {
                // Through a Service the column is the Service, as in the full tables.
                Some(service) => match services.get(service) {
                    Some(&i) => i,
                    None => {
                        let i = u32::try_from(self.names.len()).expect("fewer than 2^32 groups");
                        self.names.push(service.clone());
                        services.insert(service.clone(), i);
                        i
                    }
                },
                None => self.group_of[&p.to],
            };
            self.cells
                .entry((TableKey::of(&p), from, to))
                .or_default()
                .add(&p);
        }
    }

    /// The pairs, in table order, then by source and destination name.
    fn pairs(&self) -> Vec<(&TableKey, &str, &str, &Counts)> {
        let mut out: Vec<_> = self
            .cells
            .iter()
            .map(|((key, from, to), counts)| {
                (
                    key,
                    self.names[*from as usize].as_str(),
                    self.names[*to as usize].as_str(),
                    counts,
                )
            })
            .collect();
        out.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        out
    }

    /// Writes the JSON contract of the summary: `{"workloads": [...], "pairs": [...]}`.
    pub fn write_json(&self, out: impl io::Write) -> io::Result<()> {
        /// One workload pair of one table.
        #[derive(Serialize)]
        struct Pair<'a> {
            from: &'a str,
            to: &'a str,
            port: u16,
            protocol: Protocol,
            family: Family,
            #[serde(skip_serializing_if = "Option::is_none")]
            service: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            via: Option<NodeFrontend>,
            verdict: Verdict,
            allowed: u64,
            denied: u64,
            #[serde(rename = "backend-dependent")]
            backend_dependent: u64,
        }
        #[derive(Serialize)]
        struct Document<'a> {
            workloads: Vec<&'a Member>,
            pairs: Vec<Pair<'a>>,
        }
        let pairs = self
            .pairs()
            .into_iter()
            .map(|(key, from, to, c)| Pair {
                from,
                to,
                port: key.port,
                protocol: key.protocol,
                family: key.family,
                service: (key.through == Through::Services).then_some(to),
                via: match key.through {
                    Through::Node(via) => Some(via),
                    _ => None,
                },
                verdict: c.verdict(),
                allowed: c.allowed,
                denied: c.denied,
                backend_dependent: c.backend_dependent,
            })
            .collect();
        let document = Document {
            workloads: self.members.values().collect(),
            pairs,
        };
        serde_json::to_writer_pretty(out, &document).map_err(io::Error::from)
    }

    /// Writes one table per (how, protocol, port, family): rows are source workloads,
    /// columns destination workloads (Services, for probes through them), then a line of
    /// counts and the legend.
    pub fn write_tables(&self, out: &mut impl io::Write) -> io::Result<()> {
        let mut tables: BTreeMap<&TableKey, BTreeMap<&str, BTreeMap<&str, Verdict>>> =
            BTreeMap::new();
        let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (key, from, to, counts) in self.pairs() {
            let verdict = counts.verdict();
            *tally.entry(verdict.symbol()).or_default() += 1;
            tables
                .entry(key)
                .or_default()
                .entry(from)
                .or_default()
                .insert(to, verdict);
        }
        for (key, rows) in &tables {
            let order: BTreeSet<&str> = rows.values().flat_map(|r| r.keys().copied()).collect();
            let columns: Vec<String> = order.iter().map(|c| escape(c).to_string()).collect();
            let via = match key.through {
                Through::Address => String::new(),
                Through::Services => " through Services".to_owned(),
                Through::Node(via) => format!(" through {}", via.as_str()),
            };
            let title = format!(
                "{}/{} {:?}{via} by workload",
                key.protocol, key.port, key.family
            );
            let labels: Vec<String> = rows.keys().map(|r| escape(r).to_string()).collect();
            let first = labels
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .max(title.len());
            let mut line = format!("{title:<first$}");
            for c in &columns {
                let _ = write!(line, "  {c}");
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
            for ((_, cells), label) in rows.iter().zip(&labels) {
                line.clear();
                let _ = write!(line, "{label:<first$}");
                for (name, shown) in order.iter().zip(&columns) {
                    let symbol = cells.get(name).map_or("-", |v| v.symbol());
                    let _ = write!(line, "  {symbol:^w$}", w = shown.len());
                }
                line.push('\n');
                out.write_all(line.as_bytes())?;
            }
            out.write_all(b"\n")?;
        }
        let count = |s| tally.get(s).copied().unwrap_or(0);
        writeln!(
            out,
            "{} workload pairs: {} allowed, {} denied, {} partly, {} backend-dependent   \
             ({ALLOWED} all pods allowed, {DENIED} all denied, {PARTLY} the pods of the pair \
             differ, {BACKEND_DEPENDENT} depends on the backend, - not probed)",
            self.cells.len(),
            count(ALLOWED),
            count(DENIED),
            count(PARTLY),
            count(BACKEND_DEPENDENT),
        )
    }
}
