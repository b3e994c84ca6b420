//! End to end through a real `corral dev` process (a host and two agents, 16 slots each, state
//! in a temp dir on disk): trivial tasks submitted over gRPC on loopback.
//!
//! - idle latency: one task at a time, submit to FINISHED seen on a watch; median and p99;
//! - throughput: N tasks from C concurrent submitters, first submit to last FINISHED.
//!
//! Run: `cargo bench -p corral --bench cluster` (`-- --quick` for fewer tasks;
//! `CORRAL_BENCH_BREAKDOWN=1` first prints when each state of five tasks was seen).

// A bench binary, not a library.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_proto::pb::corral_client::CorralClient;
use tonic::transport::Channel;

struct Dev {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev() -> Dev {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            "2",
            "--slots",
            "16",
            "--memory",
            "8GiB",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting corral dev");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the address");
    let url = line.trim().trim_start_matches("listening on ").to_string();
    Dev {
        child,
        url,
        _dir: dir,
    }
}

const TRIVIAL: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

fn spec(sha: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        name: "trivial".into(),
        module_sha256: sha.into(),
        limits: Some(pb::Limits {
            memory_bytes: 1 << 20,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn submit(client: &mut CorralClient<Channel>, sha: &str) -> String {
    client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec(sha)),
            idempotency_key: String::new(),
        })
        .await
        .expect("submit")
        .into_inner()
        .task_id
}

async fn finished(client: &mut CorralClient<Channel>, id: &str) {
    let mut events = client
        .watch_tasks(pb::WatchTasksRequest { task_id: id.into() })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(event) = events.message().await.expect("event") {
        last = event.task;
    }
    let last = last.expect("an event");
    assert_eq!(last.state, pb::TaskState::Finished as i32, "{last:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn bench(quick: bool) {
    let dev = start_dev();
    let mut client = loop {
        if let Ok(c) = CorralClient::connect(dev.url.clone()).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sha = client
        .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
            chunk: TRIVIAL.as_bytes().to_vec().into(),
        }]))
        .await
        .expect("upload")
        .into_inner()
        .sha256;
    // Both agents attached.
    loop {
        let agents = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .expect("agents")
            .into_inner()
            .agents;
        if agents
            .iter()
            .filter(|a| a.state == pb::AgentState::Active as i32)
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Warm up: the module compiled on both agents.
    for _ in 0..20 {
        let id = submit(&mut client, &sha).await;
        finished(&mut client, &id).await;
    }

    if std::env::var_os("CORRAL_BENCH_BREAKDOWN").is_some() {
        for _ in 0..5 {
            let t = Instant::now();
            let id = submit(&mut client, &sha).await;
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
        let id = submit(&mut client, &sha).await;
        finished(&mut client, &id).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "idle submit-to-result (n={n}): median {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );

    let total = if quick { 2_000 } else { 10_000 };
    for submitters in [1usize, 16, 64] {
        let started = Instant::now();
        let each = total / submitters;
        let mut handles = Vec::new();
        for _ in 0..submitters {
            let mut client = client.clone();
            let sha = sha.clone();
            handles.push(tokio::spawn(async move {
                let mut ids = Vec::with_capacity(each);
                for _ in 0..each {
                    let id = submit(&mut client, &sha).await;
                    ids.push(id);
                }
                // Then see each one finished (at once, for those that already have).
                for id in ids {
                    finished(&mut client, &id).await;
                }
            }));
        }
        for h in handles {
            h.await.expect("submitter");
        }
        let elapsed = started.elapsed();
        let tasks = each * submitters;
        println!(
            "throughput, {submitters:>2} submitter(s): {tasks} tasks in {:.2} s = {:.0} tasks/s",
            elapsed.as_secs_f64(),
            tasks as f64 / elapsed.as_secs_f64()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run this.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench(quick));
}
