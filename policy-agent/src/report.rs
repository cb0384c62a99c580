//! Reachability results as `matrix` and `lab` print them: a readable truth table per
//! (protocol, port, family), or the JSON contract
//! `{"probes": [{"from", "to", "port", "protocol", "family", "allowed"}]}` (probes through a
//! Service add `"service"` and `"address"`, and `"backend-dependent": true` when the verdict
//! depends on the backend the proxy picks); probes to a node's address on a node port or a
//! host port add `"via": "node-port"` or `"host-port"` too.

use std::{cell::RefCell, collections::BTreeMap, fmt, fmt::Write as _, io, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::model::Protocol;

/// Address family as the JSON contract spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    IPv4,
    /// IPv6.
    IPv6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &std::net::IpAddr) -> Self {
        if ip.is_ipv4() { Self::IPv4 } else { Self::IPv6 }
    }
}

/// One probe: can `from` open a connection to `to` on `port`/`protocol`?
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Probe {
    /// Source: `namespace/pod`, or an external host's address.
    pub from: String,
    /// Destination, spelled the same way.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
    /// Family of the addresses used.
    pub family: Family,
    /// The verdict.
    pub allowed: bool,
    /// For a probe through a Service: its `namespace/name` (`to` is then its backend pod
    /// when it has one, else the Service again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For a probe through a Service: the frontend address dialled (`port` is the
    /// frontend's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// For a probe through a Service: the verdict depends on the backend the proxy picks
    /// (the client's egress allows every backend, and some backends' ingress admits the
    /// client and some does not). Such a probe is reported as not allowed, as no answer
    /// holds for every connection. Serialized only when true.
    #[serde(
        default,
        rename = "backend-dependent",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub backend_dependent: bool,
    /// For a probe to a node's address: through a Service's node port or a pod's host port
    /// (`address` is the node's, `port` the node's port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<NodeFrontend>,
}

/// How a probe reaches a backend through a node's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeFrontend {
    /// A Service's node port.
    NodePort,
    /// A pod's host port.
    HostPort,
}

impl NodeFrontend {
    /// As the tables print it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NodePort => "node ports",
            Self::HostPort => "host ports",
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Protocol::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown protocol {s}")))
    }
}

/// A name or message from the manifests, safe to print to a terminal: every control
/// character (newline and tab included, C1 controls and so ESC, which starts an ANSI
/// escape sequence) and every bidirectional override is written the way
/// [`char::escape_debug`] writes it (`\n`, `\u{1b}`), everything else as is. Names in the
/// manifests are not validated by an API server when they come from a directory, and a
/// name must not be able to forge an output line or drive the reader's terminal.
///
/// JSON output does not need it: serde escapes control characters there.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

/// `s`, escaped for a terminal (see [`Escaped`]).
pub fn escape(s: &str) -> Escaped<'_> {
    Escaped(s)
}

/// Multi-line human text (a rendered error, an explanation), escaped like [`Escaped`] but
/// for its line breaks, which are the text's own structure. Names inside such text are
/// escaped with [`escape`] where they are interpolated, so a newline in a name cannot reach
/// this point; this catches whatever else would drive the terminal.
pub fn escape_text(s: &str) -> String {
    s.split('\n')
        .map(|line| escape(line).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `c` must not reach a terminal as is: a control character (C0, DEL, C1), or a
/// bidirectional embedding, override or isolate, which reorders what follows on the line.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padding (`{:<40}`) applies to the escaped text, as the terminal shows it.
        if !self.0.chars().any(needs_escape) {
            return f.pad(self.0);
        }
        let mut out = String::with_capacity(self.0.len() + 8);
        for c in self.0.chars() {
            if needs_escape(c) {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
        f.pad(&out)
    }
}

/// Every probe of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reachability {
    /// Probes, sorted.
    pub probes: Vec<Probe>,
}

/// Symbol of an allowed cell.
pub const ALLOWED: &str = ".";
/// Symbol of a denied cell.
pub const DENIED: &str = "X";
/// Symbol of a cell whose verdict depends on the backend the proxy picks.
pub const BACKEND_DEPENDENT: &str = "?";

impl Reachability {
    /// Sorts the probes into their canonical order.
    pub fn new(mut probes: Vec<Probe>) -> Self {
        probes.sort();
        Self { probes }
    }

    /// The JSON contract.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        write_json(&mut out, self.probes.iter().cloned()).expect("a Vec takes every write");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// One truth table per (protocol, port, family), then one per (protocol, port, family)
    /// of the probes through Services, then of those through node ports and host ports:
    /// rows are sources, columns the destinations serving that port (the Services, for
    /// probes through them; with the node's address, through a node's port).
    pub fn render_table(&self) -> String {
        let mut grouped: BTreeMap<TableKey, BTreeMap<String, Vec<&Probe>>> = BTreeMap::new();
        for p in &self.probes {
            grouped
                .entry(TableKey::of(p))
                .or_default()
                .entry(row(p))
                .or_default()
                .push(p);
        }
        let mut out = Vec::new();
        write_tables(&mut out, &Grouped(grouped)).expect("a Vec takes every write");
        String::from_utf8(out).expect("tables are UTF-8")
    }
}

/// Writes the JSON contract, `{"probes": [...]}`, a probe at a time as `probes` gives them
/// (in their canonical order: see [`Reachability::new`]): the output is one JSON document,
/// as [`Reachability::to_json`] prints it, and never held whole.
pub fn write_json(out: impl io::Write, probes: impl Iterator<Item = Probe>) -> io::Result<()> {
    /// The probes, serialized as a sequence as they come.
    struct Stream<I>(RefCell<Option<I>>);
    impl<I: Iterator<Item = Probe>> Serialize for Stream<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let probes = self.0.borrow_mut().take();
            s.collect_seq(probes.into_iter().flatten())
        }
    }
    #[derive(Serialize)]
    struct Document<S> {
        probes: S,
    }
    let document = Document {
        probes: Stream(RefCell::new(Some(probes))),
    };
    let mut serializer = serde_json::Serializer::pretty(out);
    document.serialize(&mut serializer).map_err(io::Error::from)
}

