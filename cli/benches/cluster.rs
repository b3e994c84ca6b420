//! End to end, three times: through a real `corral dev` process (a host and two agents in one
//! process), then through a `corral host` and two `corral agent` processes, then the same over
//! mutual TLS (certificates made by the README's steps); 16 slots per agent, state in a temp
//! dir on disk, trivial tasks submitted over gRPC on loopback with an admin token.
//!
//! - RSS of each process, idle after a warm-up;
//! - idle latency: one task at a time, submit to FINISHED seen on a watch; median and p99;
//! - throughput: 10,240 tasks from 1, 16 and 256 concurrent submitters (each submits its share,
//!   then watches each of its tasks to the end), first submit to last FINISHED, with the
//!   submit-to-result percentiles, and the CPU time per task of Corral's processes and of this
//!   load generator (on 2 cores the two share, the sum bounds the rate);
//! - through `corral dev`: an array of 10,000 runs of the linreg example on iris.
//!
//! With `-- --jobs`, jobs alone instead: through `corral dev` and through a host and two
//! agents, a job (`SubmitJob`, one request) of 10,000 trivial tasks, waited for by polling
//! `GetJob` as `corral job wait` does, with the CPU time per task of Corral's processes and of
//! the client; and, through `corral dev`, a job of 10,000 linreg runs on iris.
//!
//! With `-- --inputs`, a shared input instead: through a host and two agents, a 500 MB input
//! (`-- --input-mib N` for another size) uploaded over gRPC (time, and the host's resident set
//! after it), then a job of 100 tasks mounting it, spread over both agents: the job's time and
//! how many times agents fetched the input (at most once each).
//!
//! Run: `cargo bench -p corral --bench cluster` (`-- --quick` for fewer tasks, `-- --tls` for
//! the TLS setup alone, `-- --plain` for the same processes in plaintext alone, `-- --jobs`
//! for jobs, `-- --inputs` for a shared input; `CORRAL_BENCH_BREAKDOWN=1` first prints when each state of five tasks was seen).

// A bench binary, not a library.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_tests::bench;
use corral_tests::bench::{ms, percentile, trivial_spec as spec};
use corral_tests::server::{self, Server};
use corral_tests::server::{finished, submit};

/// The cluster under test: `corral dev` alone, or a host and two agents as processes.
struct Setup {
    name: &'static str,
    servers: Vec<Server>,
    url: String,
    token: String,
    /// How clients reach an https:// host.
    tls: corral_proto::TlsClient,
    /// Holds the certificates of a TLS setup.
    _pki: Option<tempfile::TempDir>,
}

const AGENT_ARGS: [&str; 4] = ["--slots", "16", "--memory", "8GiB"];

fn dev() -> Setup {
    let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--agents", "2"];
    args.extend(AGENT_ARGS);
    let dev = Server::start(&args, true);
    Setup {
        name: "corral dev",
        url: dev.url.clone(),
        token: dev.token.clone(),
        servers: vec![dev],
        tls: Default::default(),
        _pki: None,
    }
}

fn processes(tls: bool) -> Setup {
    processes_with(tls, None)
}

/// [`processes`], the host with the config file `config`.
fn processes_with(tls: bool, config: Option<&str>) -> Setup {
    let pki_dir = tls.then(|| tempfile::tempdir().expect("a temp dir"));
    let pki = pki_dir
        .as_ref()
        .map(|d| corral_tests::tls::make_certificates(d.path()));
    let file = |name: &str| {
        pki.as_ref()
            .expect("certificates")
            .join(name)
            .to_str()
            .expect("a UTF-8 path")
            .to_string()
    };
    let mut host_args = vec!["host", "--listen", "127.0.0.1:0"];
    if let Some(config) = config {
        host_args.extend(["--config", config]);
    }
    let tls_args;
    if tls {
        tls_args = [
            "--tls-cert".to_string(),
            file("host.pem"),
            "--tls-key".into(),
            file("host.key"),
            "--tls-client-ca".into(),
            file("ca.pem"),
        ];
        host_args.extend(tls_args.iter().map(String::as_str));
    }
    let host = Server::start(&host_args, true);
    let (url, token) = (host.url.clone(), host.token.clone());
    let client_tls = corral_proto::TlsClient {
        ca: tls.then(|| std::fs::read(file("ca.pem")).expect("the CA")),
        identity: None,
    };
    let join = host.join_token_with(&client_tls);
    let mut agents = Vec::new();
    let agent_tls: Vec<String> = if tls {
        vec![
            "--tls-ca".to_string(),
            file("ca.pem"),
            "--tls-cert".into(),
            file("agent.pem"),
            "--tls-key".into(),
            file("agent.key"),
        ]
    } else {
        Vec::new()
    };
    for id in ["a1", "a2"] {
        let mut args = vec!["agent", "--host", &url, "--id", id];
        args.extend(AGENT_ARGS);
        args.extend(agent_tls.iter().map(String::as_str));
        agents.push(Server::start_with_env(
            &args,
            false,
            &[("CORRAL_JOIN_TOKEN", &join)],
        ));
    }
    let mut servers = vec![host];
    servers.extend(agents);
    Setup {
        name: if tls {
            "host + 2 agents, mutual TLS"
        } else {
            "host + 2 agents"
        },
        servers,
        url,
        token,
        tls: client_tls,
        _pki: pki_dir,
    }
}

