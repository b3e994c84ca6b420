//! Noisy neighbours: one tenant floods the queue while ten others submit at a steady pace;
//! what the ten wait for a slot, with fair sharing and with first come, first served.
//!
//! For each order (`order = "fair"`, then `"fifo"` in the host's config): a `corral host`
//! and one `corral agent` of 8 slots; tenant `flood` submits 2,000 tasks of 50 ms at once;
//! then each of tenants `t0`..`t9` submits one task of 50 ms every 250 ms, 20 each, while
//! the flood still waits. Reported: the well-behaved tasks' submit-to-start times (the
//! host's `created_at_ms` to `started_at_ms`, its RUNNING report), median, p99 and max, and
//! how many of the flood's tasks had started when the last of them ended.
//!
//! Run: `cargo bench -p corral --bench tenants` (`-- --flood N` for another flood).

// A bench binary, not a library.
#![allow(missing_docs)]

use std::time::Duration;

use corral_proto::pb;
use corral_tests::bench;
use corral_tests::bench::percentile;
use corral_tests::fixtures;
use corral_tests::server::{self, Client, Server};

const TENANTS: usize = 10;
const EACH: usize = 20;
const PACE: Duration = Duration::from_millis(250);
const TASK: Duration = Duration::from_millis(50);

async fn submit_as(client: &mut Client, sha: &str, tenant: &str) -> String {
    let mut spec = server::spec(sha, tenant, 16 << 20);
    spec.tenant = tenant.into();
    server::submit(client, spec).await
}

async fn run(order: &str, flood: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("host.toml");
    std::fs::write(&config, format!("order = \"{order}\"\n")).expect("writing the config");
    let host = Server::start(
        &[
            "host",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        true,
    );
    let _agent = host.agent(&["--slots", "8", "--memory", "4GiB"]);
    let mut admin = server::connect(&host.url, &host.token).await;
    server::wait_for_agents(&mut admin, 1).await;
    let sha = server::upload_wat(&mut admin, &fixtures::sleep(TASK)).await;

    // The flood, 64 submits in flight at a time.
    let mut left = flood;
    while left > 0 {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..left.min(64) {
            let (mut client, sha) = (admin.clone(), sha.clone());
            calls.spawn(async move { submit_as(&mut client, &sha, "flood").await });
        }
        left -= calls.join_all().await.len();
    }

    // The well-behaved tenants, each at its own pace.
    let mut tenants = tokio::task::JoinSet::new();
    for t in 0..TENANTS {
        let (mut client, sha) = (admin.clone(), sha.clone());
        tenants.spawn(async move {
            let tenant = format!("t{t}");
            let mut ids = Vec::new();
            // Spread the tenants over the pace.
            tokio::time::sleep(PACE * t as u32 / TENANTS as u32).await;
            for _ in 0..EACH {
                ids.push(submit_as(&mut client, &sha, &tenant).await);
                tokio::time::sleep(PACE).await;
            }
            // Behind a flood, first come first served takes minutes.
            for id in &ids {
                let limit = Duration::from_secs(600);
                let done = server::wait_until(&mut client, id, limit, |t| {
                    t.state == pb::TaskState::Finished as i32
                })
                .await;
                assert!(done.started_at_ms > 0);
            }
            ids
        });
    }
    let ids: Vec<String> = tenants.join_all().await.into_iter().flatten().collect();
    let mut waits = Vec::with_capacity(ids.len());
    for id in &ids {
        let task = server::get(&mut admin, id).await;
        let ms = task.started_at_ms.saturating_sub(task.created_at_ms).max(0);
        waits.push(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    }
    waits.sort();
    let flood_started = {
        let waiting = server::count(&mut admin, pb::TaskState::Pending).await;
        flood - waiting
    };
    println!(
        "order = {order:<5}: {} tasks of 10 tenants, submit to start median {} ms, p99 {} ms, \
         max {} ms; {flood_started} of {flood} flood tasks started meanwhile",
        waits.len(),
        percentile(&waits, 0.5).as_millis(),
        percentile(&waits, 0.99).as_millis(),
        waits.last().expect("some tasks").as_millis(),
    );
}

fn main() {
    bench::main_with(env!("CARGO_BIN_EXE_corral"), |args| async move {
        let flood = bench::arg(&args, "--flood", 2_000usize);
        run("fair", flood).await;
        run("fifo", flood).await;
    });
}