/// Probes laid out as truth tables, which [`write_tables`] asks for one row at a time.
pub trait Tables {
    /// The tables, in the order they are printed.
    fn keys(&self) -> Vec<TableKey>;
    /// The rows and columns of a table, as printed (escaped), sorted, without repeats;
    /// every row and column holds at least one probe.
    fn layout(&self, key: &TableKey) -> (Vec<String>, Vec<String>);
    /// The probes of one row of a table, in their canonical order (where two fall in one
    /// cell, the last is shown).
    fn row(&self, key: &TableKey, row: &str) -> Vec<Probe>;
}

/// Probes of a [`Reachability`], by table and row.
struct Grouped<'a>(BTreeMap<TableKey, BTreeMap<String, Vec<&'a Probe>>>);

impl Tables for Grouped<'_> {
    fn keys(&self) -> Vec<TableKey> {
        self.0.keys().copied().collect()
    }

    fn layout(&self, key: &TableKey) -> (Vec<String>, Vec<String>) {
        let rows = &self.0[key];
        let mut columns: Vec<String> = rows.values().flatten().map(|p| column(p)).collect();
        columns.sort_unstable();
        columns.dedup();
        (rows.keys().cloned().collect(), columns)
    }

    fn row(&self, key: &TableKey, row: &str) -> Vec<Probe> {
        self.0[key][row].iter().map(|&p| p.clone()).collect()
    }
}

/// Writes every table of `tables`, a row at a time, then the summary line (see
/// [`Reachability::render_table`]).
pub fn write_tables(out: &mut impl io::Write, tables: &impl Tables) -> io::Result<()> {
    let mut tally = Tally::default();
    for key in tables.keys() {
        let (rows, columns) = tables.layout(&key);
        write_table(
            out,
            &key,
            &rows,
            &columns,
            |row| tables.row(&key, row),
            &mut tally,
        )?;
    }
    out.write_all(tally.summary().as_bytes())
}

/// Counts of the probes written.
#[derive(Default)]
struct Tally {
    probes: usize,
    allowed: usize,
    dependent: usize,
}

impl Tally {
    fn add(&mut self, p: &Probe) {
        self.probes += 1;
        self.allowed += usize::from(p.allowed);
        self.dependent += usize::from(p.backend_dependent);
    }

    /// The last line of the tables: counts, and what the symbols mean.
    fn summary(&self) -> String {
        let (dependent_count, dependent_legend) = if self.dependent == 0 {
            (String::new(), String::new())
        } else {
            (
                format!(
                    " ({} of them depend on the backend the proxy picks)",
                    self.dependent
                ),
                format!(", {BACKEND_DEPENDENT} depends on the backend"),
            )
        };
        format!(
            "{} probes: {} allowed, {} denied{dependent_count}   ({ALLOWED} allowed, \
             {DENIED} denied{dependent_legend}, - not probed)\n",
            self.probes,
            self.allowed,
            self.probes - self.allowed
        )
    }
}

/// How the probes of a table reach their destination, in the order the tables come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Through {
    /// By the destination's address.
    Address,
    /// Through Service cluster IPs.
    Services,
    /// Through a node's address.
    Node(NodeFrontend),
}

