//! An [`Explanation`] in words an administrator reads: who isolates each side, which rule
//! let the flow through, or that none did and which rules were considered; and a
//! [`ServiceExplanation`] the same way for every backend behind a Service frontend, with the
//! outcome that follows from them.

use std::fmt::Write as _;

use policy_common::maps::Direction;

use super::{
    Flow, ServiceFlow,
    reference::{Explanation, Reference, ServiceExplanation, ServiceOutcome, Side},
};
use crate::{
    report::escape,
    semantics::{
        describe,
        services::{Backend, FrontendKind},
    },
};

/// How much deeper the lines about one backend are indented than those of a direct flow.
const BACKEND_INDENT: &str = "  ";

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
        escape(&flow.from.label),
        escape(&flow.to.label),
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
    let Some(pod) = side.pod.as_ref().map(ToString::to_string) else {
        let host = match side.direction {
            Direction::Egress => flow.from,
            Direction::Ingress => flow.to,
        };
        let _ = writeln!(
            out,
            "  {what} of {}: outside the cluster, no NetworkPolicy applies -> allowed",
            escape(&host.label)
        );
        return;
    };
    let pod = escape(&pod);
    if side.isolating.is_empty() {
        let _ = writeln!(
            out,
            "  {what} of {pod}: not isolated (no NetworkPolicy with {} in its policyTypes \
             selects it) -> allowed",
            policy_type(side.direction)
        );
        return;
    }
    let names: Vec<String> = side
        .isolating
        .iter()
        .map(|p| escape(&p.to_string()).to_string())
        .collect();
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
                "    allowed by {}, {what} rule {index}: {} -> allowed",
                escape(&policy.to_string()),
                escape(&text)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "    no rule admits {} on {}/{} -> denied. The rules that apply:",
                escape(&peer.label),
                flow.protocol,
                flow.port
            );
            for policy in reference
                .policies()
                .iter()
                .filter(|p| side.isolating.contains(&p.id))
            {
                let id = policy.id.to_string();
                let id = escape(&id);
                let rules = policy.rules(side.direction).unwrap_or_default();
                if rules.is_empty() {
                    let _ = writeln!(out, "      {id}: no {what} rule (denies all {what})");
                }
                for r in rules {
                    let text = describe::rule(
                        r,
                        side.direction == Direction::Ingress,
                        &policy.id.namespace,
                    );
                    let _ = writeln!(out, "      {id} {what}[{}]: {}", r.index, escape(&text));
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

/// Renders the explanation of `flow`, a connection through a frontend of `kind`: the
/// frontend, then each backend with its egress and ingress verdicts and the rules that
/// decided them, then the outcome.
pub fn render_service(
    reference: &Reference<'_>,
    flow: &ServiceFlow<'_>,
    kind: FrontendKind,
    explanation: &ServiceExplanation,
) -> String {
    let t = flow.target;
    let outcome = explanation.outcome();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {} ({} {}) on {}/{} over {:?} ({} -> {}): {}",
        escape(&flow.from.label),
        escape(&t.label),
        kind.as_str(),
        t.address,
        t.protocol,
        t.port,
        t.family(),
        flow.src,
        t.address,
        verdict(&outcome)
    );
    let backends: Vec<String> = t.backends.iter().map(|b| backend(reference, b)).collect();
    if backends.is_empty() {
        let _ = writeln!(out, "  backends: none ready of {:?}", t.family());
    } else {
        let _ = writeln!(
            out,
            "  backends (the proxy picks one; address:target port): {}",
            backends.join(", ")
        );
    }
    if outcome != ServiceOutcome::Hairpin {
        for (b, e) in &explanation.backends {
            render_backend(reference, flow, b, e, &mut out);
        }
    }
    let _ = writeln!(
        out,
        "  outcome: {}",
        outcome_words(reference, flow, &outcome)
    );
    out
}

/// The verdict as the first line of a Service explanation shows it.
fn verdict(outcome: &ServiceOutcome) -> &'static str {
    match outcome {
        ServiceOutcome::Allowed => "ALLOWED",
        ServiceOutcome::Hairpin => "ALLOWED (hairpin)",
        ServiceOutcome::NoBackend => "DENIED (no backend)",
        ServiceOutcome::BackendsDiffer { .. } => "DENIED (service-backends-differ)",
        ServiceOutcome::EgressDeniesAll | ServiceOutcome::IngressDeniesAll => "DENIED",
        ServiceOutcome::DependsOnBackend { .. } => "BACKEND-DEPENDENT",
    }
}

