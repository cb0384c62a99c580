//! The API server's validation of a NetworkPolicy, transcribed rule by rule into a table:
//! each row is an object, the rules it is validated by ([`Admission`]), and whether the API
//! server (Kubernetes 1.36, default feature gates) accepts it or which fields it rejects.
//! The comment above a group of rows names the Go function (and, where it helps, the rule)
//! the rows come from: `pkg/apis/networking/validation` (`ValidateNetworkPolicy`,
//! `ValidateNetworkPolicySpec`, `ValidateNetworkPolicyPeer`, `ValidateNetworkPolicyPort`,
//! `ValidateIPBlock`), `pkg/apis/core/validation` (`IsValidCIDRForLegacyField` with the
//! `StrictIPCIDRValidation` gate), apimachinery (`ValidateObjectMeta`,
//! `ValidateLabelSelector`, `IsQualifiedName`, `IsValidLabelValue`, `IsDNS1123Subdomain`,
//! `IsDNS1123Label`, `IsValidPortName`, `IsValidPortNum`, the IP/CIDR checks of
//! `util/validation/ip.go`) and k8s.io/utils/net (`ParseCIDRSloppy`).
//!
//! Every row goes through the real path: JSON into the API type, [`convert::policy`] (a
//! file origin for [`Admission::Create`], none for [`Admission::Stored`]), then
//! [`ParsedPolicy::parse`]. A rejected row lists the fields it is rejected at (as a set).

use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use super::{Admission, ParsedPolicy, Peer, Peers};
use crate::{model::Origin, source::convert};

struct Row {
    line: u32,
    admission: Admission,
    object: Value,
    /// `None`: accepted; otherwise the fields it is rejected at.
    rejected: Option<Vec<String>>,
}

/// `row!(Create|Stored, object, ok)` or `row!(Create|Stored, object, [fields...])`.
macro_rules! row {
    ($admission:ident, $object:expr, ok) => {
        Row {
            line: line!(),
            admission: Admission::$admission,
            object: $object,
            rejected: None,
        }
    };
    ($admission:ident, $object:expr, [$($field:expr),+ $(,)?]) => {
        Row {
            line: line!(),
            admission: Admission::$admission,
            object: $object,
            rejected: Some(vec![$($field.to_string()),+]),
        }
    };
}

/// A policy `p` in namespace `x` with `spec`.
fn np(spec: Value) -> Value {
    np_meta(json!({"name": "p", "namespace": "x"}), spec)
}

fn np_meta(metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": metadata, "spec": spec})
}

fn named(name: &str) -> Value {
    np_meta(json!({"name": name, "namespace": "x"}), json!({}))
}

fn in_namespace(namespace: &str) -> Value {
    np_meta(json!({"name": "p", "namespace": namespace}), json!({}))
}

fn with_meta(key: &str, map: Value) -> Value {
    let mut meta = json!({"name": "p", "namespace": "x"});
    meta[key] = map;
    np_meta(meta, json!({}))
}

/// An ingress rule with one peer.
fn from(peer: Value) -> Value {
    np(json!({"ingress": [{"from": [peer]}]}))
}

/// An ingress peer of one ipBlock.
fn block(cidr: &str, except: &[&str]) -> Value {
    if except.is_empty() {
        from(json!({"ipBlock": {"cidr": cidr}}))
    } else {
        from(json!({"ipBlock": {"cidr": cidr, "except": except}}))
    }
}

/// An ingress rule with one port.
fn port(port: Value) -> Value {
    np(json!({"ingress": [{"ports": [port]}]}))
}

fn pod_selector(selector: Value) -> Value {
    np(json!({"podSelector": selector}))
}

fn match_label(key: &str, value: &str) -> Value {
    pod_selector(json!({"matchLabels": {key: value}}))
}

fn expression(key: &str, operator: &str, values: Option<&[&str]>) -> Value {
    let mut expr = json!({"key": key, "operator": operator});
    if let Some(values) = values {
        expr["values"] = json!(values);
    }
    pod_selector(json!({"matchExpressions": [expr]}))
}

fn policy_types(types: &[&str]) -> Value {
    np(json!({"policyTypes": types}))
}