/// What a table is about: how its probes go, protocol, port, family (in the order the
/// tables come).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableKey {
    /// How the probes go.
    pub through: Through,
    /// Their protocol.
    pub protocol: Protocol,
    /// Their port.
    pub port: u16,
    /// Their family.
    pub family: Family,
}

impl TableKey {
    /// The table of a probe.
    pub fn of(p: &Probe) -> Self {
        let through = match p.via {
            Some(via) => Through::Node(via),
            None if p.service.is_some() => Through::Services,
            None => Through::Address,
        };
        Self {
            through,
            protocol: p.protocol,
            port: p.port,
            family: p.family,
        }
    }
}

/// The column of a probe: its destination, or the Service it went through (whose backends
/// differ from one row to the next only in the JSON), at the node's address when it went
/// through a node's port.
pub fn column(p: &Probe) -> String {
    let to = escape(p.service.as_deref().unwrap_or(&p.to));
    match (p.via, p.address) {
        (Some(_), Some(address)) => format!("{to}@{address}"),
        _ => to.to_string(),
    }
}

/// The row of a probe: its source, escaped.
pub fn row(p: &Probe) -> String {
    escape(&p.from).to_string()
}

/// The symbol of a probe's cell.
fn symbol(p: &Probe) -> &'static str {
    if p.backend_dependent {
        BACKEND_DEPENDENT
    } else if p.allowed {
        ALLOWED
    } else {
        DENIED
    }
}

