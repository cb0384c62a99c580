//! `policy-agent`: the node agent and its tools.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_json);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // Errors quote file and object names, which may hold anything.
            let message = policy_agent::report::escape_text(&format!("{e:#}"));
            eprintln!("policy-agent: {message}");
            ExitCode::FAILURE
        }
    }
}
