//! `policy-agent explain`: the verdict on one flow, and why; through a Service, the verdict
//! on every backend the proxy may pick and what follows from them.

use std::{collections::BTreeSet, net::IpAddr, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Args;
use policy_agent::{
    evaluate::{Flow, ServiceFlow, compiled::CompiledEvaluator, explain, reference::Reference},
    model::{Cluster, ObjectRef, Protocol},
    plan::{self, Host, ServiceTarget},
    report::{Family, escape, escape_text},
    semantics::{lint, services::FrontendKind},
    source::manifests,
};

/// The protocol of a flow to a pod or an outside address when none is given.
const DEFAULT_PROTOCOL: Protocol = Protocol::Tcp;

#[derive(Args)]
pub struct ExplainArgs {
    /// Directory of manifests: Namespaces, Pods, NetworkPolicies, Services, EndpointSlices.
    #[arg(long)]
    manifests: std::path::PathBuf,
    /// Source: NAMESPACE/POD, or an address outside the cluster.
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/POD, NAMESPACE/SERVICE, a Service frontend address (cluster,
    /// external or load-balancer IP), or an address outside the cluster.
    #[arg(long)]
    to: String,
    /// Destination port; for a Service, its port (every port of it when left out).
    #[arg(long)]
    port: Option<u16>,
    /// TCP, UDP or SCTP [default: TCP; for a Service, that of each of its ports].
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<Protocol>,
    /// Address family, when both ends have both [default: IPv4 if possible].
    #[arg(long, value_parser = parse_family)]
    family: Option<Family>,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(&s.to_ascii_uppercase()).ok_or_else(|| format!("{s:?}: use TCP, UDP or SCTP"))
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s.to_ascii_lowercase().as_str() {
        "ipv4" | "4" => Ok(Family::IPv4),
        "ipv6" | "6" => Ok(Family::IPv6),
        _ => Err(format!("{s:?}: use IPv4 or IPv6")),
    }
}

/// Where a flow goes: a host, or the frontends of a Service (with how each is reached).
enum Target {
    Host(Host),
    Frontends(Vec<(FrontendKind, ServiceTarget)>),
}

/// A pod of the plan (by name, or by one of its addresses), or an external host with that
/// address.
fn host(hosts: &[Host], name: &str) -> anyhow::Result<Host> {
    if let Some(h) = hosts.iter().find(|h| h.label == name) {
        return Ok(h.clone());
    }
    let ip: IpAddr = name.parse().with_context(|| {
        format!("{name} is neither a pod with an address (NAMESPACE/POD) nor an IP address")
    })?;
    Ok(pod_with(hosts, ip).unwrap_or_else(|| external(ip)))
}

/// The pod of the plan that has `ip`.
fn pod_with(hosts: &[Host], ip: IpAddr) -> Option<Host> {
    hosts
        .iter()
        .find(|h| h.pod.is_some() && h.ips.contains(&ip))
        .cloned()
}

/// A host outside the cluster.
fn external(ip: IpAddr) -> Host {
    Host {
        label: ip.to_string(),
        pod: None,
        ips: vec![ip],
        serves: Vec::new(),
    }
}

/// The destination named `name`: a pod (by name or address), a Service (by name: its
/// cluster IPs, else its other frontends), a frontend address, or an address outside the
/// cluster (which needs a port: only a Service's ports can be looked up).
fn target(
    cluster: &Cluster,
    hosts: &[Host],
    name: &str,
    port: Option<u16>,
) -> anyhow::Result<Target> {
    if let Some(h) = hosts.iter().find(|h| h.label == name) {
        return Ok(Target::Host(h.clone()));
    }
    let frontends = plan::frontend_targets(cluster);
    if let Ok(ip) = name.parse::<IpAddr>() {
        if let Some(pod) = pod_with(hosts, ip) {
            return Ok(Target::Host(pod));
        }
        let at: Vec<_> = frontends
            .into_iter()
            .filter(|(_, t)| t.address == ip)
            .collect();
        if !at.is_empty() {
            return Ok(Target::Frontends(at));
        }
        if port.is_none() {
            bail!(
                "{ip} is no Service frontend or pod; give --port to ask about an address \
                 outside the cluster"
            );
        }
        return Ok(Target::Host(external(ip)));
    }
    let Some((namespace, service)) = name.split_once('/') else {
        bail!("{name} is neither NAMESPACE/POD, NAMESPACE/SERVICE nor an IP address");
    };
    let id = ObjectRef::new(namespace, service);
    if !cluster.services.contains_key(&id) {
        bail!("no Service {name}, and no pod {name} with an address");
    }
    let of_service: Vec<_> = frontends
        .into_iter()
        .filter(|(_, t)| t.service == id)
        .collect();
    // Pods dial a Service by its name, which resolves to its cluster IPs.
    let cluster_ips: Vec<_> = of_service
        .iter()
        .filter(|(kind, _)| *kind == FrontendKind::ClusterIp)
        .cloned()
        .collect();
    match (cluster_ips.is_empty(), of_service.is_empty()) {
        (false, _) => Ok(Target::Frontends(cluster_ips)),
        (true, false) => Ok(Target::Frontends(of_service)),
        (true, true) => bail!(
            "Service {name} has no frontend address (headless: its clients dial its pods, \
             ask about those)"
        ),
    }
}

/// The family of a flow between `from` and `to`: the one asked for, else IPv4 if both
/// have it, else IPv6.
fn family(
    asked: Option<Family>,
    from: &Host,
    has: impl Fn(Family) -> bool,
) -> anyhow::Result<Family> {
    match asked {
        Some(f) => Ok(f),
        None => [Family::IPv4, Family::IPv6]
            .into_iter()
            .find(|f| from.ip(*f).is_some() && has(*f))
            .context("the two ends have no address family in common"),
    }
}

pub fn run(mut args: ExplainArgs) -> anyhow::Result<ExitCode> {
    // An end given by address is asked about in that address's family (a dual-stack pod's
    // IPv6 address means IPv6), unless --family says otherwise.
    args.family = args.family.or_else(|| given_family(&args.from, &args.to));
    let loaded = manifests::load_dir(&args.manifests)?;
    for e in &loaded.errors {
        eprintln!("error: {}", escape_text(&e.to_string()));
    }
    // Finished pods hold no address; an address claimed twice stays with one pod.
    let (cluster, conflicts) = loaded.cluster.settled(&BTreeSet::new());
    let cluster = &cluster;
    let hosts = plan::hosts(cluster, &[], &[]);
    let from = host(&hosts, &args.from)?;
    let to = target(cluster, &hosts, &args.to, args.port)?;

    let reference = Reference::new(cluster);
    let mut rejected = loaded.errors.len();
    for e in reference.rejected() {
        rejected += 1;
        println!("error: {}", escape_text(&e.to_string()));
    }
    // Only the pods at the flow's ends (and the backends behind a Service) are compiled:
    // the answer is the same, for a fraction of a large cluster's work.
    let ends = ends(&hosts, &from, &to);
    let compiled = CompiledEvaluator::for_pods(cluster, &ends);
    // Only the warnings about what concerns this flow: the whole cluster's would cost a
    // large cluster's lint, and bury the few that matter here.
    let scope = lint::Scope::of_flow(
        cluster,
        reference.policies(),
        &ends,
        &destinations(&ends, from.pod.as_ref(), &to),
        dialled(&to),
    );
    match to {
        Target::Host(to) => explain_flow(&args, &reference, &compiled, &from, &to)?,
        Target::Frontends(frontends) => {
            explain_frontends(&args, &reference, &compiled, &from, frontends)?;
        }
    }

    let warnings: Vec<String> = conflicts
        .iter()
        .map(ToString::to_string)
        .chain(
            lint::lint_scoped(cluster, reference.policies(), &scope)
                .iter()
                .map(ToString::to_string),
        )
        .collect();
    if !warnings.is_empty() {
        println!("\nWarnings:");
        for w in warnings {
            println!("  {}", escape_text(&w));
        }
    }
    Ok(super::ran(rejected))
}

/// The pods a flow from `from` to `to` meets: its ends, and every pod that has the address
/// of a backend behind a Service (the datapath finds a backend by its address).
fn ends(hosts: &[Host], from: &Host, to: &Target) -> BTreeSet<ObjectRef> {
    let backend_addresses: BTreeSet<IpAddr> = match to {
        Target::Host(_) => BTreeSet::new(),
        Target::Frontends(frontends) => frontends
            .iter()
            .flat_map(|(_, t)| t.backends.iter().map(|b| b.address))
            .collect(),
    };
    let to_pod = match to {
        Target::Host(h) => h.pod.clone(),
        Target::Frontends(_) => None,
    };
    hosts
        .iter()
        .filter(|h| h.ips.iter().any(|ip| backend_addresses.contains(ip)))
        .filter_map(|h| h.pod.clone())
        .chain(from.pod.clone())
        .chain(to_pod)
        .collect()
}

/// The pods at the receiving end of a flow: the destination pod, or the backends behind
/// a Service (`ends` without the source, unless the source is also a destination).
fn destinations(
    ends: &BTreeSet<ObjectRef>,
    from: Option<&ObjectRef>,
    to: &Target,
) -> BTreeSet<ObjectRef> {
    match to {
        Target::Host(h) => h.pod.iter().cloned().collect(),
        Target::Frontends(frontends) => {
            let backends: BTreeSet<&ObjectRef> = frontends
                .iter()
                .flat_map(|(_, t)| t.backends.iter().filter_map(|b| b.pod.as_ref()))
                .collect();
            ends.iter()
                .filter(|p| Some(*p) != from || backends.contains(p))
                .cloned()
                .collect()
        }
    }
}

/// The Services a flow dials: those of the frontends it goes to.
fn dialled(to: &Target) -> BTreeSet<ObjectRef> {
    match to {
        Target::Host(_) => BTreeSet::new(),
        Target::Frontends(frontends) => frontends.iter().map(|(_, t)| t.service.clone()).collect(),
    }
}

/// The family of the first of `from` and `to` that is an address.
fn given_family(from: &str, to: &str) -> Option<Family> {
    [from, to]
        .iter()
        .find_map(|end| end.parse::<IpAddr>().ok())
        .map(|ip| Family::of(&ip))
}

/// Explains the flow from `from` to the host `to`, and checks the compiled maps agree.
fn explain_flow(
    args: &ExplainArgs,
    reference: &Reference<'_>,
    compiled: &CompiledEvaluator,
    from: &Host,
    to: &Host,
) -> anyhow::Result<()> {
    let port = args
        .port
        .with_context(|| format!("--port is needed for {}", escape(&to.label)))?;
    let family = family(args.family, from, |f| to.ip(f).is_some())?;
    let (Some(src), Some(dst)) = (from.ip(family), to.ip(family)) else {
        bail!(
            "{} and {} do not both have a {family:?} address",
            escape(&from.label),
            escape(&to.label)
        );
    };
    let flow = Flow {
        from,
        to,
        src,
        dst,
        protocol: args.protocol.unwrap_or(DEFAULT_PROTOCOL),
        port,
    };
    let explanation = reference.explain(&flow);
    print!("{}", explain::render(reference, &flow, &explanation));
    report_agreement(compiled.allows(&flow), explanation.allowed());
    Ok(())
}

/// Explains the connections from `from` through each of `frontends` on the port (and
/// protocol) asked for, or on all of them, in one address family.
fn explain_frontends(
    args: &ExplainArgs,
    reference: &Reference<'_>,
    compiled: &CompiledEvaluator,
    from: &Host,
    frontends: Vec<(FrontendKind, ServiceTarget)>,
) -> anyhow::Result<()> {
    let on_port: Vec<_> = frontends
        .iter()
        .filter(|(_, t)| {
            args.port.is_none_or(|p| p == t.port) && args.protocol.is_none_or(|p| p == t.protocol)
        })
        .collect();
    let services = distinct(frontends.iter().map(|(_, t)| escape(&t.label).to_string()));
    if on_port.is_empty() {
        let ports = distinct(
            frontends
                .iter()
                .map(|(_, t)| format!("{}/{}", t.protocol, t.port)),
        );
        bail!(
            "{services} answers only on {ports} there: a connection to any other port goes nowhere"
        );
    }
    let family = family(args.family, from, |f| {
        on_port.iter().any(|(_, t)| t.family() == f)
    })?;
    let src = from
        .ip(family)
        .with_context(|| format!("{} has no {family:?} address", escape(&from.label)))?;
    let in_family: Vec<_> = on_port
        .into_iter()
        .filter(|(_, t)| t.family() == family)
        .collect();
    if in_family.is_empty() {
        bail!("{services} has no {family:?} frontend there");
    }
    if from.pod.is_none() {
        println!(
            "(A client outside the cluster: the proxy may masquerade its connection as the \
             node's; this assumes it keeps the client's address.)"
        );
    }
    let mut first = true;
    for (kind, target) in in_family {
        if !std::mem::take(&mut first) {
            println!();
        }
        let flow = ServiceFlow { from, src, target };
        let explanation = reference.explain_service(&flow);
        print!(
            "{}",
            explain::render_service(reference, &flow, *kind, &explanation)
        );
        report_agreement(compiled.allows_service(&flow), explanation.allowed());
    }
    Ok(())
}

/// The distinct `items`, sorted and joined with commas.
fn distinct(items: impl Iterator<Item = String>) -> String {
    items
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Says whether the compiled maps reach the reference's verdict (`None`: it depends on the
/// backend the proxy picks).
fn report_agreement(compiled: impl Into<Option<bool>>, reference: impl Into<Option<bool>>) {
    let (compiled, reference) = (compiled.into(), reference.into());
    if compiled == reference {
        println!("The compiled maps agree.");
    } else {
        println!(
            "BUG: the compiled maps say {}; please report this with the manifests.",
            verdict_words(compiled)
        );
    }
}

/// A verdict in words.
fn verdict_words(verdict: Option<bool>) -> &'static str {
    match verdict {
        Some(true) => "allowed",
        Some(false) => "denied",
        None => "that it depends on the backend",
    }
}
