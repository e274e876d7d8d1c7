//! Writes the CRDs generated from `src/api/` as YAML.
//!
//! `crdgen` prints every CRD to stdout (multi-document YAML); `crdgen --out crds` writes
//! one `<plural>.<group>.yaml` per CRD; `crdgen --check --out crds` writes nothing and
//! exits 1 naming every file that is missing or differs, so CI catches a type change
//! committed without regenerated CRDs.

#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use acs_identity_operator::api;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Generate the acs-operator.dev CustomResourceDefinitions from the Rust types")]
struct Args {
    /// Directory to write `<plural>.<group>.yaml` files into; without it, print to stdout.
    #[arg(long, env = "CRDGEN_OUT")]
    out: Option<PathBuf>,
    /// Compare with the files in `--out` (default `crds`) instead of writing; exit 1 on any
    /// difference.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut rendered = Vec::new();
    for crd in api::crds() {
        match api::crd_yaml(&crd) {
            Ok(yaml) => rendered.push((api::crd_file_name(&crd), yaml)),
            Err(e) => {
                eprintln!("crdgen: cannot serialize {}: {e}", api::crd_file_name(&crd));
                return ExitCode::FAILURE;
            }
        }
    }

    let out = match (&args.out, args.check) {
        (Some(dir), _) => dir.clone(),
        (None, true) => PathBuf::from("crds"),
        (None, false) => {
            for (_, yaml) in &rendered {
                print!("---\n{yaml}");
            }
            return ExitCode::SUCCESS;
        }
    };

    if args.check {
        let mut stale = Vec::new();
        for (name, yaml) in &rendered {
            let path = out.join(name);
            match std::fs::read_to_string(&path) {
                Ok(existing) if existing == *yaml => {}
                Ok(_) => stale.push(format!("{} differs", path.display())),
                Err(e) => stale.push(format!("{} unreadable: {e}", path.display())),
            }
        }
        if stale.is_empty() {
            return ExitCode::SUCCESS;
        }
        for s in &stale {
            eprintln!("crdgen: {s}");
        }
        eprintln!(
            "crdgen: run `cargo run --bin crdgen -- --out {}` and commit",
            out.display()
        );
        return ExitCode::FAILURE;
    }

    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("crdgen: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for (name, yaml) in &rendered {
        let path = out.join(name);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
