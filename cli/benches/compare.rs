//! Corral beside the wasmtime CLI, per task, in one run: what a user pays to run one task of a
//! module with `wasmtime run` (one process per task, its compiled-code cache on, as by default),
//! with `corral run` (one process per task, Corral's cache warm), and through a `corral dev`
//! cluster (a task submitted over gRPC: one at a time, submit to FINISHED; and 1,000 tasks from 16
//! concurrent submitters, wall time per task).
//!
//! Two modules: a trivial one (`_start` returns) and the linreg example on iris (stdin). Before
//! timing, the bench checks that the three give the same stdout.
//!
//! wasmtime 48 comes from `$CORRAL_WASMTIME`, else `target/bench-tools/bin/wasmtime`, which
//! `scripts/bench compare` installs (`cargo install --locked wasmtime-cli@48.0.8`). The guests
//! come from `scripts/build-guests`.
//!
//! Run: `cargo bench -p corral --bench compare [-- --runs N]` (default 100 processes per case).

// A bench binary, not a library.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_tests::bench::{arg, ms, percentile};
use corral_tests::server::{self, Server};
use corral_tests::{bench, fixtures};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasmtime() -> PathBuf {
    let path = std::env::var_os("CORRAL_WASMTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/bench-tools/bin/wasmtime"));
    assert!(
        path.exists(),
        "no wasmtime at {}: `scripts/bench compare` installs wasmtime-cli 48.0.8 there, or set CORRAL_WASMTIME",
        path.display()
    );
    path
}

struct Module {
    name: &'static str,
    path: PathBuf,
    stdin: Vec<u8>,
}

/// Runs `command` with `stdin` once; answers its stdout (asserting success) and wall time.
fn once(command: &mut Command, stdin: &[u8]) -> (Vec<u8>, Duration) {
    use std::io::Write;
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("writing stdin");
    let out = child.wait_with_output().expect("waiting");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, took)
}

/// Median and p99 of `runs` runs of `make()`, after two untimed ones (which fill caches);
/// answers the stdout of the last.
fn processes(
    runs: usize,
    stdin: &[u8],
    mut make: impl FnMut() -> Command,
) -> (Vec<u8>, Duration, Duration) {
    let mut out = Vec::new();
    for _ in 0..2 {
        out = once(&mut make(), stdin).0;
    }
    let mut times: Vec<Duration> = (0..runs).map(|_| once(&mut make(), stdin).1).collect();
    times.sort();
    (out, percentile(&times, 0.5), percentile(&times, 0.99))
}

fn row(case: &str, median: Duration, p99: Duration, baseline: Duration) {
    println!(
        "  {case:<48} median {:>8.3} ms  p99 {:>8.3} ms  {:>6.2}x wasmtime run",
        ms(median),
        ms(p99),
        median.as_secs_f64() / baseline.as_secs_f64()
    );
}

async fn bench(args: Vec<String>) {
    let runs: usize = arg(&args, "--runs", 100);
    let wasmtime = wasmtime();
    let corral = PathBuf::from(env!("CARGO_BIN_EXE_corral"));
    let scratch = tempfile::tempdir().expect("temp dir");
    let trivial = scratch.path().join("trivial.wat");
    std::fs::write(&trivial, fixtures::wat("trivial")).expect("writing the trivial module");
    let linreg = root().join("target/wasm/linreg.wasm");
    assert!(
        linreg.exists(),
        "{} is missing: run scripts/build-guests",
        linreg.display()
    );
    let modules = [
        Module {
            name: "trivial",
            path: trivial,
            stdin: Vec::new(),
        },
        Module {
            name: "linreg on iris",
            path: linreg,
            stdin: std::fs::read(root().join("examples/data/iris.csv")).expect("iris.csv"),
        },
    ];
    let cache = scratch.path().join("corral-cache");
    let dev = {
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--agents", "2"];
        args.extend(["--slots", "16", "--memory", "8GiB"]);
        Server::start(&args, true)
    };
    let mut client = server::connect(&dev.url, &dev.token).await;
    server::wait_for_agents(&mut client, 2).await;

    for module in &modules {
        println!("{} ({} processes per case):", module.name, runs);
        let (wasmtime_out, wt_median, wt_p99) = processes(runs, &module.stdin, || {
            let mut c = Command::new(&wasmtime);
            c.args(["run", "-W", "unknown-imports-default=y"])
                .arg(&module.path);
            c
        });
        row("wasmtime run (cache on)", wt_median, wt_p99, wt_median);
        let (corral_out, median, p99) = processes(runs, &module.stdin, || {
            let mut c = Command::new(&corral);
            c.arg("run")
                .arg("--cache-dir")
                .arg(&cache)
                .arg("--stdin")
                .arg("/dev/stdin")
                .arg(&module.path);
            c
        });
        assert_eq!(
            corral_out, wasmtime_out,
            "corral run and wasmtime run disagree"
        );
        row("corral run (cache warm)", median, p99, wt_median);

        // Through the cluster.
        let sha = client
            .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                chunk: std::fs::read(&module.path).expect("module").into(),
            }]))
            .await
            .expect("upload")
            .into_inner()
            .sha256;
        let spec = || {
            let mut spec = bench::trivial_spec(&sha, module.name);
            spec.stdin = module.stdin.clone().into();
            spec.limits.as_mut().expect("limits").memory_bytes = 64 << 20;
            spec
        };
        let mut latencies = Vec::with_capacity(runs);
        let mut last = String::new();
        for i in 0..runs + 2 {
            let started = Instant::now();
            let id = server::submit(&mut client, spec()).await;
            server::finished(&mut client, &id).await;
            if i >= 2 {
                latencies.push(started.elapsed());
            }
            last = id;
        }
        let output = client
            .get_task_output(pb::GetTaskOutputRequest { task_id: last })
            .await
            .expect("output")
            .into_inner();
        assert_eq!(
            output.stdout.as_ref(),
            wasmtime_out.as_slice(),
            "the cluster and wasmtime run disagree"
        );
        latencies.sort();
        row(
            "cluster, one task at a time (submit to result)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            wt_median,
        );
        let total = 1_024;
        let started = Instant::now();
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (mut client, spec) = (client.clone(), spec());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..total / 16 {
                        ids.push(server::submit(&mut client, spec.clone()).await);
                    }
                    for id in ids {
                        server::finished(&mut client, &id).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("submitter");
        }
        let per_task = started.elapsed() / total;
        println!(
            "  {:<48} {:>8.3} ms per task ({:.0} tasks/s)  {:>6.2}x wasmtime run",
            "cluster, 16 submitters (wall time / tasks)",
            ms(per_task),
            1.0 / per_task.as_secs_f64(),
            per_task.as_secs_f64() / wt_median.as_secs_f64()
        );
    }
}

fn main() {
    bench::main_with(env!("CARGO_BIN_EXE_corral"), bench);
}