/// A backend in words: its pod (or address), and the address and target port the proxy
/// sends the connection to.
fn backend(reference: &Reference<'_>, b: &Backend) -> String {
    let host = reference.backend_host(b);
    let at = std::net::SocketAddr::new(b.address, b.port);
    if host.pod.is_some() {
        format!("{} at {at}", escape(&host.label))
    } else {
        at.to_string()
    }
}

/// Backends in words, joined with "and".
fn backends(reference: &Reference<'_>, bs: &[Backend]) -> String {
    bs.iter()
        .map(|b| backend(reference, b))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// One backend's connection: the client's egress and the backend's ingress, as for a
/// direct flow to the backend on its target port.
fn render_backend(
    reference: &Reference<'_>,
    flow: &ServiceFlow<'_>,
    b: &Backend,
    explanation: &Explanation,
    out: &mut String,
) {
    let to = reference.backend_host(b);
    let direct = Flow {
        from: flow.from,
        to: &to,
        src: flow.src,
        dst: b.address,
        protocol: flow.target.protocol,
        port: b.port,
    };
    let _ = writeln!(out, "  backend {}:", backend(reference, b));
    let mut sides = String::new();
    render_side(reference, &direct, &explanation.egress, &mut sides);
    if explanation.loopback {
        // The client's own connection comes back to it through the Service: it may
        // always reach itself, whatever its ingress rules say.
        let _ = writeln!(
            sides,
            "  ingress of {}: the client itself, back through the Service (hairpin) -> allowed",
            escape(&to.label)
        );
    } else {
        render_side(reference, &direct, &explanation.ingress, &mut sides);
    }
    for line in sides.lines() {
        let _ = writeln!(out, "{BACKEND_INDENT}{line}");
    }
}

/// The outcome in words: what decided it, and what the datapath does.
fn outcome_words(
    reference: &Reference<'_>,
    flow: &ServiceFlow<'_>,
    outcome: &ServiceOutcome,
) -> String {
    let (client, t) = (escape(&flow.from.label), flow.target);
    match outcome {
        ServiceOutcome::NoBackend => format!(
            "no backend: {} has no ready {:?} backend for {}/{}, so the connection goes \
             nowhere -> denied",
            escape(&t.label),
            t.family(),
            t.protocol,
            t.port
        ),
        ServiceOutcome::Hairpin => format!(
            "hairpin: {client} is the Service's only backend, and a pod may always reach \
             itself, through its Service too -> allowed"
        ),
        ServiceOutcome::EgressDeniesAll => {
            format!("denied: the egress of {client} allows no backend -> denied")
        }
        ServiceOutcome::BackendsDiffer { allowed, denied } => format!(
            "service-backends-differ: the egress of {client} allows {} and denies {}. The \
             datapath decides before the proxy picks a backend and never allows what the \
             chosen backend's rules deny, so it drops the connection -> denied",
            backends(reference, allowed),
            backends(reference, denied)
        ),
        ServiceOutcome::Allowed => format!(
            "allowed: the egress of {client} allows every backend and every backend admits \
             it -> allowed"
        ),
        ServiceOutcome::IngressDeniesAll => {
            format!("denied: no backend admits {client} -> denied")
        }
        ServiceOutcome::DependsOnBackend {
            admitting,
            refusing,
        } => format!(
            "backend-dependent: the egress of {client} allows every backend; allowed if the \
             proxy picks {}, denied if it picks {}",
            backends(reference, admitting),
            backends(reference, refusing)
        ),
    }
}
