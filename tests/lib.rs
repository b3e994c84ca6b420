//! `corral-tests`: the one harness of Corral's cross-crate tests and end-to-end benches.
//!
//! - [`build`]: the `corral` binary and the native examples, built on first use in the test's
//!   own profile and target dir (so `cargo test --workspace` needs nothing built beforehand
//!   but the wasm guests, which `scripts/build-guests` makes); [`wasm`] for those guests.
//! - [`fixtures`]: the WAT modules the tests share, kept as files in `tests/fixtures/`.
//! - [`server`]: a `corral` server process, a client that waits for it, the RPCs tests repeat,
//!   and a process's CPU time and RSS.
//! - [`cluster`]: a whole cluster of processes on 127.0.0.1 (a host and agents), which tests
//!   restart and kill, and the CLI run against it with a time limit.
//! - [`proxy`]: a TCP proxy a test cuts and restores, as a network outage would.
//! - [`disk`]: a small tmpfs a test fills, as a full disk would.
//! - [`bench`]: what the end-to-end benches share (percentiles, their entry point).

#[path = "harness/bench.rs"]
pub mod bench;
#[path = "harness/build.rs"]
pub mod build;
#[path = "harness/cluster.rs"]
pub mod cluster;
#[path = "harness/disk.rs"]
pub mod disk;
#[path = "harness/fixtures.rs"]
pub mod fixtures;
#[path = "harness/proxy.rs"]
pub mod proxy;
#[path = "harness/server.rs"]
pub mod server;
#[path = "harness/tls.rs"]
pub mod tls;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use build::corral;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Bytes a command printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's stdout, once it succeeded (else the test fails showing its status and output).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
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

/// How long a command a test runs may take before it is killed and the test fails: longer
/// than any test's command needs on a loaded 2-core machine, short enough that a hang is
/// reported rather than waited out.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Runs `command` to its end, feeding `stdin`, and answers its output; kills it and panics,
/// with what it printed, if it takes longer than `limit`.
pub fn output_within(mut command: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    use std::io::Write;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let mut input = child.stdin.take().expect("piped stdin");
    // A child that exits without reading its stdin closes the pipe: not an error here.
    let _ = input.write_all(stdin.unwrap_or_default());
    drop(input);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!(
                "{shown} did not end within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("the stdout reader"),
        stderr: stderr.join().expect("the stderr reader"),
    }
}

/// Runs `program` with `args` in the repository root, feeding `stdin`, with a private compiled
/// code cache so that tests do not share state through the user's cache.
pub fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>, cache_dir: &Path) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(repo_root())
        .env("CORRAL_CACHE_DIR", cache_dir);
    output_within(command, stdin, COMMAND_LIMIT)
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
    let output = run(&corral(), &all, None, cache_dir);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "corral printed no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (report, output.status.code().expect("exit status"))
}
