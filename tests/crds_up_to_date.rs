//! The committed `crds/*.yaml` must be exactly what the Rust types generate; otherwise a
//! type change ships without its admission rules (or the chart installs stale CRDs).

use std::path::Path;

use acs_identity_operator::api;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut stale = Vec::new();
    for crd in api::crds() {
        let name = api::crd_file_name(&crd);
        let want = api::crd_yaml(&crd).expect("CRD serializes to YAML");
        match std::fs::read_to_string(dir.join(&name)) {
            Ok(have) if have == want => {}
            Ok(_) => stale.push(format!("crds/{name} differs")),
            Err(e) => stale.push(format!("crds/{name}: {e}")),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nregenerate with `cargo run --bin crdgen -- --out crds` and commit",
        stale.join("\n")
    );
}