async fn bench(setup: &Setup, quick: bool) {
    let mut client = server::connect_with(&setup.url, Some(&setup.token), &setup.tls).await;
    let sha = bench::upload_trivial(&mut client).await;
    server::wait_for_agents(&mut client, 2).await;
    let name = setup.name;
    // Warm up: the module compiled on both agents.
    for _ in 0..20 {
        let id = submit(&mut client, spec(&sha, "trivial")).await;
        finished(&mut client, &id).await;
    }
    let rss: Vec<String> = setup
        .servers
        .iter()
        .map(|s| format!("{:.1} MiB", bench::mib(s.usage().rss_bytes)))
        .collect();
    println!("{name}: RSS after warm-up, idle: {}", rss.join(", "));

    if std::env::var_os("CORRAL_BENCH_BREAKDOWN").is_some() {
        for _ in 0..5 {
            let t = Instant::now();
            let id = submit(&mut client, spec(&sha, "trivial")).await;
            let submitted = t.elapsed();
            let mut events = client
                .watch_tasks(pb::WatchTasksRequest {
                    task_id: id.clone(),
                })
                .await
                .expect("watch")
                .into_inner();
            let opened = t.elapsed();
            let mut firsts = Vec::new();
            while let Some(e) = events.message().await.expect("event") {
                firsts.push((e.task.unwrap().state, t.elapsed()));
            }
            println!(
                "submit {submitted:?} watch-open {opened:?} events {firsts:?} end {:?}",
                t.elapsed()
            );
        }
    }
    let n = if quick { 100 } else { 500 };
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let id = submit(&mut client, spec(&sha, "trivial")).await;
        finished(&mut client, &id).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "{name}: idle submit-to-result (n={n}): median {:.2} ms, p99 {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );

    let total = if quick { 2_048 } else { 10_240 };
    for submitters in [1usize, 16, 256] {
        let cpu_before = cpu(setup);
        let started = Instant::now();
        let each = total / submitters;
        let mut handles = Vec::new();
        for _ in 0..submitters {
            let mut client = client.clone();
            let sha = sha.clone();
            handles.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(each);
                let mut ids = Vec::with_capacity(each);
                for _ in 0..each {
                    let t = Instant::now();
                    ids.push((submit(&mut client, spec(&sha, "trivial")).await, t));
                }
                // Then see each one finished (at once, for those that already have).
                for (id, t) in ids {
                    finished(&mut client, &id).await;
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::with_capacity(total);
        for h in handles {
            latencies.extend(h.await.expect("submitter"));
        }
        let elapsed = started.elapsed();
        let (servers, client) = cpu(setup);
        latencies.sort();
        let tasks = each * submitters;
        let per_task =
            |after: Duration, before: Duration| (after - before).as_secs_f64() * 1e6 / tasks as f64;
        println!(
            "{name}: throughput, {submitters:>3} submitter(s): {tasks} tasks in {:.2} s = {:.0} tasks/s \
             (submit-to-result median {:.1} ms, p99 {:.1} ms; CPU per task: Corral {:.0} us, \
             load generator {:.0} us)",
            elapsed.as_secs_f64(),
            tasks as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            per_task(servers, cpu_before.0),
            per_task(client, cpu_before.1),
        );
    }
}

/// CPU time so far of the cluster's processes together, and of this load generator.
fn cpu(setup: &Setup) -> (Duration, Duration) {
    let servers = setup.servers.iter().map(|s| s.usage().cpu).sum();
    (servers, server::Usage::of(std::process::id()).cpu)
}

/// An array of linreg runs on iris (the example guest, iris on stdin) through `setup`, from 16
/// submitters; every one must finish and print the same report.
async fn linreg_array(setup: &Setup, runs: usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let module = root.join("target/wasm/linreg.wasm");
    let bytes = std::fs::read(&module)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", module.display()));
    let iris = std::fs::read(root.join("examples/data/iris.csv")).expect("iris.csv");
    let mut client = server::connect_with(&setup.url, Some(&setup.token), &setup.tls).await;
    let sha = client
        .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
            chunk: bytes.into(),
        }]))
        .await
        .expect("upload")
        .into_inner()
        .sha256;
    let mut spec = spec(&sha, "linreg");
    spec.stdin = iris.into();
    spec.args = vec!["--json".into()];
    spec.limits.as_mut().expect("limits").memory_bytes = 64 << 20;
    let started = Instant::now();
    let submitters = 16;
    let handles: Vec<_> = (0..submitters)
        .map(|_| {
            let (mut client, spec) = (client.clone(), spec.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..runs / submitters {
                    ids.push(submit(&mut client, spec.clone()).await);
                }
                for id in &ids {
                    finished(&mut client, id).await;
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.expect("submitter"));
    }
    let elapsed = started.elapsed();
    let mut reports = std::collections::BTreeSet::new();
    for id in ids.iter().step_by(97) {
        let output = client
            .get_task_output(pb::GetTaskOutputRequest {
                task_id: id.clone(),
            })
            .await
            .expect("output")
            .into_inner();
        reports.insert(output.stdout);
    }
    assert_eq!(reports.len(), 1, "linreg runs disagree: {reports:?}");
    println!(
        "{}: array of {} linreg runs on iris, 16 submitters: {:.2} s = {:.0} runs/s",
        setup.name,
        ids.len(),
        elapsed.as_secs_f64(),
        ids.len() as f64 / elapsed.as_secs_f64()
    );
}

/// A job of `count` tasks of `spec` through `setup`, submitted in one request and waited for
/// by polling `GetJob` (5 ms, doubling to 100 ms, as `corral job wait`): first submit to the
/// job's end, and CPU per task; every task must have finished.
async fn job(setup: &Setup, what: &str, spec: pb::TaskSpec, count: u32) {
    let mut client = server::connect_with(&setup.url, Some(&setup.token), &setup.tls).await;
    let cpu_before = cpu(setup);
    let (_, accepted, elapsed) = run_job(&mut client, spec, count).await;
    let (servers, client_cpu) = cpu(setup);
    let per_task =
        |after: Duration, before: Duration| (after - before).as_secs_f64() * 1e6 / f64::from(count);
    println!(
        "{}: job of {count} {what}: accepted in {:.0} ms, ended in {:.2} s = {:.0} tasks/s \
         (CPU per task: Corral {:.0} us, client {:.0} us)",
        setup.name,
        ms(accepted),
        elapsed.as_secs_f64(),
        f64::from(count) / elapsed.as_secs_f64(),
        per_task(servers, cpu_before.0),
        per_task(client_cpu, cpu_before.1),
    );
}

/// Submits a job of `count` tasks of `spec` in one request and waits for its end by polling
/// `GetJob` (5 ms, doubling to 100 ms, as `corral job wait`); every task must have finished.
/// Answers its id, when it was accepted and when it ended, from the submit.
async fn run_job(
    client: &mut server::Client,
    spec: pb::TaskSpec,
    count: u32,
) -> (String, Duration, Duration) {
    let started = Instant::now();
    let submitted = client
        .submit_job(pb::SubmitJobRequest {
            spec: Some(spec),
            array: count,
            ..Default::default()
        })
        .await
        .expect("submit the job")
        .into_inner();
    let accepted = started.elapsed();
    let mut pause = Duration::from_millis(5);
    let job = loop {
        let job = client
            .get_job(pb::GetJobRequest {
                job_id: submitted.job_id.clone(),
            })
            .await
            .expect("get the job")
            .into_inner();
        if job.state != pb::JobState::Running as i32 {
            break job;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    assert_eq!(
        job.counts.expect("counts").finished,
        count,
        "every task finished: {job:?}"
    );
    (submitted.job_id, accepted, elapsed)
}

/// The job benchmarks through `setup`: a warm-up job, then 10,000 trivial tasks (and, with
/// `linreg`, 10,000 linreg runs on iris).
async fn jobs(setup: &Setup, quick: bool, linreg: bool) {
    let mut client = server::connect_with(&setup.url, Some(&setup.token), &setup.tls).await;
    let sha = bench::upload_trivial(&mut client).await;
    server::wait_for_agents(&mut client, 2).await;
    let count = if quick { 2_000 } else { 10_000 };
    job(setup, "trivial tasks (warm-up)", spec(&sha, "trivial"), 200).await;
    job(setup, "trivial tasks", spec(&sha, "trivial"), count).await;
    if linreg {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let module = root.join("target/wasm/linreg.wasm");
        let bytes = std::fs::read(&module)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", module.display()));
        let sha = server::upload_bytes(&mut client, bytes).await;
        let mut spec = spec(&sha, "linreg");
        spec.stdin = std::fs::read(root.join("examples/data/iris.csv"))
            .expect("iris.csv")
            .into();
        spec.args = vec!["--json".into()];
        spec.limits.as_mut().expect("limits").memory_bytes = 64 << 20;
        job(setup, "linreg runs on iris (warm-up)", spec.clone(), 200).await;
        job(setup, "linreg runs on iris", spec, count).await;
    }
}

/// A shared input of `mib` MiB through `setup`: uploaded, then mounted by a job of 100 trivial
/// tasks on the two agents.
async fn shared_input(setup: &Setup, mib: u64) {
    use sha2::Digest;
    let mut client = server::connect_with(&setup.url, Some(&setup.token), &setup.tls).await;
    let sha = bench::upload_trivial(&mut client).await;
    server::wait_for_agents(&mut client, 2).await;
    // Bytes that do not compress: a xorshift stream.
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("input.bin");
    let size = mib << 20;
    let mut hasher = sha2::Sha256::new();
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("a file"));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for word in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
            hasher.update(&block);
            file.write_all(&block).expect("writing the input");
        }
    }
    let digest = corral_admission::sha256_hex(&hasher.finalize().into());
    let host_before = setup.servers[0].usage();
    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = {
        let (path, digest) = (path.clone(), digest.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = std::fs::File::open(path).expect("the input");
            let mut first = true;
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                let n = file.read(&mut chunk).expect("reading the input");
                if n == 0 {
                    return;
                }
                chunk.truncate(n);
                let message = pb::UploadInputRequest {
                    size_bytes: if first { size } else { 0 },
                    sha256: if first { digest.clone() } else { String::new() },
                    chunk: chunk.into(),
                };
                first = false;
                if tx.blocking_send(message).is_err() {
                    return;
                }
            }
        })
    };
    let uploaded = client
        .upload_input(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("upload the input")
        .into_inner();
    reader.await.expect("the reader");
    let upload = started.elapsed();
    let host_after = setup.servers[0].usage();
    assert_eq!(uploaded.sha256, digest);
    let mut spec = spec(&sha, "reads-nothing");
    spec.inputs = vec![pb::InputMount {
        sha256: digest.clone(),
        path: "/input/data.bin".into(),
    }];
    let (job_id, _, elapsed) = run_job(&mut client, spec, 100).await;
    let tasks = server::all_tasks(&mut client).await;
    let mut agents: Vec<&str> = tasks
        .iter()
        .filter(|t| t.job_id == job_id)
        .map(|t| t.agent_id.as_str())
        .collect();
    agents.sort_unstable();
    agents.dedup();
    let info = client
        .get_input(pb::GetInputRequest { sha256: digest })
        .await
        .expect("the input")
        .into_inner();
    println!(
        "{}: input of {mib} MiB uploaded in {:.2} s = {:.0} MiB/s (host RSS {:.1} MiB before, \
         {:.1} MiB after); a job of 100 tasks mounting it ran on {} agent(s) in {:.2} s; \
         the input was fetched {} time(s)",
        setup.name,
        upload.as_secs_f64(),
        mib as f64 / upload.as_secs_f64(),
        bench::mib(host_before.rss_bytes),
        bench::mib(host_after.rss_bytes),
        agents.len(),
        elapsed.as_secs_f64(),
        info.fetches,
    );
    assert!(
        info.fetches <= agents.len() as u64,
        "fetched once per agent at most"
    );
}

