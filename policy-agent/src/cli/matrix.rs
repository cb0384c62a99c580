//! `policy-agent matrix`: who reaches whom, from the manifests alone.

use std::process::ExitCode;

use clap::Args;
use policy_agent::{
    evaluate::{Flow, compiled::CompiledEvaluator, reference::Reference},
    plan,
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
    scenario.report_policies();
    let cluster = &scenario.loaded.cluster;
    let hosts = plan::hosts(
        cluster,
        &scenario.config.externals,
        &scenario.config.external_ports,
    );
    let reachability = if args.reference {
        let reference = Reference::new(cluster);
        plan::answer(&hosts, |q| {
            Flow::of(&hosts, q).is_some_and(|f| reference.allows(&f))
        })
    } else {
        let compiled = CompiledEvaluator::new(cluster);
        plan::answer(&hosts, |q| {
            Flow::of(&hosts, q).is_some_and(|f| compiled.allows(&f))
        })
    };
    if args.json {
        println!("{}", reachability.to_json());
    } else {
        let evaluator = if args.reference {
            "reference semantics"
        } else {
            "compiled maps"
        };
        println!("Matrix ({evaluator}): rows are sources, columns destinations.\n");
        print!("{}", reachability.render_table());
    }
    Ok(ExitCode::SUCCESS)
}
