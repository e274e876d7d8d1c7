//! `kubectl-acs`: the kubectl plugin for people. On `PATH`, kubectl runs it as
//! `kubectl acs ...`. All logic lives in [`acs_identity_operator::cli`].

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    acs_identity_operator::cli::main()
}