const NAME: &str = "metadata.name";
const NAMESPACE: &str = "metadata.namespace";
const PEER: &str = "spec.ingress[0].from[0]";
const CIDR: &str = "spec.ingress[0].from[0].ipBlock.cidr";
const EXCEPT_0: &str = "spec.ingress[0].from[0].ipBlock.except[0]";
const EXCEPT_1: &str = "spec.ingress[0].from[0].ipBlock.except[1]";
const PORT: &str = "spec.ingress[0].ports[0].port";
const END_PORT: &str = "spec.ingress[0].ports[0].endPort";
const PROTOCOL: &str = "spec.ingress[0].ports[0].protocol";

#[allow(clippy::too_many_lines)]
fn rows() -> Vec<Row> {
    let a = |n: usize| "a".repeat(n);
    vec![
        // ValidateObjectMeta with ValidateNetworkPolicyName = NameIsDNSSubdomain
        // (IsDNS1123Subdomain): at most 253 bytes, dot-separated [a-z0-9]([-a-z0-9]*[a-z0-9])?
        // labels, which have no length limit of their own.
        row!(Create, named("web"), ok),
        row!(Create, named("123"), ok),
        row!(Create, named("a.b-c.d"), ok),
        row!(Create, named(&a(64)), ok),
        row!(Create, named(&a(253)), ok),
        row!(Create, named(&a(254)), [NAME]),
        row!(Create, named("Web"), [NAME]),
        row!(Create, named("web_api"), [NAME]),
        row!(Create, named("-web"), [NAME]),
        row!(Create, named("web-"), [NAME]),
        row!(Create, named("web."), [NAME]),
        row!(Create, named(".web"), [NAME]),
        row!(Create, named("a..b"), [NAME]),
        row!(Create, named("web api"), [NAME]),
        row!(Create, named("wéb"), [NAME]),
        row!(Stored, named("Web"), [NAME]),
        // ... "name or generateName is required" (manifests need a name).
        row!(Create, named(""), [NAME]),
        // ValidateObjectMeta: the namespace (required; defaulted as kubectl does when
        // absent or empty) is ValidateNamespaceName = NameIsDNSLabel (IsDNS1123Label).
        row!(Create, in_namespace(&a(63)), ok),
        row!(Create, in_namespace(""), ok),
        row!(Create, np_meta(json!({"name": "p"}), json!({})), ok),
        row!(Create, in_namespace(&a(64)), [NAMESPACE]),
        row!(Create, in_namespace("a.b"), [NAMESPACE]),
        row!(Create, in_namespace("X"), [NAMESPACE]),
        // ValidateObjectMeta -> ValidateLabels: keys IsQualifiedName, values
        // IsValidLabelValue.
        row!(
            Create,
            with_meta("labels", json!({"app": "web", "example.com/x": ""})),
            ok
        ),
        row!(
            Create,
            with_meta("labels", json!({"a/b/c": "v"})),
            ["metadata.labels.a/b/c"]
        ),
        row!(
            Create,
            with_meta("labels", json!({"app": "-v"})),
            ["metadata.labels.app"]
        ),
        // ValidateObjectMeta -> ValidateAnnotations: keys IsQualifiedName after
        // strings.ToLower (the Kelvin sign lowers to 'k'), values anything, 256 KiB in all.
        row!(
            Create,
            with_meta("annotations", json!({"Example.COM/Note": "any text !"})),
            ok
        ),
        row!(
            Create,
            with_meta("annotations", json!({"\u{212A}": ""})),
            ok
        ),
        row!(
            Create,
            with_meta("annotations", json!({"bad key": ""})),
            ["metadata.annotations.bad key"]
        ),
        row!(
            Create,
            with_meta("annotations", json!({"a": "x".repeat(262_143)})),
            ok
        ),
        row!(
            Create,
            with_meta("annotations", json!({"a": "x".repeat(262_144)})),
            ["metadata.annotations"]
        ),
        // ValidateLabelSelector -> ValidateLabels (matchLabels) -> IsQualifiedName: an
        // optional prefix (non-empty, IsDNS1123Subdomain: 253 bytes, labels unlimited), '/',
        // a name of at most 63 bytes matching ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9].
        row!(Create, match_label("app", "web"), ok),
        row!(Create, match_label("x.y_z-1", "web"), ok),
        row!(Create, match_label("app.kubernetes.io/name", "web"), ok),
        row!(
            Create,
            match_label(&format!("{}.example.com/x", a(64)), "v"),
            ok
        ),
        row!(Create, match_label(&format!("{}/x", a(253)), "v"), ok),
        row!(
            Create,
            match_label(&format!("{}/x", a(254)), "v"),
            [format!("spec.podSelector.matchLabels.{}/x", a(254))]
        ),
        row!(Create, match_label(&a(63), "v"), ok),
        row!(
            Create,
            match_label(&a(64), "v"),
            [format!("spec.podSelector.matchLabels.{}", a(64))]
        ),
        row!(
            Create,
            match_label("", "v"),
            ["spec.podSelector.matchLabels."]
        ),
        row!(
            Create,
            match_label("/x", "v"),
            ["spec.podSelector.matchLabels./x"]
        ),
        row!(
            Create,
            match_label("x/", "v"),
            ["spec.podSelector.matchLabels.x/"]
        ),
        row!(
            Create,
            match_label("a/b/c", "v"),
            ["spec.podSelector.matchLabels.a/b/c"]
        ),
        row!(
            Create,
            match_label("Bad.Prefix/x", "v"),
            ["spec.podSelector.matchLabels.Bad.Prefix/x"]
        ),
        row!(
            Create,
            match_label("-x", "v"),
            ["spec.podSelector.matchLabels.-x"]
        ),
        row!(
            Create,
            match_label("x_", "v"),
            ["spec.podSelector.matchLabels.x_"]
        ),
        // ... -> IsValidLabelValue: empty, or at most 63 bytes like a name part.
        row!(Create, match_label("app", ""), ok),
        row!(Create, match_label("app", "A-b_c.9"), ok),
        row!(Create, match_label("app", &a(63)), ok),
        row!(
            Create,
            match_label("app", &a(64)),
            ["spec.podSelector.matchLabels.app"]
        ),
        row!(
            Create,
            match_label("app", "bad value!"),
            ["spec.podSelector.matchLabels.app"]
        ),
        row!(
            Create,
            match_label("app", "-a"),
            ["spec.podSelector.matchLabels.app"]
        ),
        row!(
            Create,
            match_label("app", "a."),
            ["spec.podSelector.matchLabels.app"]
        ),
        // matchLabels values are always checked, stored or not.
        row!(
            Stored,
            match_label("app", "bad value!"),
            ["spec.podSelector.matchLabels.app"]
        ),
        // ValidateLabelSelectorRequirement: In/NotIn need values, Exists/DoesNotExist take
        // none, any other operator is invalid; the key IsQualifiedName.
        row!(Create, expression("app", "In", Some(&["a", "b"])), ok),
        row!(Create, expression("app", "In", Some(&["", "a"])), ok),
        row!(Create, expression("app", "NotIn", Some(&["a"])), ok),
        row!(Create, expression("app", "Exists", None), ok),
        row!(Create, expression("app", "Exists", Some(&[])), ok),
        row!(Create, expression("app", "DoesNotExist", None), ok),
        row!(
            Create,
            expression("app", "In", None),
            ["spec.podSelector.matchExpressions[0].values"]
        ),
        row!(
            Create,
            expression("app", "NotIn", Some(&[])),
            ["spec.podSelector.matchExpressions[0].values"]
        ),
        row!(
            Create,
            expression("app", "Exists", Some(&["a"])),
            ["spec.podSelector.matchExpressions[0].values"]
        ),
        row!(
            Create,
            expression("app", "DoesNotExist", Some(&[""])),
            ["spec.podSelector.matchExpressions[0].values"]
        ),
        row!(
            Create,
            expression("app", "in", Some(&["a"])),
            ["spec.podSelector.matchExpressions[0].operator"]
        ),
        row!(
            Create,
            expression("app", "Equals", Some(&["a"])),
            ["spec.podSelector.matchExpressions[0].operator"]
        ),
        row!(
            Create,
            expression("app", "", None),
            ["spec.podSelector.matchExpressions[0].operator"]
        ),
        row!(
            Create,
            expression("a/b/c", "Exists", None),
            ["spec.podSelector.matchExpressions[0].key"]
        ),
        row!(
            Stored,
            expression("a/b/c", "Exists", None),
            ["spec.podSelector.matchExpressions[0].key"]
        ),
        row!(
            Create,
            expression("", "Exists", None),
            ["spec.podSelector.matchExpressions[0].key"]
        ),
        // ... values IsValidLabelValue unless AllowInvalidLabelValueInSelector, which
        // ValidationOptionsForNetworking sets for an update of an object that already had
        // an invalid one: a stored object may hold them.
        row!(
            Create,
            expression("app", "In", Some(&["ok", "bad value!"])),
            ["spec.podSelector.matchExpressions[0].values[1]"]
        ),
        row!(
            Stored,
            expression("app", "In", Some(&["ok", "bad value!"])),
            ok
        ),
        row!(
            Create,
            expression("app", "NotIn", Some(&[&a(64)])),
            ["spec.podSelector.matchExpressions[0].values[0]"]
        ),
        // Every problem of a requirement is reported.
        row!(
            Create,
            expression("-k", "Bogus", Some(&["bad value!"])),
            [
                "spec.podSelector.matchExpressions[0].key",
                "spec.podSelector.matchExpressions[0].operator",
                "spec.podSelector.matchExpressions[0].values[0]",
            ]
        ),
        // ValidateNetworkPolicyPeer: the selectors of a peer validated as the pod selector.
        row!(
            Create,
            from(json!({"namespaceSelector": {"matchLabels": {"-x": "v"}}})),
            ["spec.ingress[0].from[0].namespaceSelector.matchLabels.-x"]
        ),
        row!(
            Create,
            from(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})),
            ["spec.ingress[0].from[0].podSelector.matchExpressions[0].values"]
        ),
        // ValidateNetworkPolicyPeer: "must specify a peer"; an ipBlock with a selector:
        // "may not specify both ipBlock and another peer"; selectors may go together.
        row!(Create, from(json!({})), [PEER]),
        row!(Create, from(json!({"podSelector": {}})), ok),
        row!(Create, from(json!({"namespaceSelector": {}})), ok),
        row!(
            Create,
            from(json!({"podSelector": {}, "namespaceSelector": {}})),
            ok
        ),
        row!(Create, from(json!({"ipBlock": {"cidr": "10.0.0.0/8"}})), ok),
        row!(
            Create,
            from(json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})),
            [PEER]
        ),
        row!(
            Create,
            from(json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}})),
            [PEER]
        ),
        row!(
            Create,
            from(json!({"ipBlock": {"cidr": "bad"}, "podSelector": {}})),
            [PEER, CIDR]
        ),
        row!(
            Create,
            np(json!({"egress": [{"to": [{}]}]})),
            ["spec.egress[0].to[0]"]
        ),
        // ValidateIPBlock: cidr required ...
        row!(Create, block("", &[]), [CIDR]),
        // ... then IsValidCIDRForLegacyField: ParseCIDRSloppy (k8s.io/utils/net), which
        // takes no whitespace, zone, sign, missing or over-long prefix.
        row!(Create, block("10.0.0.0/8", &[]), ok),
        row!(Create, block("0.0.0.0/0", &[]), ok),
        row!(Create, block("192.168.1.1/32", &[]), ok),
        row!(Create, block("fd00::/8", &[]), ok),
        row!(Create, block("::/0", &[]), ok),
        row!(Create, block("fd00::1/128", &[]), ok),
        row!(Create, block("::1.2.3.4/128", &[]), ok),
        row!(Create, block("2001:DB8:0:0::/64", &[]), ok),
        row!(Create, block("10.0.0.0", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/33", &[]), [CIDR]),
        row!(Create, block("::/129", &[]), [CIDR]),
        row!(Create, block("10.0.0/8", &[]), [CIDR]),
        row!(Create, block("256.0.0.0/8", &[]), [CIDR]),
        row!(Create, block("nonsense", &[]), [CIDR]),
        row!(Create, block(" 10.0.0.0/8", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/8 ", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/8\n", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/+8", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/8/8", &[]), [CIDR]),
        row!(Create, block("fe80::1%eth0/64", &[]), [CIDR]),
        row!(Create, block("1:2:3:4:5:6:7:8:9/64", &[]), [CIDR]),
        row!(Stored, block(" 10.0.0.0/8", &[]), [CIDR]),
        row!(Stored, block("10.0.0.0/33", &[]), [CIDR]),
        // ... and with StrictIPCIDRValidation (on by default since 1.36), parseCIDR also
        // refuses what netip.ParsePrefix does not take (leading zeros in an octet, a group
        // or the prefix length), an IPv4-mapped IPv6 address, and bits set past the prefix.
        row!(Create, block("010.0.0.0/8", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/016", &[]), [CIDR]),
        row!(Create, block("10.0.0.0/08", &[]), [CIDR]),
        row!(Create, block("fd00::00001/128", &[]), [CIDR]),
        row!(Create, block("::ffff:10.0.0.0/104", &[]), [CIDR]),
        row!(Create, block("::ffff:0:0/64", &[]), [CIDR]),
        row!(Create, block("10.0.0.1/8", &[]), [CIDR]),
        row!(Create, block("fd00::1/64", &[]), [CIDR]),
        // A stored object keeps such values: ValidateNetworkPolicyUpdate passes every CIDR
        // of the old object as AllowCIDRsEvenIfInvalid (ratcheting), so an API server may
        // serve them, and only ParseCIDRSloppy is left.
        row!(Stored, block("010.0.0.0/8", &[]), ok),
        row!(Stored, block("10.0.0.0/016", &[]), ok),
        row!(Stored, block("fd00::00001/128", &[]), ok),
        row!(Stored, block("::ffff:10.0.0.0/104", &[]), ok),
        row!(Stored, block("10.0.0.1/8", &[]), ok),
        // ValidateIPBlock: each except valid as above, and a strict subset of cidr:
        // cidr.Contains(except.IP) and cidr's mask shorter than the except's.
        row!(Create, block("10.0.0.0/8", &["10.1.0.0/16"]), ok),
        row!(Create, block("10.0.0.0/8", &["10.0.0.0/9"]), ok),
        row!(Create, block("10.0.0.0/8", &["10.255.255.255/32"]), ok),
        row!(
            Create,
            block("10.0.0.0/8", &["10.1.0.0/16", "10.1.0.0/16"]),
            ok
        ),
        row!(Create, block("fd00::/16", &["fd00:1::/32"]), ok),
        row!(Create, block("0.0.0.0/0", &["10.0.0.0/8"]), ok),
        row!(Create, block("10.0.0.0/8", &["10.0.0.0/8"]), [EXCEPT_0]),
        row!(Create, block("10.0.0.0/8", &["10.0.0.0/7"]), [EXCEPT_0]),
        row!(Create, block("10.0.0.0/8", &["192.168.0.0/16"]), [EXCEPT_0]),
        row!(Create, block("10.0.0.0/8", &["fd00::/64"]), [EXCEPT_0]),
        row!(Create, block("::/0", &["10.0.0.0/8"]), [EXCEPT_0]),
        row!(Create, block("10.0.0.0/8", &[""]), [EXCEPT_0]),
        row!(Create, block("10.0.0.0/8", &[" 10.1.0.0/16"]), [EXCEPT_0]),
        row!(
            Create,
            block("10.0.0.0/8", &["10.1.0.0/16", "11.0.0.0/16"]),
            [EXCEPT_1]
        ),
        row!(Create, block("10.0.0.0/8", &["10.1.0.1/16"]), [EXCEPT_0]),
        row!(Create, block("10.0.0.0/8", &["010.1.0.0/16"]), [EXCEPT_0]),
        row!(
            Create,
            block("10.0.0.0/8", &["::ffff:10.1.0.0/112"]),
            [EXCEPT_0]
        ),
        // A cidr the legacy parser cannot read ends the block's checks; one it can read
        // but strict validation refuses does not.
        row!(Create, block("nonsense", &["also nonsense"]), [CIDR]),
        row!(
            Create,
            block("10.0.0.1/8", &["192.168.0.0/16"]),
            [CIDR, EXCEPT_0]
        ),
        // Stored: IPv4-mapped values, contained as Go's IPNet.Contains has it (an IPv4-
        // mapped address is IPv4; a mapped except's prefix, 96 or more, is always above an
        // IPv4 cidr's, so it passes even where it covers the whole cidr or more).
        row!(Stored, block("10.0.0.0/8", &["::ffff:10.1.0.0/112"]), ok),
        row!(Stored, block("10.0.0.0/8", &["::ffff:10.0.0.0/104"]), ok),
        row!(Stored, block("0.0.0.0/1", &["::ffff:0.0.0.0/96"]), ok),
        row!(
            Stored,
            block("10.0.0.0/8", &["::ffff:10.0.0.0/100"]),
            [EXCEPT_0]
        ),
        row!(
            Stored,
            block("10.0.0.0/8", &["::ffff:10.0.0.0/64"]),
            [EXCEPT_0]
        ),
        row!(
            Stored,
            block("::ffff:10.0.0.0/104", &["::ffff:10.1.0.0/112"]),
            ok
        ),
        row!(
            Stored,
            block("::ffff:10.0.0.0/104", &["10.1.0.0/16"]),
            [EXCEPT_0]
        ),
        row!(Stored, block("::/0", &["::ffff:10.0.0.0/104"]), [EXCEPT_0]),
        row!(
            Stored,
            block("10.0.0.0/8", &["010.1.0.0/16", "10.2.0.1/16"]),
            ok
        ),
        row!(Stored, block("10.0.0.0/8", &["10.0.0.0/8"]), [EXCEPT_0]),
        // ValidateNetworkPolicyPort: protocol TCP, UDP or SCTP (case matters).
        row!(Create, port(json!({"protocol": "TCP"})), ok),
        row!(Create, port(json!({"protocol": "UDP"})), ok),
        row!(Create, port(json!({"protocol": "SCTP"})), ok),
        row!(Create, port(json!({})), ok),
        row!(Create, port(json!({"protocol": "tcp"})), [PROTOCOL]),
        row!(Create, port(json!({"protocol": "ICMP"})), [PROTOCOL]),
        row!(Create, port(json!({"protocol": ""})), [PROTOCOL]),
        // ... a numeric port: IsValidPortNum (1-65535).
        row!(Create, port(json!({"port": 1})), ok),
        row!(Create, port(json!({"port": 65535})), ok),
        row!(Create, port(json!({"port": 0})), [PORT]),
        row!(Create, port(json!({"port": 65536})), [PORT]),
        row!(Create, port(json!({"port": -1})), [PORT]),
        // ... endPort: "must be greater than or equal to `port`" and IsValidPortNum.
        row!(Create, port(json!({"port": 80, "endPort": 80})), ok),
        row!(Create, port(json!({"port": 80, "endPort": 65535})), ok),
        row!(
            Create,
            port(json!({"port": 100, "endPort": 90})),
            [END_PORT]
        ),
        row!(
            Create,
            port(json!({"port": 100, "endPort": 70000})),
            [END_PORT]
        ),
        row!(Create, port(json!({"port": 1, "endPort": 0})), [END_PORT]),
        row!(Create, port(json!({"port": 0, "endPort": 5})), [PORT]),
        // ... endPort "may not be specified when `port` is not specified" or non-numeric.
        row!(Create, port(json!({"endPort": 90})), [END_PORT]),
        row!(
            Create,
            port(json!({"port": "http", "endPort": 90})),
            [END_PORT]
        ),
        row!(
            Create,
            port(json!({"port": "HTTP", "endPort": 90})),
            [END_PORT, PORT]
        ),
        // ... a named port: IsValidPortName.
        row!(Create, port(json!({"port": "http"})), ok),
        row!(Create, port(json!({"port": "a"})), ok),
        row!(Create, port(json!({"port": "h2c-9"})), ok),
        row!(Create, port(json!({"port": "abcdefghijklmno"})), ok),
        row!(Create, port(json!({"port": "abcdefghijklmnop"})), [PORT]),
        row!(Create, port(json!({"port": "HTTP"})), [PORT]),
        row!(Create, port(json!({"port": "1234"})), [PORT]),
        row!(Create, port(json!({"port": "80"})), [PORT]),
        row!(Create, port(json!({"port": "-web"})), [PORT]),
        row!(Create, port(json!({"port": "web-"})), [PORT]),
        row!(Create, port(json!({"port": "a--b"})), [PORT]),
        row!(Create, port(json!({"port": "web_api"})), [PORT]),
        row!(Create, port(json!({"port": ""})), [PORT]),
        row!(
            Create,
            port(json!({"protocol": "GRE", "port": 0})),
            [PROTOCOL, PORT]
        ),
        row!(
            Create,
            np(json!({"egress": [{}, {"ports": [{"port": 80}, {"port": 0}]}]})),
            ["spec.egress[1].ports[1].port"]
        ),
        // ValidateNetworkPolicySpec: policyTypes Ingress or Egress, at most two (then the
        // entries are not looked at); the same one twice is fine.
        row!(Create, policy_types(&[]), ok),
        row!(Create, policy_types(&["Ingress"]), ok),
        row!(Create, policy_types(&["Egress"]), ok),
        row!(Create, policy_types(&["Ingress", "Egress"]), ok),
        row!(Create, policy_types(&["Egress", "Ingress"]), ok),
        row!(Create, policy_types(&["Ingress", "Ingress"]), ok),
        row!(Create, policy_types(&["Egress", "Egress"]), ok),
        row!(
            Create,
            policy_types(&["Ingress", "Egress", "Ingress"]),
            ["spec.policyTypes"]
        ),
        row!(Create, policy_types(&["X", "Y", "Z"]), ["spec.policyTypes"]),
        row!(
            Stored,
            policy_types(&["Ingress", "Egress", "Egress"]),
            ["spec.policyTypes"]
        ),
        row!(Create, policy_types(&["ingress"]), ["spec.policyTypes[0]"]),
        row!(
            Create,
            policy_types(&["Ingress", ""]),
            ["spec.policyTypes[1]"]
        ),
        // ValidateNetworkPolicy: metadata and spec errors together.
        row!(
            Create,
            np_meta(
                json!({"name": "Bad", "namespace": "x"}),
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                       "policyTypes": ["Sideways"],
                       "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]})
            ),
            [NAME, EXPR_0_VALUES, "spec.policyTypes[0]", EXCEPT_0]
        ),
    ]
}

const EXPR_0_VALUES: &str = "spec.podSelector.matchExpressions[0].values";

/// The policy of `object`, as a file gives it (`Create`) or the API (`Stored`).
fn policy(object: &Value, admission: Admission) -> Result<crate::model::Policy, String> {
    let np: NetworkPolicy = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let origin = match admission {
        Admission::Create => Origin {
            file: Some(PathBuf::from("table.yaml")),
        },
        Admission::Stored => Origin::default(),
    };
    assert_eq!(Admission::of(&origin), admission);
    convert::policy(np, origin)
        .map_err(|(field, message)| format!("{}: {message}", field.unwrap_or_default()))
}

/// The fields `object` is rejected at, or `None` if accepted.
fn verdict(object: &Value, admission: Admission) -> Option<BTreeSet<String>> {
    let policy = match policy(object, admission) {
        Ok(p) => p,
        // Refused before validation (convert: a missing name).
        Err(e) => return Some([e.split(':').next().unwrap_or_default().to_owned()].into()),
    };
    match ParsedPolicy::parse(&policy) {
        Ok(_) => None,
        Err(e) => Some(e.errors.into_iter().map(|f| f.field).collect()),
    }
}

#[test]
fn the_api_servers_rules_row_by_row() {
    let mut failures = Vec::new();
    let rows = rows();
    for row in &rows {
        let got = verdict(&row.object, row.admission);
        let want = row
            .rejected
            .as_ref()
            .map(|fields| fields.iter().cloned().collect());
        if got != want {
            failures.push(format!(
                "line {} ({:?}): expected {}, got {}",
                row.line,
                row.admission,
                describe(want.as_ref()),
                describe(got.as_ref())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn describe(verdict: Option<&BTreeSet<String>>) -> String {
    match verdict {
        None => "accepted".to_owned(),
        Some(fields) => format!("rejected at {fields:?}"),
    }
}

/// The ipBlocks of a stored policy with one ingress ipBlock peer.
fn stored_block(cidr: &str, except: &[&str]) -> (String, Vec<String>) {
    let policy = policy(&block(cidr, except), Admission::Stored).unwrap();
    let parsed = ParsedPolicy::parse(&policy).unwrap();
    let rules = parsed.ingress.unwrap();
    let Peers::Only(peers) = &rules[0].peers else {
        panic!("no peers");
    };
    let Peer::IpBlock(b) = &peers[0] else {
        panic!("not an ipBlock");
    };
    (
        b.cidr.to_string(),
        b.except.iter().map(ToString::to_string).collect(),
    )
}

/// What legacy values mean: what Go reads (decimal, masked, mapped addresses as IPv4), and
/// a hole as large as its meaning, clipped to the block.
#[test]
fn stored_legacy_values_mean_what_go_reads() {
    let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        stored_block("010.0.0.0/8", &[]),
        ("10.0.0.0/8".into(), s(&[]))
    );
    assert_eq!(
        stored_block("10.0.0.0/016", &[]),
        ("10.0.0.0/16".into(), s(&[]))
    );
    assert_eq!(
        stored_block("10.1.2.3/8", &[]),
        ("10.0.0.0/8".into(), s(&[]))
    );
    assert_eq!(
        stored_block("::ffff:10.0.0.0/104", &[]),
        ("10.0.0.0/8".into(), s(&[]))
    );
    assert_eq!(
        stored_block("10.0.0.0/8", &["::ffff:10.1.0.0/112", "010.2.0.0/16"]),
        ("10.0.0.0/8".into(), s(&["10.1.0.0/16", "10.2.0.0/16"]))
    );
    // The hole covers the block: it admits nothing.
    assert_eq!(
        stored_block("10.0.0.0/8", &["::ffff:10.0.0.0/104"]),
        ("10.0.0.0/8".into(), s(&["10.0.0.0/8"]))
    );
    assert_eq!(
        stored_block("0.0.0.0/1", &["::ffff:0.0.0.0/96"]),
        ("0.0.0.0/1".into(), s(&["0.0.0.0/1"]))
    );
    let policy = policy(
        &block("10.0.0.0/8", &["::ffff:10.0.0.0/104"]),
        Admission::Stored,
    );
    let parsed = ParsedPolicy::parse(&policy.unwrap()).unwrap();
    let Peers::Only(peers) = &parsed.ingress.unwrap()[0].peers else {
        panic!()
    };
    let Peer::IpBlock(b) = &peers[0] else {
        panic!()
    };
    for ip in ["10.0.0.1", "10.255.255.255", "11.0.0.1", "::ffff:10.0.0.1"] {
        assert!(!b.contains(ip.parse().unwrap()), "{ip}");
    }
}

/// A policy the API server would refuse for its name is enforced fail-closed, like any
/// other rejected policy: it isolates what it selects and allows nothing.
#[test]
fn an_invalid_name_is_enforced_fail_closed() {
    let object = np_meta(
        json!({"name": "Allow_Web", "namespace": "x"}),
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
    );
    let policy = policy(&object, Admission::Create).unwrap();
    let (parsed, error) = ParsedPolicy::parse_or_fail_closed(&policy);
    let error = error.expect("rejected");
    assert_eq!(error.errors.len(), 1);
    assert_eq!(error.errors[0].field, "metadata.name");
    assert_eq!(
        parsed.ingress,
        Some(Vec::new()),
        "isolated, nothing allowed"
    );
    assert_eq!(parsed.egress, None);
    assert!(
        !parsed.pod_selector.requirements().is_empty(),
        "selects app=web"
    );
}
