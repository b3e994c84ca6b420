//! The binaries the tests run as processes: `corral`, and the examples built natively. Each is
//! built on first use in this test's profile and target dir (`cargo build -p PKG --bin BIN`,
//! which is quick when it is up to date), so that `cargo test --workspace` works after
//! `scripts/build-guests` alone. A bench, which has `CARGO_BIN_EXE_corral`, names its binary
//! with [`set_corral`] instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

static CORRAL: OnceLock<PathBuf> = OnceLock::new();

/// Uses `path` as the `corral` binary (benches pass `env!("CARGO_BIN_EXE_corral")`).
pub fn set_corral(path: impl Into<PathBuf>) {
    let _ = CORRAL.set(path.into());
}

/// The `corral` binary: `$CORRAL_BIN`, the one [`set_corral`] named, or built now.
pub fn corral() -> PathBuf {
    CORRAL
        .get_or_init(|| match std::env::var_os("CORRAL_BIN") {
            Some(path) => PathBuf::from(path),
            None => binary("corral", "corral"),
        })
        .clone()
}

/// The native build of an example (`linreg`, `logreg`, `kmeans`).
pub fn native(example: &str) -> PathBuf {
    binary(&format!("corral-example-{example}"), example)
}

/// `bin` of `package`, built in this test's profile and target dir once per process.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    // Held while building: cargo serialises builds of one target dir anyway.
    let mut built = built.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(path) = built.get(bin) {
        return path.clone();
    }
    let (target_dir, profile_dir) = target_of_this_test();
    let profile = match profile_dir.as_str() {
        "debug" => "dev",
        other => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(crate::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    assert!(
        out.status.success(),
        "building {bin} of {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = target_dir.join(&profile_dir).join(bin);
    assert!(
        path.exists(),
        "cargo built {bin} but {} is missing",
        path.display()
    );
    built.insert(bin.to_string(), path.clone());
    path
}

/// The target dir and profile directory the running test binary was built in
/// (`<target>/<profile>/deps/<test>-<hash>`).
fn target_of_this_test() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps");
    let name = profile
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory")
        .to_string();
    let target = profile.parent().expect("a target dir").to_path_buf();
    (target, name)
}
