//! `policy-agent explain`: the verdict on one flow, and why.

use std::{collections::BTreeSet, net::IpAddr, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Args;
use policy_agent::{
    evaluate::{Flow, compiled::CompiledEvaluator, explain, reference::Reference},
    model::Protocol,
    plan::{self, Host},
    report::Family,
    semantics::lint,
    source::manifests,
};

#[derive(Args)]
pub struct ExplainArgs {
    /// Directory of Namespace, Pod and NetworkPolicy manifests.
    #[arg(long)]
    manifests: std::path::PathBuf,
    /// Source: NAMESPACE/POD, or an address outside the cluster.
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/POD, or an address outside the cluster.
    #[arg(long)]
    to: String,
    /// Destination port.
    #[arg(long)]
    port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
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

/// A pod of the plan (by name, or by one of its addresses), or an external host with that
/// address.
fn host(hosts: &[Host], name: &str) -> anyhow::Result<Host> {
    if let Some(h) = hosts.iter().find(|h| h.label == name) {
        return Ok(h.clone());
    }
    let ip: IpAddr = name.parse().with_context(|| {
        format!("{name} is neither a pod with an address (NAMESPACE/POD) nor an IP address")
    })?;
    if let Some(pod) = hosts
        .iter()
        .find(|h| h.pod.is_some() && h.ips.contains(&ip))
    {
        return Ok(pod.clone());
    }
    Ok(Host {
        label: ip.to_string(),
        pod: None,
        ips: vec![ip],
        serves: Vec::new(),
    })
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let loaded = manifests::load_dir(&args.manifests)?;
    for e in &loaded.errors {
        eprintln!("error: {e}");
    }
    // Finished pods hold no address; an address claimed twice stays with one pod.
    let (cluster, conflicts) = loaded.cluster.settled(&BTreeSet::new());
    let cluster = &cluster;
    let hosts = plan::hosts(cluster, &[], &[]);
    let (from, to) = (host(&hosts, &args.from)?, host(&hosts, &args.to)?);
    let family = match args.family {
        Some(f) => f,
        None => [Family::IPv4, Family::IPv6]
            .into_iter()
            .find(|f| from.ip(*f).is_some() && to.ip(*f).is_some())
            .context("the two hosts have no address family in common")?,
    };
    let (Some(src), Some(dst)) = (from.ip(family), to.ip(family)) else {
        bail!(
            "{} and {} do not both have a {family:?} address",
            from.label,
            to.label
        );
    };
    let flow = Flow {
        from: &from,
        to: &to,
        src,
        dst,
        protocol: args.protocol,
        port: args.port,
    };

    let reference = Reference::new(cluster);
    for e in reference.rejected() {
        println!("error: {e}");
    }
    let explanation = reference.explain(&flow);
    print!("{}", explain::render(&reference, &flow, &explanation));

    let compiled = CompiledEvaluator::new(cluster).allows(&flow);
    if compiled == explanation.allowed() {
        println!("The compiled maps agree.");
    } else {
        println!(
            "BUG: the compiled maps say {}; please report this with the manifests.",
            if compiled { "allowed" } else { "denied" }
        );
    }

    let warnings: Vec<String> = conflicts
        .iter()
        .map(ToString::to_string)
        .chain(
            lint::lint(cluster, reference.policies())
                .iter()
                .map(ToString::to_string),
        )
        .collect();
    if !warnings.is_empty() {
        println!("\nWarnings:");
        for w in warnings {
            println!("  {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
