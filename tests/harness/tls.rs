//! Certificates for TLS tests and benches, made by the README's own steps.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs the README's "Securing a cluster" certificate steps, as written there, in `dir`;
/// answers the directory they fill (`pki/`: `ca.pem`, `host.pem`, `host.key`, `agent.pem`,
/// `agent.key`).
pub fn make_certificates(dir: &Path) -> PathBuf {
    let readme = std::fs::read_to_string(crate::repo_root().join("README.md")).expect("README");
    let section = readme
        .split("## Securing a cluster")
        .nth(1)
        .expect("the README has a Securing a cluster section");
    let script = section
        .split("```bash\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("its first bash block makes the certificates");
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running bash");
    assert!(status.success(), "the README's certificate steps failed");
    dir.join("pki")
}
