//! Reachability results as `matrix` and `lab` print them: a readable truth table per
//! (protocol, port, family), or the JSON contract
//! `{"probes": [{"from", "to", "port", "protocol", "family", "allowed"}]}` (probes through a
//! Service add `"service"` and `"address"`, and `"backend-dependent": true` when the verdict
//! depends on the backend the proxy picks).

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
        serde_json::to_string_pretty(self).expect("plain data serializes")
    }

    /// One truth table per (protocol, port, family), then one per (protocol, port, family)
    /// of the probes through Services: rows are sources, columns the destinations serving
    /// that port (the Services, for probes through them).
    pub fn render_table(&self) -> String {
        let mut groups: BTreeMap<GroupKey, Vec<&Probe>> = BTreeMap::new();
        for p in &self.probes {
            groups
                .entry((p.service.is_some(), p.protocol, p.port, p.family))
                .or_default()
                .push(p);
        }
        let mut out = String::new();
        for (key, probes) in &groups {
            render_group(key, probes, &mut out);
        }
        out.push_str(&self.summary());
        out
    }

    /// The last line of the tables: counts, and what the symbols mean.
    fn summary(&self) -> String {
        let allowed = self.probes.iter().filter(|p| p.allowed).count();
        let dependent = self.probes.iter().filter(|p| p.backend_dependent).count();
        let (dependent_count, dependent_legend) = if dependent == 0 {
            (String::new(), String::new())
        } else {
            (
                format!(" ({dependent} of them depend on the backend the proxy picks)"),
                format!(", {BACKEND_DEPENDENT} depends on the backend"),
            )
        };
        format!(
            "{} probes: {allowed} allowed, {} denied{dependent_count}   ({ALLOWED} allowed, \
             {DENIED} denied{dependent_legend}, - not probed)\n",
            self.probes.len(),
            self.probes.len() - allowed
        )
    }
}

/// What a table is about: whether its probes go through Services (those tables come after
/// the tables by pod address), protocol, port, family.
type GroupKey = (bool, Protocol, u16, Family);

/// The column of a probe: its destination, or the Service it went through (whose backends
/// differ from one row to the next only in the JSON).
fn column(p: &Probe) -> &str {
    p.service.as_deref().unwrap_or(&p.to)
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

/// One truth table.
fn render_group(key: &GroupKey, probes: &[&Probe], out: &mut String) {
    let (through_services, protocol, port, family) = key;
    let mut rows: Vec<&str> = probes.iter().map(|p| p.from.as_str()).collect();
    let mut cols: Vec<&str> = probes.iter().map(|p| column(p)).collect();
    rows.sort_unstable();
    rows.dedup();
    cols.sort_unstable();
    cols.dedup();
    let cell: BTreeMap<(&str, &str), &str> = probes
        .iter()
        .map(|p| ((p.from.as_str(), column(p)), symbol(p)))
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
            let symbol = cell.get(&(*r, *c)).copied().unwrap_or("-");
            let _ = write!(out, "  {symbol:^w$}", w = c.len());
        }
        out.push('\n');
    }
    out.push('\n');
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
                backend_dependent: false,
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
        }
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
