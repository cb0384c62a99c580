//! `policy-agent matrix`: who reaches whom, from the manifests alone.
//!
//! The answers are written as they are computed, a source at a time (see
//! [`policy_agent::answers`]): a cluster of 10,000 pods has 100 million pairs, and none of
//! them is held longer than its row. `--from`, `--to` and `--namespace` choose the hosts
//! before anything is evaluated (only their pods are compiled), and `--summary` folds the
//! pairs into workload pairs as they stream by.

use std::{
    collections::BTreeSet,
    io::{self, BufWriter, Write as _},
    net::IpAddr,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Args;
use policy_agent::{
    answers::{Answers, Shown},
    evaluate::{Flow, ServiceFlow, compiled::CompiledEvaluator, reference::Reference},
    filter::{Filter, Pattern},
    model::ObjectRef,
    plan::{self, Host, Question, ServiceProbes, ServiceQuestion, ServiceTarget},
    report,
    semantics::lint,
    summary::Summary,
};

use super::scenario::ScenarioArgs;

#[derive(Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Evaluate the semantics directly instead of the compiled maps.
    #[arg(long)]
    reference: bool,
    /// Print the JSON contract instead of tables.
    #[arg(long)]
    json: bool,
    /// Show only these sources: NAMESPACE/POD (`*` wildcards: `shop/*`, `*/web-*`), a
    /// label selector as `kubectl -l` takes it (`app=web,tier in (a,b)`), or an address or
    /// CIDR. Repeat for more (any may match).
    #[arg(long, value_name = "SELECTOR")]
    from: Vec<Pattern>,
    /// Show only these destinations: as --from; a NAMESPACE/NAME also picks the Service of
    /// that name (probes through Services), an address or CIDR its frontend addresses.
    #[arg(long, value_name = "SELECTOR")]
    to: Vec<Pattern>,
    /// Show only pods (and Services) of this namespace, as sources and as destinations.
    /// Repeat for more.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    namespace: Vec<String>,
    /// Fold the pods into their workloads (Deployment, StatefulSet, DaemonSet, Job, or the
    /// pod itself) and print, per pair of workloads, allowed, denied or partly (the pods
    /// of the pair differ).
    #[arg(long)]
    summary: bool,
}

pub fn run(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = args.scenario.load()?;
    let mut cluster = std::mem::take(&mut scenario.loaded.cluster);
    let services = ServiceProbes::resolve(scenario.config.services, &cluster);
    if services == ServiceProbes::PerPod {
        // The per-pod Services are part of the cluster the evaluators see: the compiled
        // maps need their frontends.
        plan::add_per_pod_services(&mut cluster);
    }
    let hosts = plan::hosts(
        &cluster,
        &scenario.config.externals,
        &scenario.config.external_ports,
    );
    let targets = if services == ServiceProbes::Off {
        Vec::new()
    } else {
        plan::service_targets(&cluster)
    };
    let filter = Filter {
        from: args.from.clone(),
        to: args.to.clone(),
        namespaces: args.namespace.clone(),
    };
    let shown = Shown::new(
        &hosts,
        &targets,
        |h| filter.source(&cluster, h),
        |h| filter.destination(&cluster, h),
        |t| filter.target(t),
    );
    // A filtered matrix compiles, and lints, only what it shows.
    let compiled_pods = (!filter.is_everything()).then(|| pods_met(&hosts, &targets, &shown));
    let rejected = scenario.report_policies(&cluster, |policies| {
        compiled_pods.as_ref().map(|(pods, destinations, dialled)| {
            lint::Scope::of_flow(&cluster, policies, pods, destinations, dialled.clone())
        })
    });
    let summary = args.summary.then(|| Summary::new(&cluster, &hosts));
    let written = if args.reference {
        let reference = Reference::new(&cluster);
        print(
            &args,
            "reference semantics",
            summary,
            &Answers::shown(
                &hosts,
                &targets,
                shown,
                |q: &Question| Flow::of(&hosts, q).is_some_and(|f| reference.allows(&f)),
                |q: &ServiceQuestion| {
                    ServiceFlow::of(&hosts, &targets, q)
                        .map_or(Some(false), |f| reference.explain_service(&f).allowed())
                },
            ),
        )
    } else {
        let compiled = match &compiled_pods {
            None => CompiledEvaluator::new(&cluster),
            Some((pods, _, _)) => CompiledEvaluator::for_pods(&cluster, pods),
        };
        print(
            &args,
            "compiled maps",
            summary,
            &Answers::shown(
                &hosts,
                &targets,
                shown,
                |q: &Question| Flow::of(&hosts, q).is_some_and(|f| compiled.allows(&f)),
                |q: &ServiceQuestion| {
                    ServiceFlow::of(&hosts, &targets, q)
                        .map_or(Some(false), |f| compiled.allows_service(&f))
                },
            ),
        )
    };
    match written {
        Ok(()) => Ok(super::ran(rejected)),
        // A reader that stops early (`| head`) wants no more.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(super::ran(rejected)),
        Err(e) => Err(e).context("writing the matrix"),
    }
}

/// What the flows of a filtered matrix meet: every pod shown (as source or destination)
/// and every pod with a backend address of a Service shown; the pods at their receiving
/// end; and the Services they dial.
fn pods_met(
    hosts: &[Host],
    targets: &[ServiceTarget],
    shown: &Shown,
) -> (
    BTreeSet<ObjectRef>,
    BTreeSet<ObjectRef>,
    BTreeSet<ObjectRef>,
) {
    let backend_addresses: BTreeSet<IpAddr> = shown
        .targets()
        .flat_map(|i| targets[i].backends.iter().map(|b| b.address))
        .collect();
    let backends = hosts
        .iter()
        .filter(|h| h.ips.iter().any(|ip| backend_addresses.contains(ip)))
        .filter_map(|h| h.pod.clone());
    let destinations: BTreeSet<ObjectRef> = shown
        .destinations()
        .iter()
        .filter_map(|&i| hosts[i].pod.clone())
        .chain(backends)
        .collect();
    let pods = shown
        .sources()
        .filter_map(|i| hosts[i].pod.clone())
        .chain(destinations.iter().cloned())
        .collect();
    let dialled = shown
        .targets()
        .map(|i| targets[i].service.clone())
        .collect();
    (pods, destinations, dialled)
}

/// Writes the answers to stdout as they come: the JSON contract, or the tables; with
/// `summary`, folded into workload pairs first.
fn print<A, T>(
    args: &MatrixArgs,
    evaluator: &str,
    summary: Option<Summary>,
    answers: &Answers<'_, A, T>,
) -> io::Result<()>
where
    A: Fn(&Question) -> bool,
    T: Fn(&ServiceQuestion) -> Option<bool>,
{
    let mut out = BufWriter::new(io::stdout().lock());
    match (summary, args.json) {
        (Some(mut summary), json) => {
            summary.add_all(answers.probes());
            if json {
                summary.write_json(&mut out)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "Matrix by workload ({evaluator}): rows are source workloads, columns \
                     destination workloads.\n"
                )?;
                summary.write_tables(&mut out)?;
            }
        }
        (None, true) => {
            report::write_json(&mut out, answers.probes())?;
            writeln!(out)?;
        }
        (None, false) => {
            writeln!(
                out,
                "Matrix ({evaluator}): rows are sources, columns destinations.\n"
            )?;
            report::write_tables(&mut out, answers)?;
        }
    }
    out.flush()
}
