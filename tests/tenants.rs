//! Tenants sharing a cluster of real processes: a flood from one tenant does not starve the
//! others, and `corral tenant` sets and lists tenants.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_tests::cluster::{Cluster, FAST_CONFIG};
use corral_tests::fixtures;
use corral_tests::server::{spec, upload_wat, Client};

/// Tasks of tenant A in the flood.
const FLOOD: usize = 5_000;
/// Tasks of each of tenants B and C.
const FEW: usize = 20;

/// Submits `n` tasks of `tenant` running `sha`, 32 at a time; answers their ids.
async fn submit_many(client: &Client, sha: &str, tenant: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut rest = n;
    while rest > 0 {
        let batch = rest.min(32);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let mut client = client.clone();
            let mut spec = spec(sha, tenant, 16 << 20);
            spec.tenant = tenant.into();
            calls.spawn(async move {
                client
                    .submit_task(pb::SubmitTaskRequest {
                        spec: Some(spec),
                        idempotency_key: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .task_id
            });
        }
        ids.extend(calls.join_all().await);
        rest -= batch;
    }
    ids
}

async fn tenants(client: &mut Client) -> BTreeMap<String, pb::TenantView> {
    client
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| (t.tenant.clone(), t))
        .collect()
}

/// The noisy neighbour: A floods 5,000 tasks of 200 ms on 4 slots, then B and C
/// submit 20 each. B's and C's tasks all finish while most of A's wait, and while all three
/// have work each holds about a third of the slots.
#[test]
fn a_flooding_tenant_does_not_starve_the_others() {
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 4, "1GiB")]);
    cluster.block_on(async {
        let mut admin = cluster.client().await;
        let sha = upload_wat(&mut admin, &fixtures::sleep(Duration::from_millis(200))).await;
        submit_many(&admin, &sha, "A", FLOOD).await;
        // A holds every slot now; B and C arrive.
        let b = submit_many(&admin, &sha, "B", FEW).await;
        let c = submit_many(&admin, &sha, "C", FEW).await;

        // Sample what each tenant holds until B and C are done (at most a minute).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut samples: Vec<[u32; 3]> = Vec::new();
        loop {
            let t = tenants(&mut admin).await;
            let held = |name: &str| t.get(name).map_or(0, |v| v.held_slots);
            let waiting = |name: &str| t.get(name).map_or(0, |v| v.queued);
            let busy = |name: &str| held(name) + waiting(name) as u32 > 0;
            if !busy("B") && !busy("C") {
                break;
            }
            // Contended: all three have work waiting or running.
            if busy("A") && busy("B") && busy("C") {
                samples.push([held("A"), held("B"), held("C")]);
            }
            assert!(Instant::now() < deadline, "B and C not done: {t:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every task of B and C finished, and most of A's backlog still waits.
        for id in b.iter().chain(&c) {
            let task = corral_tests::server::get(&mut admin, id).await;
            assert_eq!(
                task.state,
                corral_tests::cluster::state(pb::TaskState::Finished)
            );
        }
        let a = &tenants(&mut admin).await["A"];
        assert!(
            a.queued as usize > FLOOD * 9 / 10,
            "A's backlog ran first: {} of {FLOOD} still wait",
            a.queued
        );
        // About a third each over the contended period (4 slots: 2/1/1 in turn).
        assert!(samples.len() >= 10, "{} samples", samples.len());
        let mean =
            |i: usize| samples.iter().map(|s| f64::from(s[i])).sum::<f64>() / samples.len() as f64;
        let means = [mean(0), mean(1), mean(2)];
        for (name, m) in ["A", "B", "C"].iter().zip(means) {
            assert!(
                (0.9..=1.8).contains(&m),
                "tenant {name} held {m:.2} of 4 slots on average: {means:?}"
            );
        }
        // A's waiting task says why.
        let waiting = admin
            .list_tasks(pb::ListTasksRequest {
                tenant: "A".into(),
                state: pb::TaskState::Pending as i32,
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(
            waiting[0].reason.starts_with("waiting for capacity")
                || waiting[0].reason.contains("room"),
            "{}",
            waiting[0].reason
        );
    });
}

/// `corral tenant set` stores settings that take effect at once and survive a host restart;
/// `tenant list` shows where they come from; `tenant reset` returns to the config file's.
#[test]
fn tenant_settings_are_set_listed_and_kept_across_a_restart() {
    let config = format!("{FAST_CONFIG}\n[tenants.acme]\nweight = 3.0\nmax_queued = 2\n");
    let mut cluster = Cluster::start(&config, &[("a1", 1, "1GiB")]);
    let list = |cluster: &Cluster| {
        let out = cluster.corral(&["tenant", "list", "-o", "json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let acme = list(&cluster);
    assert_eq!(acme[0]["tenant"], "acme");
    assert_eq!(
        (acme[0]["source"].as_str(), acme[0]["weight"].as_f64()),
        (Some("config"), Some(3.0))
    );

    let out = cluster.corral(&[
        "tenant",
        "set",
        "acme",
        "--limit-slots",
        "3",
        "--fuel-budget",
        "5000000/1h",
    ]);
    assert!(out.status.success(), "{out:?}");
    // A task whose fuel limit exceeds the whole budget is refused at once.
    let sleeper = cluster.dir.path().join("sleep.wat");
    std::fs::write(&sleeper, fixtures::sleep(Duration::from_secs(5))).unwrap();
    let sleeper = sleeper.to_str().unwrap();
    let submit = |fuel: &str| {
        cluster.corral(&[
            "submit", sleeper, "--tenant", "acme", "--fuel", fuel, "--memory", "16MiB",
        ])
    };
    let out = submit("6000000");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("whole fuel budget"), "{stderr}");
    // One task holds 3,000,000 of the 5,000,000 while it sleeps: the next two wait for the
    // budget, and the config's queue cap of 2 (what was set changed two fields only) refuses
    // a third.
    let first = String::from_utf8(submit("3000000").stdout).unwrap();
    let waiting = String::from_utf8(submit("3000000").stdout).unwrap();
    assert!(submit("3000000").status.success());
    let out = submit("3000000");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_queued 2"), "{stderr}");
    let task = cluster.corral(&["task", "get", waiting.trim(), "-o", "json"]);
    let task: serde_json::Value = serde_json::from_slice(&task.stdout).unwrap();
    assert_eq!(task["state"], "PENDING", "{task}");
    let reason = task["reason"].as_str().unwrap();
    assert!(reason.contains("fuel budget"), "{reason}");
    let acme = list(&cluster);
    assert_eq!(acme[0]["fuel_held"], 3_000_000, "{acme:?}");
    assert_eq!(acme[0]["fuel_left"], 2_000_000, "{acme:?}");
    assert!(!first.trim().is_empty());

    cluster.kill_host();
    cluster.start_host();
    let acme = list(&cluster);
    assert_eq!(acme[0]["source"], "set");
    assert_eq!(acme[0]["limit_slots"], 3);
    assert_eq!(acme[0]["fuel_budget"], 5_000_000);
    assert_eq!(acme[0]["max_queued"], 2);

    let out = cluster.corral(&["tenant", "reset", "acme"]);
    assert!(out.status.success(), "{out:?}");
    let acme = list(&cluster);
    assert_eq!(acme[0]["source"], "config");
    assert!(acme[0]["limit_slots"].is_null());
    // Nonsense is refused by name.
    let out = cluster.corral(&["tenant", "set", "acme", "--weight", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("weight"));
    // Task caps hold a tenant's own token, not an admin's.
    // (Two of acme's tasks still wait: room for more under a higher queue cap.)
    let out = cluster.corral(&[
        "tenant",
        "set",
        "acme",
        "--max-task-fuel",
        "1000000",
        "--max-queued",
        "10",
    ]);
    assert!(out.status.success(), "{out:?}");
    let made = cluster.corral(&["token", "create", "--role", "tenant", "--tenant", "acme"]);
    let token = String::from_utf8(made.stdout).unwrap();
    let token = token.lines().last().unwrap();
    let trivial = fixtures::path("trivial");
    let trivial = trivial.to_str().unwrap();
    let out = cluster.corral_as(Some(token), &["submit", trivial, "--fuel", "2000000"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 1000000 of fuel"), "{stderr}");
    let out = cluster.corral_as(Some(token), &["submit", trivial, "--fuel", "1000000"]);
    assert!(out.status.success(), "{out:?}");
    let out = cluster.corral(&["submit", trivial, "--tenant", "acme", "--fuel", "2000000"]);
    assert!(out.status.success(), "an admin is not held to it: {out:?}");

    // Module policy: acme uploads a module that opens files while it may, then is allowed
    // no path calls and no module over 1 KiB.
    let writer = fixtures::path("writer");
    let writer = writer.to_str().unwrap();
    let own =
        |module: &str| cluster.corral_as(Some(token), &["submit", module, "--fuel", "1000000"]);
    let out = own(writer);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap();
    let task = cluster.corral(&["task", "get", id.trim(), "-o", "json"]);
    let task: serde_json::Value = serde_json::from_slice(&task.stdout).unwrap();
    let writer_sha = task["module_sha256"].as_str().unwrap().to_string();
    let out = cluster.corral(&[
        "tenant",
        "set",
        "acme",
        "--deny-imports",
        "wasi_snapshot_preview1::path_*",
        "--max-module-size",
        "1KiB",
    ]);
    assert!(out.status.success(), "{out:?}");
    // Submitting the module it has is refused, naming the import and the rule...
    let refused = cluster.block_on(async {
        let mut client = corral_tests::server::connect(&cluster.url, token).await;
        let mut spec = spec(&writer_sha, "w", 16 << 20);
        spec.tenant = "acme".into();
        spec.limits.as_mut().unwrap().fuel = 1_000_000;
        client
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err()
    });
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("imports wasi_snapshot_preview1::path_open")
            && refused.message().contains("wasi_snapshot_preview1::path_*"),
        "{refused:?}"
    );
    // ... as is uploading it again, through the CLI.
    let out = own(writer);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wasi_snapshot_preview1::path_open"),
        "{stderr}"
    );
    // A module past the size cap is refused by size; one within both runs.
    let big = cluster.dir.path().join("big.wat");
    let padding = "00".repeat(2048);
    std::fs::write(
        &big,
        format!("(module (func (export \"_start\")) (data \"{padding}\"))"),
    )
    .unwrap();
    let out = own(big.to_str().unwrap());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 1024 bytes (1.0 KiB)"), "{stderr}");
    let out = own(trivial);
    assert!(out.status.success(), "{out:?}");
    // An admin is not held to it.
    let out = cluster.corral(&["submit", writer, "--tenant", "acme"]);
    assert!(out.status.success(), "an admin is not held to it: {out:?}");
    let acme = list(&cluster);
    assert_eq!(
        acme[0]["denied_imports"][0],
        "wasi_snapshot_preview1::path_*"
    );
    assert_eq!(acme[0]["max_module_bytes"], 1024);
    let audit = cluster.corral(&["audit"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("tenant.set"), "{audit}");
    assert!(
        audit.contains("denied_imports=wasi_snapshot_preview1::path_*"),
        "{audit}"
    );
}
