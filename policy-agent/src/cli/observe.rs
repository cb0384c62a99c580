//! `policy-agent flows` and `policy-agent status`: what a running agent sees.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use policy_agent::{agent::api, report::escape};

/// Which agent to ask.
#[derive(Args)]
pub struct AgentArgs {
    /// The agent's socket [default: /run/policy-agent/<instance>.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The agent's instance name.
    #[arg(long, default_value = "agent")]
    instance: String,
}

impl AgentArgs {
    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| api::default_socket(&self.instance))
    }
}

#[derive(Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// Only flows of this pod (NAMESPACE/POD).
    #[arg(long)]
    pod: Option<String>,
    /// Only `allow` or `drop`.
    #[arg(long, value_parser = ["allow", "drop"])]
    verdict: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    agent: AgentArgs,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn flows(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    runtime()?.block_on(api::flows(&args.agent.socket(), |record| {
        let wanted = args
            .pod
            .as_ref()
            .is_none_or(|p| record.pod.as_ref() == Some(p))
            && args.verdict.as_ref().is_none_or(|v| *v == record.verdict);
        if !wanted {
            return true;
        }
        let written = if args.json {
            let line = serde_json::to_string(&record).expect("plain data serializes");
            writeln!(out, "{line}")
        } else {
            // One line naming pods and policies, whose names may hold anything.
            writeln!(out, "{}", escape(&record.to_string()))
        };
        // Whoever reads the output went away (e.g. `| head`): stop quietly.
        written.and_then(|()| out.flush()).is_ok()
    }))?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = runtime()?.block_on(api::status(&args.agent.socket()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}
