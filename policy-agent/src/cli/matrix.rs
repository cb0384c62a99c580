//! `policy-agent matrix`: who reaches whom, from the manifests alone.

use std::process::ExitCode;

use clap::Args;
use policy_agent::{
    evaluate::{Flow, ServiceFlow, compiled::CompiledEvaluator, reference::Reference},
    model::Cluster,
    plan::{self, Host, ServiceProbes, ServiceTarget},
    report::Reachability,
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
    let mut cluster = scenario.loaded.cluster.clone();
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
    let reachability = if args.reference {
        by_reference(&cluster, &hosts, &targets)
    } else {
        by_compiled_maps(&cluster, &hosts, &targets)
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
    Ok(super::ran(rejected))
}

/// Every question answered by the reference semantics.
fn by_reference(cluster: &Cluster, hosts: &[Host], targets: &[ServiceTarget]) -> Reachability {
    let reference = Reference::new(cluster);
    plan::answer_with_services(
        hosts,
        targets,
        |q| Flow::of(hosts, q).is_some_and(|f| reference.allows(&f)),
        |q| {
            ServiceFlow::of(hosts, targets, q)
                .map_or(Some(false), |f| reference.explain_service(&f).allowed())
        },
    )
}

/// Every question answered from the compiled maps, with the datapath's lookups.
fn by_compiled_maps(cluster: &Cluster, hosts: &[Host], targets: &[ServiceTarget]) -> Reachability {
    let compiled = CompiledEvaluator::new(cluster);
    plan::answer_with_services(
        hosts,
        targets,
        |q| Flow::of(hosts, q).is_some_and(|f| compiled.allows(&f)),
        |q| ServiceFlow::of(hosts, targets, q).map_or(Some(false), |f| compiled.allows_service(&f)),
    )
}
