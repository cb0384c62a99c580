//! An [`Explanation`] in words an administrator reads: who isolates each side, which rule
//! let the flow through, or that none did and which rules were considered.

use std::fmt::Write as _;

use policy_common::maps::Direction;

use super::{
    Flow,
    reference::{Explanation, Reference, Side},
};
use crate::semantics::describe;

/// Renders the explanation of `flow`.
pub fn render(reference: &Reference<'_>, flow: &Flow<'_>, explanation: &Explanation) -> String {
    let mut out = String::new();
    let verdict = if explanation.allowed() {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let _ = writeln!(
        out,
        "{} -> {} on {}/{} over {:?} ({} -> {}): {verdict}",
        flow.from.label,
        flow.to.label,
        flow.protocol,
        flow.port,
        flow.family(),
        flow.src,
        flow.dst
    );
    if explanation.loopback {
        let _ = writeln!(
            out,
            "  a pod talking to itself never leaves it: no policy applies"
        );
        return out;
    }
    for side in [&explanation.egress, &explanation.ingress] {
        render_side(reference, flow, side, &mut out);
    }
    out
}

fn render_side(reference: &Reference<'_>, flow: &Flow<'_>, side: &Side, out: &mut String) {
    let (what, peer) = match side.direction {
        Direction::Egress => ("egress", flow.to),
        Direction::Ingress => ("ingress", flow.from),
    };
    let Some(pod) = &side.pod else {
        let host = match side.direction {
            Direction::Egress => flow.from,
            Direction::Ingress => flow.to,
        };
        let _ = writeln!(
            out,
            "  {what} of {}: outside the cluster, no NetworkPolicy applies -> allowed",
            host.label
        );
        return;
    };
    if side.isolating.is_empty() {
        let _ = writeln!(
            out,
            "  {what} of {pod}: not isolated (no NetworkPolicy with {} in its policyTypes \
             selects it) -> allowed",
            policy_type(side.direction)
        );
        return;
    }
    let names: Vec<String> = side.isolating.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "  {what} of {pod}: isolated by {}", names.join(", "));
    match &side.allowed_by {
        Some((policy, index)) => {
            let rule = reference
                .policies()
                .iter()
                .find(|p| &p.id == policy)
                .and_then(|p| Some((p, p.rules(side.direction)?.get(*index)?)));
            let text = rule.map_or_else(String::new, |(p, r)| {
                describe::rule(r, side.direction == Direction::Ingress, &p.id.namespace)
            });
            let _ = writeln!(
                out,
                "    allowed by {policy}, {what} rule {index}: {text} -> allowed"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "    no rule admits {} on {}/{} -> denied. The rules that apply:",
                peer.label, flow.protocol, flow.port
            );
            for policy in reference
                .policies()
                .iter()
                .filter(|p| side.isolating.contains(&p.id))
            {
                let rules = policy.rules(side.direction).unwrap_or_default();
                if rules.is_empty() {
                    let _ = writeln!(
                        out,
                        "      {}: no {what} rule (denies all {what})",
                        policy.id
                    );
                }
                for r in rules {
                    let text = describe::rule(
                        r,
                        side.direction == Direction::Ingress,
                        &policy.id.namespace,
                    );
                    let _ = writeln!(out, "      {} {what}[{}]: {text}", policy.id, r.index);
                }
            }
        }
    }
}

/// The direction as `policyTypes` spells it.
fn policy_type(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    }
}
