//! Memory: the RSS of a `corral host` and of one `corral agent` (1,000 slots) as processes,
//! idle after a warm-up, then with 1,000 tasks running at once, then after they are killed.
//! Each task is a guest parked in `poll_oneoff` (a one-hour sleep) with one 64 KiB page of
//! linear memory, so the difference per task is what the agent spends on a running task
//! beyond its guest: the store, WASI context, fiber stack, blocking thread, buffers and
//! bookkeeping.
//!
//! Run: `cargo bench -p corral --bench memory [-- --tasks N]`.

// A bench binary, not a library.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_tests::bench::{arg, mib};
use corral_tests::server::{self, Server};
use corral_tests::{bench, fixtures};

/// Waits until the agent's RSS holds still (within 1% over a second, at most 30 s): tasks show
/// RUNNING as soon as the agent starts them, before every guest is parked in its sleep.
async fn settle(agent: &Server) {
    let mut last = agent.usage().rss_bytes;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = agent.usage().rss_bytes;
        if now.abs_diff(last) * 100 <= last {
            return;
        }
        last = now;
    }
}

async fn bench(args: Vec<String>) {
    let tasks: usize = arg(&args, "--tasks", 1_000);
    let host = Server::start(&["host", "--listen", "127.0.0.1:0"], true);
    let slots = tasks.to_string();
    let agent = host.agent(&["--id", "a1", "--slots", &slots, "--memory", "64GiB"]);
    let mut client = server::connect(&host.url, &host.token).await;
    server::wait_for_agents(&mut client, 1).await;
    let trivial = bench::upload_trivial(&mut client).await;
    for _ in 0..20 {
        let id = server::submit(&mut client, bench::trivial_spec(&trivial, "warm-up")).await;
        server::finished(&mut client, &id).await;
    }
    let sleeper = client
        .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
            chunk: fixtures::sleep(Duration::from_secs(3600))
                .into_bytes()
                .into(),
        }]))
        .await
        .expect("upload")
        .into_inner()
        .sha256;
    settle(&agent).await;
    let (host_idle, agent_idle) = (host.usage(), agent.usage());

    let started = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let mut spec = bench::trivial_spec(&sleeper, format!("sleeper-{i}"));
        spec.limits.as_mut().expect("limits").timeout_ms = 3_600_000;
        ids.push(server::submit(&mut client, spec).await);
    }
    while server::count(&mut client, pb::TaskState::Running).await < tasks {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{tasks} tasks did not all start running within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running = started.elapsed();
    settle(&agent).await;
    let (host_busy, agent_busy) = (host.usage(), agent.usage());
    let threads = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_string()))
        .expect("Threads");

    for id in &ids {
        client
            .kill_task(pb::KillTaskRequest {
                task_id: id.clone(),
            })
            .await
            .expect("kill");
    }
    let killing = Instant::now();
    while server::count(&mut client, pb::TaskState::Killed).await < tasks {
        assert!(
            killing.elapsed() < Duration::from_secs(60),
            "{tasks} tasks were not all KILLED within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(&agent).await;
    let (host_after, agent_after) = (host.usage(), agent.usage());

    let per_task = agent_busy.rss_bytes.saturating_sub(agent_idle.rss_bytes) / tasks as u64;
    println!(
        "{tasks} sleeping tasks all RUNNING {:.2} s after the first submit",
        all_running.as_secs_f64()
    );
    println!("agent threads with {tasks} guests parked: {threads} (one blocking thread per guest)");
    println!(
        "agent RSS: idle {:.1} MiB, {tasks} running {:.1} MiB, after killing them {:.1} MiB",
        mib(agent_idle.rss_bytes),
        mib(agent_busy.rss_bytes),
        mib(agent_after.rss_bytes)
    );
    println!(
        "agent per running task: {:.1} KiB in all (the guest touches one 4 KiB page of its 64 KiB \
         linear memory; the rest is the agent's); after the runs the pool keeps 64 KiB per used \
         slot resident for reuse",
        per_task as f64 / 1024.0,
    );
    println!(
        "host RSS: idle {:.1} MiB, {tasks} running {:.1} MiB, after {:.1} MiB",
        mib(host_idle.rss_bytes),
        mib(host_busy.rss_bytes),
        mib(host_after.rss_bytes)
    );
}

fn main() {
    bench::main_with(env!("CARGO_BIN_EXE_corral"), bench);
}