fn main() {
    bench::main_with(env!("CARGO_BIN_EXE_corral"), |args| async move {
        let quick = args.iter().any(|a| a == "--quick");
        if args.iter().any(|a| a == "--inputs") {
            let mib = bench::arg(&args, "--input-mib", 500u64);
            // Spread, so that both agents run tasks of the job.
            let dir = tempfile::tempdir().expect("a temp dir");
            let config = dir.path().join("host.toml");
            std::fs::write(&config, "strategy = \"spread\"\n").expect("the config");
            let mut setup = processes_with(false, config.to_str());
            setup.name = "host + 2 agents (spread)";
            shared_input(&setup, mib).await;
            return;
        }
        if args.iter().any(|a| a == "--jobs") {
            jobs(&dev(), quick, true).await;
            jobs(&processes(false), quick, false).await;
            return;
        }
        let tls = args.iter().any(|a| a == "--tls");
        let plain = args.iter().any(|a| a == "--plain");
        if !tls && !plain {
            let dev = dev();
            bench(&dev, quick).await;
            linreg_array(&dev, if quick { 1_024 } else { 10_000 }).await;
            drop(dev);
        }
        if !tls {
            bench(&processes(false), quick).await;
        }
        if !plain {
            bench(&processes(true), quick).await;
        }
    });
}
