//! `policy-agent-cni`: the chained CNI plugin (see `policy_agent::cni`).

fn main() -> std::process::ExitCode {
    policy_agent::cni::plugin::main()
}
