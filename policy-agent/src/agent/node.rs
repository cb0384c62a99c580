//! What the datapath leaves to the node (the README's security model), checked on it: a
//! setting that would let a packet past the datapath is reported in `status` and the log.

use crate::netns::NetNs;

/// A node setting the datapath relies on, and what it must be.
struct Requirement {
    /// The sysctl.
    key: &'static str,
    /// The value the datapath relies on.
    safe: &'static str,
    /// What goes wrong otherwise.
    why: &'static str,
}

/// The settings checked.
const REQUIREMENTS: [Requirement; 1] = [Requirement {
    key: "net.ipv4.conf.all.accept_source_route",
    safe: "0",
    why: "the node would follow IPv4 source routes, whose real destination the datapath \
          does not decide on",
}];

/// Warnings about the settings of the node (its namespace `netns`, or the agent's own).
pub fn check(netns: Option<&NetNs>) -> Vec<String> {
    let read = |key: &str| {
        let path = std::path::Path::new("/proc/sys").join(key.replace('.', "/"));
        let read = || std::fs::read_to_string(&path);
        match netns {
            Some(ns) => ns.run(read).ok()?.ok(),
            None => read().ok(),
        }
    };
    REQUIREMENTS
        .iter()
        .filter_map(|r| {
            let value = read(r.key)?;
            (value.trim() != r.safe).then(|| {
                format!(
                    "node: {} is {}, not {}: {}",
                    r.key,
                    value.trim(),
                    r.safe,
                    r.why
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_follows_source_routes_is_reported() {
        let ns = NetNs::create(&format!("polagent-{}-nodecheck", std::process::id()))
            .expect("a namespace (run as root)");
        assert!(check(Some(&ns)).is_empty(), "Linux's default is safe");
        ns.sysctl("net.ipv4.conf.all.accept_source_route", "1")
            .unwrap();
        let warnings = check(Some(&ns));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("accept_source_route is 1"),
            "{warnings:?}"
        );
    }
}