/// One truth table, a row at a time: `cells` gives the probes of a row.
fn write_table(
    out: &mut impl io::Write,
    key: &TableKey,
    rows: &[String],
    columns: &[String],
    mut cells: impl FnMut(&str) -> Vec<Probe>,
    tally: &mut Tally,
) -> io::Result<()> {
    let via = match key.through {
        Through::Address => String::new(),
        Through::Services => " through Services".to_owned(),
        Through::Node(via) => format!(" through {}", via.as_str()),
    };
    let title = format!("{}/{} {:?}{via}", key.protocol, key.port, key.family);
    let first = rows
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(title.len());
    let mut line = format!("{title:<first$}");
    for c in columns {
        let _ = write!(line, "  {c}");
    }
    line.push('\n');
    out.write_all(line.as_bytes())?;
    let mut cell: BTreeMap<String, &str> = BTreeMap::new();
    for r in rows {
        cell.clear();
        for p in cells(r) {
            tally.add(&p);
            cell.insert(column(&p), symbol(&p));
        }
        line.clear();
        let _ = write!(line, "{r:<first$}");
        for c in columns {
            let symbol = cell.get(c).copied().unwrap_or("-");
            let _ = write!(line, "  {symbol:^w$}", w = c.len());
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_printable_text_alone() {
        assert_eq!(
            escape("x/web-0 app=é 名前").to_string(),
            "x/web-0 app=é 名前"
        );
        assert_eq!(format!("[{:<6}]", escape("a/b")), "[a/b   ]");
    }

    #[test]
    fn escape_writes_control_characters_and_ansi_escapes_as_rust_would() {
        assert_eq!(escape("a\nb\tc\r").to_string(), r"a\nb\tc\r");
        assert_eq!(
            escape("\u{1b}[31mred\u{1b}[0m").to_string(),
            r"\u{1b}[31mred\u{1b}[0m",
            "ESC, which starts every ANSI sequence"
        );
        assert_eq!(escape("\u{0}\u{7f}\u{9b}").to_string(), r"\0\u{7f}\u{9b}");
        assert_eq!(
            escape("evil\u{202e}txt.yaml").to_string(),
            r"evil\u{202e}txt.yaml",
            "a bidirectional override reorders the rest of the line"
        );
        // Padding counts the escaped text, as the terminal shows it.
        assert_eq!(format!("{:<6}|", escape("a\nb")), r"a\nb  |");
    }

    #[test]
    fn escape_text_keeps_its_own_line_breaks() {
        assert_eq!(
            escape_text("rejected:\n  x\u{1b}]0;title\u{7}").to_string(),
            "rejected:\n  x\\u{1b}]0;title\\u{7}"
        );
    }

    #[test]
    fn tables_escape_names() {
        let probe = Probe {
            from: "x/a\nfake row".into(),
            to: "y/\u{1b}[2Jb".into(),
            port: 80,
            protocol: Protocol::Tcp,
            family: Family::IPv4,
            allowed: true,
            service: None,
            address: None,
            backend_dependent: false,
            via: None,
        };
        let table = Reachability::new(vec![probe]).render_table();
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(table.contains(r"x/a\nfake row"), "{table}");
        assert!(table.contains(r"y/\u{1b}[2Jb"), "{table}");
    }

    #[test]
    fn json_contract_and_table() {
        let r = Reachability::new(vec![
            Probe {
                from: "x/a".into(),
                to: "y/b".into(),
                port: 80,
                protocol: Protocol::Tcp,
                family: Family::IPv4,
                allowed: true,
                service: None,
                address: None,
                backend_dependent: false,
                via: None,
            },
            Probe {
                from: "10.1.2.3".into(),
                to: "y/b".into(),
                port: 80,
                protocol: Protocol::Tcp,
                family: Family::IPv4,
                allowed: false,
                service: None,
                address: None,
                backend_dependent: false,
                via: None,
            },
        ]);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            json["probes"][1],
            serde_json::json!({"from": "x/a", "to": "y/b", "port": 80, "protocol": "TCP", "family": "IPv4", "allowed": true})
        );
        let table = r.render_table();
        assert!(table.contains("TCP/80 IPv4"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("10.1.2.3") && l.contains(DENIED)),
            "{table}"
        );
        assert!(table.contains("2 probes: 1 allowed, 1 denied"), "{table}");
    }

    /// A probe of `from` through Service `service` (cluster IP `address`) on TCP/80.
    fn through(from: &str, to: &str, verdict: Option<bool>) -> Probe {
        Probe {
            from: from.into(),
            to: to.into(),
            port: 80,
            protocol: Protocol::Tcp,
            family: Family::IPv4,
            allowed: verdict.unwrap_or(false),
            service: Some("y/web".into()),
            address: Some("10.96.0.20".parse().unwrap()),
            backend_dependent: verdict.is_none(),
            via: None,
        }
    }

    #[test]
    fn probes_through_node_ports_and_host_ports_in_json_and_tables() {
        let node_port = Probe {
            port: 30080,
            via: Some(NodeFrontend::NodePort),
            address: Some("192.168.1.10".parse().unwrap()),
            ..through("203.0.113.5", "y/a", Some(true))
        };
        let host_port = Probe {
            port: 8080,
            service: None,
            via: Some(NodeFrontend::HostPort),
            address: Some("192.168.1.10".parse().unwrap()),
            ..through("203.0.113.5", "y/a", Some(false))
        };
        let r = Reachability::new(vec![node_port, host_port]);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let vias: Vec<&str> = json["probes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["via"].as_str().unwrap())
            .collect();
        assert_eq!(vias, ["host-port", "node-port"], "{json}");
        assert_eq!(json["probes"][0].get("service"), None, "{json}");
        let table = r.render_table();
        assert!(
            table.contains("TCP/30080 IPv4 through node ports  y/web@192.168.1.10"),
            "{table}"
        );
        assert!(
            table.contains("TCP/8080 IPv4 through host ports  y/a@192.168.1.10"),
            "{table}"
        );
    }

    #[test]
    fn probes_through_services_in_json_and_tables() {
        let r = Reachability::new(vec![
            through("x/a", "y/web", None),
            through("x/b", "y/web", Some(true)),
            Probe {
                service: None,
                address: None,
                ..through("x/a", "y/web-0", Some(false))
            },
        ]);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let rows = json["probes"].as_array().unwrap();
        assert_eq!(
            rows[0],
            serde_json::json!({"from": "x/a", "to": "y/web", "port": 80, "protocol": "TCP",
                "family": "IPv4", "allowed": false, "service": "y/web",
                "address": "10.96.0.20", "backend-dependent": true})
        );
        assert!(
            rows.iter()
                .filter(|p| p.get("backend-dependent").is_some())
                .count()
                == 1,
            "only the backend-dependent probe carries the field: {json}"
        );
        let back: Reachability = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r, "the JSON reads back");

        let table = r.render_table();
        let by_address = table
            .find("TCP/80 IPv4  y/web-0\n")
            .expect("a table by address");
        let via = table
            .find("TCP/80 IPv4 through Services  y/web\n")
            .expect("a table through Services, one column per Service");
        assert!(by_address < via, "Services come last:\n{table}");
        let cell = |row: &str| {
            table[via..]
                .lines()
                .find(|l| l.starts_with(row))
                .map(|l| l.split_whitespace().last().unwrap().to_owned())
        };
        assert_eq!(cell("x/a").as_deref(), Some(BACKEND_DEPENDENT), "{table}");
        assert_eq!(cell("x/b").as_deref(), Some(ALLOWED), "{table}");
        assert!(
            table.contains(
                "3 probes: 1 allowed, 2 denied (1 of them depend on the backend the proxy picks)"
            ) && table.contains("? depends on the backend"),
            "{table}"
        );
    }
}
