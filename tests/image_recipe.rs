//! `make image` builds the operator image offline, FROM scratch, by mirroring the
//! Dockerfile's final stage (hack/image/build.sh). These tests keep the two recipes in
//! step: the published Dockerfile is mirrored as is, and any final-stage change the
//! local build does not understand fails loudly instead of drifting.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `build.sh --check` on `dockerfile`: (success, stderr).
fn check(dockerfile: &Path) -> (bool, String) {
    let out = Command::new(root().join("hack/image/build.sh"))
        .args(["--check", "--dockerfile"])
        .arg(dockerfile)
        .output()
        .expect("run hack/image/build.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn variant(edit: impl Fn(&str) -> String) -> (tempfile::TempDir, PathBuf) {
    let original = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let edited = edit(&original);
    assert_ne!(edited, original, "the edit must change the Dockerfile");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Dockerfile");
    std::fs::write(&path, edited).expect("write variant");
    (dir, path)
}

#[test]
fn the_dockerfile_is_mirrored_with_both_binaries() {
    let (ok, stderr) = check(&root().join("Dockerfile"));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("binaries: acs-identity-operator kubectl-acs"),
        "{stderr}"
    );
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    // kubectl-acs is on the image's PATH, where examples/pod.yaml runs it by name.
    assert!(dockerfile.contains("COPY --from=builder /kubectl-acs /usr/local/bin/kubectl-acs"));
    assert!(dockerfile.contains("ENV PATH=/usr/local/sbin:/usr/local/bin:"));
    let pod = std::fs::read_to_string(root().join("examples/pod.yaml")).expect("pod.yaml");
    assert!(
        pod.contains(r#"command: ["kubectl-acs", "token", "--file""#),
        "{pod}"
    );
}

#[test]
fn a_final_stage_instruction_the_local_build_does_not_know_fails() {
    let (_dir, path) = variant(|d| d.replace("EXPOSE 8080", "RUN true\nEXPOSE 8080"));
    let (ok, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("final-stage instruction RUN not understood"),
        "{stderr}"
    );
}

#[test]
fn copying_a_binary_the_builder_does_not_build_fails() {
    let (_dir, path) = variant(|d| {
        d.replace(
            "COPY --from=builder /kubectl-acs /usr/local/bin/kubectl-acs",
            "COPY --from=builder /acs-emulator /usr/local/bin/acs-emulator",
        )
    });
    let (ok, stderr) = check(&path);
    assert!(!ok);
    assert!(
        stderr.contains("COPY --from=builder /acs-emulator"),
        "{stderr}"
    );
}

#[test]
fn an_image_that_runs_as_root_is_refused() {
    let (_dir, path) = variant(|d| d.replace("USER 65532:65532", "USER 0:0"));
    let (ok, stderr) = check(&path);
    assert!(!ok);
    assert!(stderr.contains("must run as USER 65532"), "{stderr}");
}
