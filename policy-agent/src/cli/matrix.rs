//! `policy-agent matrix`: who reaches whom, from the manifests alone.
//!
//! The answers are written as they are computed, a source at a time (see
//! [`policy_agent::answers`]): a cluster of 10,000 pods has 100 million pairs, and none of
//! them is held longer than its row.

use std::{
    io::{self, BufWriter, Write as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Args;
use policy_agent::{
    answers::Answers,
    evaluate::{Flow, ServiceFlow, compiled::CompiledEvaluator, reference::Reference},
    plan::{self, Question, ServiceProbes, ServiceQuestion},
    report,
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
}

pub fn run(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    let scenario = args.scenario.load()?;
    let rejected = scenario.report_policies();
    let mut cluster = scenario.loaded.cluster;
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
    let written = if args.reference {
        let reference = Reference::new(&cluster);
        print(
            &args,
            "reference semantics",
            &Answers::new(
                &hosts,
                &targets,
                |q: &Question| Flow::of(&hosts, q).is_some_and(|f| reference.allows(&f)),
                |q: &ServiceQuestion| {
                    ServiceFlow::of(&hosts, &targets, q)
                        .map_or(Some(false), |f| reference.explain_service(&f).allowed())
                },
            ),
        )
    } else {
        let compiled = CompiledEvaluator::new(&cluster);
        print(
            &args,
            "compiled maps",
            &Answers::new(
                &hosts,
                &targets,
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

/// Writes the answers to stdout as they come: the JSON contract, or the tables.
fn print<A, T>(args: &MatrixArgs, evaluator: &str, answers: &Answers<'_, A, T>) -> io::Result<()>
where
    A: Fn(&Question) -> bool,
    T: Fn(&ServiceQuestion) -> Option<bool>,
{
    let mut out = BufWriter::new(io::stdout().lock());
    if args.json {
        report::write_json(&mut out, answers.probes())?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "Matrix ({evaluator}): rows are sources, columns destinations.\n"
        )?;
        report::write_tables(&mut out, answers)?;
    }
    out.flush()
}
