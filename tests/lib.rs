//! Helpers for Corral's cross-crate tests: where the built binaries and guests are, and how to
//! run them as a user would.
//!
//! The tests expect `cargo build --workspace --bins` and `scripts/build-guests` to have run;
//! `scripts/test` does both before `cargo test`. A missing artifact fails the test with the
//! command that builds it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace built in the same profile as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// An example guest built by `scripts/build-guests`.
pub fn wasm(name: &str) -> PathBuf {
    let path = repo_root().join("target/wasm").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is not built: run scripts/build-guests (scripts/test does)",
        path.display()
    );
    path
}

/// Runs `program` with `args` in the repository root, feeding `stdin`, with a private compiled
/// code cache so that tests do not share state through the user's cache.
pub fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>, cache_dir: &Path) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .env("CORRAL_CACHE_DIR", cache_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("piped stdin");
    input
        .write_all(stdin.unwrap_or_default())
        .expect("writing stdin");
    drop(input);
    child.wait_with_output().expect("waiting for the child")
}

/// `corral run -o json` on `module` with extra `flags` before it; the parsed report and status.
pub fn corral_json(
    flags: &[&str],
    module: &Path,
    args: &[&str],
    cache_dir: &Path,
) -> (serde_json::Value, i32) {
    let module = module.to_str().expect("utf-8 path");
    let mut all = vec!["run", "-o", "json"];
    all.extend_from_slice(flags);
    all.push(module);
    all.extend_from_slice(args);
    let output = run(&bin("corral"), &all, None, cache_dir);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "corral printed no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (report, output.status.code().expect("exit status"))
}
