//! Reachability results as `matrix` and `lab` print them: a readable truth table per
//! (protocol, port, family), or the JSON contract
//! `{"probes": [{"from", "to", "port", "protocol", "family", "allowed"}]}` (probes through a
//! Service add `"service"` and `"address"`).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

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

impl Reachability {
    /// Sorts the probes into their canonical order.
    pub fn new(mut probes: Vec<Probe>) -> Self {
        probes.sort();
        Self { probes }
    }

    /// The JSON contract.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serializes")
    }

    /// One truth table per (protocol, port, family): rows are sources, columns the
    /// destinations serving that port.
    pub fn render_table(&self) -> String {
        let mut groups: BTreeMap<(Protocol, u16, Family, bool), Vec<&Probe>> = BTreeMap::new();
        for p in &self.probes {
            groups
                .entry((p.protocol, p.port, p.family, p.service.is_some()))
                .or_default()
                .push(p);
        }
        // Columns of probes through Services are the Services.
        let column = |p: &'_ Probe| -> String { p.service.clone().unwrap_or_else(|| p.to.clone()) };
        let mut out = String::new();
        for ((protocol, port, family, through_services), probes) in &groups {
            let columns: Vec<String> = probes.iter().map(|p| column(p)).collect();
            let mut rows: Vec<&str> = probes.iter().map(|p| p.from.as_str()).collect();
            let mut cols: Vec<&str> = columns.iter().map(String::as_str).collect();
            rows.sort();
            rows.dedup();
            cols.sort();
            cols.dedup();
            let cell: BTreeMap<(&str, &str), bool> = probes
                .iter()
                .zip(&columns)
                .map(|(p, c)| ((p.from.as_str(), c.as_str()), p.allowed))
                .collect();
            let via = if *through_services {
                " through Services"
            } else {
                ""
            };
            let title = format!("{protocol}/{port} {family:?}{via}");
            let first = rows
                .iter()
                .map(|r| r.len())
                .max()
                .unwrap_or(0)
                .max(title.len());
            let _ = write!(out, "{title:<first$}");
            for c in &cols {
                let _ = write!(out, "  {c}");
            }
            out.push('\n');
            for r in &rows {
                let _ = write!(out, "{r:<first$}");
                for c in &cols {
                    let symbol = match cell.get(&(*r, *c)) {
                        Some(true) => ALLOWED,
                        Some(false) => DENIED,
                        None => "-",
                    };
                    let _ = write!(out, "  {symbol:^w$}", w = c.len());
                }
                out.push('\n');
            }
            out.push('\n');
        }
        let allowed = self.probes.iter().filter(|p| p.allowed).count();
        let _ = writeln!(
            out,
            "{} probes: {allowed} allowed, {} denied   ({ALLOWED} allowed, {DENIED} denied, - not probed)",
            self.probes.len(),
            self.probes.len() - allowed
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
