//! The cluster as real processes on 127.0.0.1: a `corral host` and `corral agent`s, driven
//! through the gRPC client API and the `corral` CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_tests::cluster::{state, Cluster, FAST_CONFIG};
use corral_tests::disk::Tmpfs;
use corral_tests::fixtures::{self, spinner};
use corral_tests::server::{all_tasks, get, spec, submit, upload, upload_wat, wait_until, WAIT};
use corral_tests::wasm;

const MIB: u64 = 1 << 20;

#[test]
fn two_hundred_tasks_finish_on_both_agents_and_no_partition_is_ever_over_capacity() {
    // Memory binds before slots: 256 MiB holds four 64 MiB tasks of the eight slots.
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 8, "256MiB"), ("a2", 8, "256MiB")]);
    cluster.block_on(async {
        let mut client = cluster.client().await;
        let spinner = upload_wat(&mut client, &spinner(200_000, "spun\n")).await;
        let linreg = upload(&mut client, &wasm("linreg")).await;
        let iris = std::fs::read(corral_tests::repo_root().join("examples/data/iris.csv")).unwrap();

        // Watch the partitions while the tasks run.
        let watcher_client = cluster.client().await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut client = watcher_client;
                let mut samples = 0u32;
                let mut busiest = BTreeMap::<String, u32>::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let parts = client
                        .list_partitions(pb::ListPartitionsRequest {})
                        .await
                        .unwrap()
                        .into_inner()
                        .partitions;
                    for p in parts {
                        let (cap, used) = (p.capacity.unwrap(), p.allocated.unwrap());
                        assert!(
                            used.slots <= cap.slots && used.memory_bytes <= cap.memory_bytes,
                            "partition {} over capacity: {used:?} of {cap:?}",
                            p.id
                        );
                        let top = busiest.entry(p.id).or_default();
                        *top = (*top).max(used.slots);
                    }
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (samples, busiest)
            }
        });

        let mut ids = Vec::new();
        for i in 0..200 {
            let mut task = if i % 4 == 0 {
                let mut s = spec(&linreg, "linreg", 64 * MIB);
                s.stdin = iris.clone().into();
                s.args = vec!["--json".into()];
                s
            } else {
                spec(&spinner, "spinner", 64 * MIB)
            };
            task.labels.insert("batch".into(), "two-hundred".into());
            ids.push(submit(&mut client, task).await);
        }
        for id in &ids {
            wait_until(&mut client, id, Duration::from_secs(120), |t| {
                t.state == state(pb::TaskState::Finished) || t.state == state(pb::TaskState::Failed)
            })
            .await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (samples, busiest) = watcher.await.unwrap();
        assert!(samples > 0);
        // The cap was reached: four tasks at once on some partition, never five.
        assert!(busiest.values().any(|&b| b == 4), "{busiest:?}");

        let tasks = all_tasks(&mut client).await;
        assert_eq!(tasks.len(), 200);
        let mut agents = BTreeSet::new();
        for t in &tasks {
            assert_eq!(t.state, state(pb::TaskState::Finished), "{t:?}");
            assert_eq!(t.attempts, 1);
            assert!(t.fuel_used > 0);
            agents.insert(t.agent_id.clone());
        }
        assert_eq!(agents, BTreeSet::from(["a1".to_string(), "a2".to_string()]));

        // Outputs are the guests' own.
        let output = |id: String| {
            let mut client = client.clone();
            async move {
                client
                    .get_task_output(pb::GetTaskOutputRequest { task_id: id })
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        assert_eq!(output(ids[1].clone()).await.stdout.as_ref(), b"spun\n");
        let report: serde_json::Value =
            serde_json::from_slice(&output(ids[0].clone()).await.stdout).unwrap();
        assert_eq!(report["train_rows"], 120);
        assert_eq!(report["test_rows"], 30);

        // Every partition's resources came back.
        let parts = client
            .list_partitions(pb::ListPartitionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .partitions;
        for p in parts {
            assert_eq!(p.allocated.unwrap(), pb::Capacity::default(), "{}", p.id);
        }
    });

    // The listing shows them too, filtered by label and state.
    let out = cluster.corral(&[
        "tasks",
        "--state",
        "finished",
        "--label",
        "batch=two-hundred",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 200);
    let out = cluster.corral(&["tasks", "--limit", "3"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "STATE", "AGENT", "PARTITION", "FUEL", "AGE"]
    );
    assert!(lines.next().unwrap().starts_with("t-1 "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[test]
fn a_killed_agents_tasks_become_lost_and_finish_on_the_other() {
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB"), ("a2", 2, "1GiB")]);
    cluster.block_on(async {
        let mut client = cluster.client().await;
        // About a second of work each.
        let long = upload_wat(&mut client, &spinner(400_000_000, "done\n")).await;
        let mut events = client
            .watch_tasks(pb::WatchTasksRequest {
                task_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(submit(&mut client, spec(&long, "long", 64 * MIB)).await);
        }
        let mut on_a1 = Vec::new();
        for id in &ids {
            let t = wait_until(&mut client, id, Duration::from_secs(20), |t| {
                t.state == state(pb::TaskState::Running)
            })
            .await;
            if t.agent_id == "a1" {
                on_a1.push(id.clone());
            }
        }
        assert_eq!(on_a1.len(), 2, "spread puts two tasks on each agent");
        cluster.sigkill_agent("a1");

        for id in &on_a1 {
            let t = wait_until(&mut client, id, Duration::from_secs(30), |t| {
                t.state == state(pb::TaskState::Finished)
            })
            .await;
            assert_eq!(t.agent_id, "a2");
            assert_eq!(t.attempts, 2);
        }
        // Each of them was LOST on a1 first.
        let mut lost = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lost.len() < on_a1.len() && Instant::now() < deadline {
            let Ok(Ok(Some(event))) =
                tokio::time::timeout(Duration::from_secs(1), events.message()).await
            else {
                break;
            };
            let task = event.task.unwrap();
            if task.state == state(pb::TaskState::Lost) {
                assert_eq!(task.agent_id, "a1");
                assert!(task.reason.contains("a1"), "{}", task.reason);
                lost.insert(task.id);
            }
        }
        assert_eq!(lost, on_a1.iter().cloned().collect::<BTreeSet<_>>());
        let agents = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        let a1 = agents.iter().find(|a| a.id == "a1").unwrap();
        assert_eq!(a1.state, pb::AgentState::Lost as i32);
    });
}

#[test]
fn a_host_restart_keeps_every_task_with_its_state_and_output() {
    let mut cluster = Cluster::start(FAST_CONFIG, &[("a1", 4, "1GiB")]);
    let (finished, failed, sha) = cluster.block_on(async {
        let mut client = cluster.client().await;
        let ok = upload_wat(&mut client, &spinner(10, "kept\n")).await;
        let trap = upload_wat(
            &mut client,
            r#"(module (func (export "_start") unreachable))"#,
        )
        .await;
        let mut finished = Vec::new();
        for _ in 0..10 {
            finished.push(submit(&mut client, spec(&ok, "ok", 16 * MIB)).await);
        }
        let mut no_retry = spec(&trap, "trap", 16 * MIB);
        no_retry.retry = Some(pb::RetryPolicy {
            max_retries: Some(0),
            retry_failed: false,
        });
        let failed = submit(&mut client, no_retry).await;
        for id in finished.iter().chain([&failed]) {
            wait_until(&mut client, id, Duration::from_secs(20), |t| {
                t.state == state(pb::TaskState::Finished) || t.state == state(pb::TaskState::Failed)
            })
            .await;
        }
        (finished, failed, ok)
    });
    let before = cluster.block_on(async { all_tasks(&mut cluster.client().await).await });

    cluster.kill_host();
    cluster.start_host();
    cluster.wait_for_agents(&["a1"]);

    cluster.block_on(async {
        let mut client = cluster.client().await;
        let after = all_tasks(&mut client).await;
        assert_eq!(after.len(), before.len());
        for (a, b) in after.iter().zip(&before) {
            assert_eq!(a.id, b.id);
            assert_eq!(a.state, b.state, "{}", a.id);
            assert_eq!(a.outcome, b.outcome, "{}", a.id);
            assert_eq!(a.fuel_used, b.fuel_used, "{}", a.id);
        }
        for id in &finished {
            let output = client
                .get_task_output(pb::GetTaskOutputRequest {
                    task_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(output.stdout.as_ref(), b"kept\n");
        }
        let t = get(&mut client, &failed).await;
        assert_eq!(t.state, state(pb::TaskState::Failed));
        assert_eq!(t.outcome.unwrap().kind, pb::OutcomeKind::Trap as i32);
        // The restarted host goes on: new ids follow the old ones, and tasks run.
        let next = submit(&mut client, spec(&sha, "after", 16 * MIB)).await;
        assert_eq!(next, "t-12");
        wait_until(&mut client, &next, Duration::from_secs(20), |t| {
            t.state == state(pb::TaskState::Finished)
        })
        .await;
    });
}

#[test]
fn the_cli_kills_a_running_task_and_refuses_what_no_agent_could_run() {
    let dir = tempfile::tempdir().unwrap();
    let forever = dir.path().join("forever.wat");
    std::fs::write(&forever, fixtures::wat("forever")).unwrap();
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB"), ("a2", 2, "1GiB")]);
    let forever = forever.to_str().unwrap();

    let out = cluster.corral(&[
        "submit",
        "--timeout",
        "10m",
        "--fuel",
        "1000000000000000",
        forever,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.starts_with("t-"), "{id}");
    cluster.block_on(async {
        let mut client = cluster.client().await;
        wait_until(&mut client, &id, Duration::from_secs(20), |t| {
            t.state == state(pb::TaskState::Running)
        })
        .await;
    });
    // `task kill` waits (up to 10 s) for the agent to stop it: KILLED is what it prints.
    let out = cluster.corral(&["task", "kill", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{id} KILLED")
    );
    let out = cluster.corral(&["task", "get", "-o", "json", &id]);
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "KILLED");
    assert_eq!(task["outcome"], "killed");
    // Killing it again names the problem.
    let out = cluster.corral(&["task", "kill", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already ended (KILLED)"));

    // Larger than any agent: refused at submit, with the sizes.
    let out = cluster.corral(&["submit", "--memory", "2GiB", forever]);
    assert_eq!(out.status.code(), Some(133));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no agent could ever run this task"), "{err}");
    assert!(err.contains("2.0 GiB") && err.contains("1.0 GiB"), "{err}");
    let out = cluster.corral(&["submit", "--constraint", "gpu=yes", forever]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent has the labels gpu=yes"));

    // --wait ends like `corral run`: the guest's output, and its exit status.
    let exit3 = dir.path().join("exit3.wat");
    std::fs::write(&exit3, fixtures::exit(3)).unwrap();
    let out = cluster.corral(&["submit", "--wait", exit3.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED exit"));
    let linreg = wasm("linreg");
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "--stdin",
        "examples/data/iris.csv",
        linreg.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["test_rows"], 30);

    // Clear errors: an invalid module, an unknown task, an unreachable host.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\x99").unwrap();
    let out = cluster.corral(&["submit", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid module"));
    // Refused at upload as what a run would be: a `_start` of the wrong type is invalid
    // (126), an import the sandbox lacks a link error (127), named with its type.
    let bad_start = dir.path().join("bad-start.wat");
    std::fs::write(
        &bad_start,
        r#"(module (func (export "_start") (param i32)))"#,
    )
    .unwrap();
    let out = cluster.corral(&["submit", bad_start.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`_start` has type (func (param i32))"));
    let evil = dir.path().join("evil.wat");
    std::fs::write(
        &evil,
        r#"(module (import "env" "evil" (func (param i32))) (func (export "_start")))"#,
    )
    .unwrap();
    let out = cluster.corral(&["submit", evil.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("link error: import env::evil (func (param i32)) is not provided"),
        "{err}"
    );
    let out = cluster.corral(&["task", "get", "t-999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task t-999"));
    let out = cluster.corral(&["task", "get", "banana"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"banana\" is not a task id"));
    let out = cluster.corral(&["agents", "--host", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(133));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach the Corral host at http://127.0.0.1:1"));
}

#[test]
fn an_agent_of_another_protocol_is_refused_by_name() {
    let mut cluster = Cluster::start(FAST_CONFIG, &[]);
    let join = cluster.join_token();
    let refused = cluster.block_on(async {
        let mut agents = cluster.agent_api(Some(&join)).await;
        agents
            .register(pb::RegisterRequest {
                protocol: 0,
                agent_id: "old".into(),
                capacity: Some(pb::Capacity {
                    slots: 1,
                    memory_bytes: 1 << 30,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains(&format!(
            "speaks agent protocol 0; this host (Corral {}) speaks {}",
            env!("CARGO_PKG_VERSION"),
            corral_proto::AGENT_PROTOCOL
        )),
        "{}",
        refused.message()
    );
}

#[test]
fn the_demo_script_runs_as_the_readme_says() {
    let mut demo = std::process::Command::new(corral_tests::repo_root().join("scripts/demo"));
    demo.env("CORRAL", corral_tests::corral());
    let out = corral_tests::output_within(demo, None, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("test MSE"), "{stdout}");
    assert!(stderr.contains("FINISHED success"), "{stderr}");
    assert!(stdout.contains("iris-linreg  FINISHED"), "{stdout}");
    assert!(stdout.contains("dev-1/default"), "{stdout}");
}

#[test]
fn uploads_and_idempotent_submits_answer_what_exists_outputs_are_kept_and_listings_page() {
    let dir = tempfile::tempdir().unwrap();
    let writer = fixtures::path("writer");
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB")]);

    let out = cluster.corral(&[
        "submit",
        "--outputs",
        "--wait",
        "-o",
        "json",
        writer.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"], serde_json::json!(["result.txt"]));
    assert_eq!(report["files_truncated"], false);
    let id = report["id"].as_str().unwrap().to_string();
    let saved = dir.path().join("saved");
    let out = cluster.corral(&["task", "output", &id, "--save", saved.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(saved.join("result.txt")).unwrap(), b"42\n");

    cluster.block_on(async {
        let mut client = cluster.client().await;
        let wat = spinner(1, "x");
        let first = client
            .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                chunk: wat.clone().into_bytes().into(),
            }]))
            .await
            .unwrap()
            .into_inner();
        let again = client
            .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                chunk: wat.into_bytes().into(),
            }]))
            .await
            .unwrap()
            .into_inner();
        assert!(!first.existed);
        assert!(again.existed);
        assert_eq!(first.sha256, again.sha256);

        let keyed = |key: &str| pb::SubmitTaskRequest {
            spec: Some(spec(&first.sha256, "keyed", 16 * MIB)),
            idempotency_key: key.into(),
        };
        let a = client
            .submit_task(keyed("fold-1"))
            .await
            .unwrap()
            .into_inner();
        let b = client
            .submit_task(keyed("fold-1"))
            .await
            .unwrap()
            .into_inner();
        let c = client
            .submit_task(keyed("fold-2"))
            .await
            .unwrap()
            .into_inner();
        assert!(!a.existed, "the first submit with a key makes a task");
        assert!(b.existed, "the second names it");
        assert_eq!(a.task_id, b.task_id);
        assert!(!c.existed);
        assert_ne!(a.task_id, c.task_id);

        // Pages of two cover every task once, in id order.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_tasks(pb::ListTasksRequest {
                    page_size: 2,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.tasks.len() <= 2);
            seen.extend(page.tasks.into_iter().map(|t| t.id));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, ["t-1", "t-2", "t-3"]);
    });
}

/// Partitions carved by `corral host --config`: a tenant's reservation and a labelled one on
/// the agents of one zone, shared `default` remainders, and tasks placed by those rules.
#[test]
fn partitions_from_the_host_config_are_reserved_for_their_tenant_and_labels() {
    let config = format!(
        r#"{FAST_CONFIG}
strategy = "binpack"

[[partitions]]
name = "acme"
agents = {{ zone = "eu-1" }}
slots = 2
memory = "256MiB"
tenant = "acme"

[[partitions]]
name = "gpu"
agents = {{ zone = "eu-1" }}
slots = 1
memory = "256MiB"
labels = {{ kind = "gpu" }}
"#
    )
    .replace("strategy = \"spread\"\n", "");
    let mut cluster = Cluster::start(&config, &[]);
    cluster.start_agent("eu", 4, "1GiB", &["zone=eu-1"]);
    cluster.start_agent("us", 4, "1GiB", &["zone=us-1"]);
    cluster.wait_for_agents(&["eu", "us"]);

    // What `corral partitions` shows: the carving, with each reservation.
    let out = cluster.corral(&["partitions", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let carved: BTreeMap<String, (u64, u64, serde_json::Value, serde_json::Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                (
                    p["slots"].as_u64().unwrap(),
                    p["memory_bytes"].as_u64().unwrap() / MIB,
                    p["tenant"].clone(),
                    p["labels"].clone(),
                ),
            )
        })
        .collect();
    let none = serde_json::Value::Null;
    let no_labels = serde_json::json!({});
    assert_eq!(
        carved,
        BTreeMap::from([
            ("eu/acme".into(), (2, 256, "acme".into(), no_labels.clone())),
            (
                "eu/gpu".into(),
                (1, 256, none.clone(), serde_json::json!({"kind": "gpu"}))
            ),
            (
                "eu/default".into(),
                (1, 512, none.clone(), no_labels.clone())
            ),
            ("us/default".into(), (4, 1024, none, no_labels)),
        ])
    );

    let partitions_of = |ids: &[String]| -> Vec<String> {
        cluster.block_on(async {
            let mut client = cluster.client().await;
            let mut placed = Vec::new();
            for id in ids {
                let task = wait_until(&mut client, id, Duration::from_secs(20), |t| {
                    t.state == state(pb::TaskState::Running)
                })
                .await;
                placed.push(task.partition_id);
            }
            placed
        })
    };
    let (acme, others, gpu) = cluster.block_on(async {
        let mut client = cluster.client().await;
        let forever = upload_wat(&mut client, &fixtures::wat("forever")).await;
        let task = |name: &str, tenant: &str, labels: &[(&str, &str)]| {
            let mut spec = spec(&forever, name, 64 * MIB);
            spec.tenant = tenant.into();
            spec.labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let limits = spec.limits.as_mut().unwrap();
            limits.fuel = 1 << 50;
            limits.timeout_ms = 600_000;
            spec
        };
        let mut acme = Vec::new();
        for i in 0..3 {
            acme.push(submit(&mut client, task(&format!("acme-{i}"), "acme", &[])).await);
        }
        // The first two fill acme's reservation before touching shared capacity.
        for id in &acme {
            wait_until(&mut client, id, Duration::from_secs(20), |t| {
                t.attempts == 1
            })
            .await;
        }
        let mut others = Vec::new();
        for i in 0..2 {
            others.push(submit(&mut client, task(&format!("other-{i}"), "default", &[])).await);
        }
        let gpu = submit(&mut client, task("gpu", "default", &[("kind", "gpu")])).await;
        (acme, others, gpu)
    });
    let acme_placed = partitions_of(&acme);
    assert_eq!(&acme_placed[..2], ["eu/acme", "eu/acme"]);
    // The reservation is full: the third goes to the tightest shared partition (binpack).
    assert_eq!(acme_placed[2], "eu/default");
    // Other tenants never use acme's partition or the gpu one; eu/default is full by now.
    assert_eq!(partitions_of(&others), ["us/default", "us/default"]);
    // A task with the gpu label goes to the partition reserved for it.
    assert_eq!(partitions_of(std::slice::from_ref(&gpu)), ["eu/gpu"]);

    let allocated: BTreeMap<String, u64> = cluster.block_on(async {
        let mut client = cluster.client().await;
        let partitions = client
            .list_partitions(pb::ListPartitionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .partitions;
        partitions
            .into_iter()
            .map(|p| (p.id, u64::from(p.allocated.unwrap_or_default().slots)))
            .collect()
    });
    assert_eq!(
        allocated,
        BTreeMap::from([
            ("eu/acme".into(), 2),
            ("eu/gpu".into(), 1),
            ("eu/default".into(), 1),
            ("us/default".into(), 2),
        ])
    );
    for id in acme.iter().chain(&others).chain([&gpu]) {
        let out = cluster.corral(&["task", "kill", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A file in `dir` holding `text`.
fn module_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The id of the one task named `name`, once the host lists it.
fn task_named(cluster: &Cluster, name: &str) -> String {
    cluster.block_on(async {
        let mut client = cluster.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tasks = all_tasks(&mut client).await;
            if let Some(t) = tasks.iter().find(|t| t.spec.as_ref().unwrap().name == name) {
                return t.id.clone();
            }
            assert!(Instant::now() < deadline, "no task named {name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Waits until task `id` is in `s`.
fn wait_state(cluster: &Cluster, id: &str, s: pb::TaskState) -> pb::Task {
    cluster.block_on(async {
        let mut client = cluster.client().await;
        wait_until(&mut client, id, Duration::from_secs(60), |t| {
            t.state == state(s)
        })
        .await
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_host_restart_while_tasks_are_pending_and_running_places_and_reconciles_them() {
    let mut cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB")]);
    let (sleepers, quick) = cluster.block_on(async {
        let mut client = cluster.client().await;
        let sleeper = upload_wat(&mut client, &fixtures::sleep(Duration::from_secs(3600))).await;
        let short = upload_wat(&mut client, &spinner(10, "ok\n")).await;
        let mut sleepers = Vec::new();
        for i in 0..2 {
            let id = submit(
                &mut client,
                spec(&sleeper, &format!("sleeper-{i}"), 64 * MIB),
            )
            .await;
            wait_until(&mut client, &id, Duration::from_secs(30), |t| {
                t.state == state(pb::TaskState::Running)
            })
            .await;
            sleepers.push(id);
        }
        // Both slots are taken: these wait.
        let mut quick = Vec::new();
        for i in 0..3 {
            quick.push(submit(&mut client, spec(&short, &format!("quick-{i}"), 64 * MIB)).await);
        }
        (sleepers, quick)
    });

    cluster.kill_host();
    cluster.start_host();
    cluster.wait_for_agents(&["a1"]);

    cluster.block_on(async {
        let mut client = cluster.client().await;
        // The running attempts were reconciled with the agent that still runs them: not lost,
        // not run again, and they hold their partition as before.
        for id in &sleepers {
            let t = get(&mut client, id).await;
            assert_eq!(
                (t.state, t.attempts),
                (state(pb::TaskState::Running), 1),
                "{t:?}"
            );
        }
        let partitions = client
            .list_partitions(pb::ListPartitionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .partitions;
        assert_eq!(partitions.len(), 1);
        let allocated = partitions[0].allocated.unwrap();
        assert_eq!((allocated.slots, allocated.memory_bytes), (2, 128 * MIB));
        for id in &quick {
            assert_eq!(
                get(&mut client, id).await.state,
                state(pb::TaskState::Pending)
            );
        }
    });
    // Freeing the slots lets the pending tasks run, on the rebuilt allocation.
    for id in &sleepers {
        let out = cluster.corral(&["task", "kill", id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    cluster.block_on(async {
        let mut client = cluster.client().await;
        for id in &quick {
            let t = wait_until(&mut client, id, Duration::from_secs(60), |t| {
                t.state == state(pb::TaskState::Finished)
            })
            .await;
            assert_eq!(t.attempts, 1);
        }
        let partitions = client
            .list_partitions(pb::ListPartitionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .partitions;
        assert_eq!(partitions[0].allocated.unwrap(), pb::Capacity::default());
    });
}

#[test]
fn every_way_a_task_ends_has_its_documented_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let sleeper = module_file(
        dir.path(),
        "sleeper.wat",
        &fixtures::sleep(Duration::from_secs(3600)),
    );
    let nap = module_file(
        dir.path(),
        "nap.wat",
        &fixtures::sleep(Duration::from_secs(2)),
    );
    let trap = module_file(
        dir.path(),
        "trap.wat",
        r#"(module (func (export "_start") unreachable))"#,
    );
    let writer = fixtures::path("writer");
    let mut cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB")]);

    // LOST with no retries left: 136.
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            cluster.corral(&[
                "submit",
                "--wait",
                "--name",
                "lost",
                "--retries",
                "0",
                &sleeper,
            ])
        });
        let id = task_named(&cluster, "lost");
        wait_state(&cluster, &id, pb::TaskState::Running);
        cluster.sigkill_agent("a1");
        let out = waiting.join().unwrap();
        assert_eq!(out.status.code(), Some(136), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{id} LOST")),
            "{}",
            stderr(&out)
        );
    });

    cluster.start_agent("a2", 2, "1GiB", &[]);
    cluster.start_agent("a3", 2, "1GiB", &[]);
    cluster.wait_for_agents(&["a2", "a3"]);

    // KILLED: 135.
    std::thread::scope(|s| {
        let waiting =
            s.spawn(|| cluster.corral(&["submit", "--wait", "--name", "killed", &sleeper]));
        let id = task_named(&cluster, "killed");
        wait_state(&cluster, &id, pb::TaskState::Running);
        let out = cluster.corral(&["task", "kill", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = waiting.join().unwrap();
        assert_eq!(out.status.code(), Some(135), "{}", stderr(&out));
    });

    // A LOST attempt with a retry left runs again elsewhere and finishes: 0.
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            cluster.corral(&[
                "submit",
                "--wait",
                "--name",
                "moved",
                "--retries",
                "1",
                &nap,
            ])
        });
        let id = task_named(&cluster, "moved");
        let first = wait_state(&cluster, &id, pb::TaskState::Running);
        cluster.sigkill_agent(&first.agent_id);
        let out = waiting.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).contains("attempts=2"), "{}", stderr(&out));
    });

    // A trap retried with --retry-failed, failing both times: the trap's 128, two attempts.
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "--retries",
        "1",
        "--retry-failed",
        &trap,
    ]);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("FAILED trap") && stderr(&out).contains("attempts=2"),
        "{}",
        stderr(&out)
    );
    // Without --retry-failed a trap is not retried, whatever --retries says.
    let out = cluster.corral(&["submit", "--wait", "--retries", "3", &trap]);
    assert_eq!(out.status.code(), Some(128));
    assert!(stderr(&out).contains("attempts=1"), "{}", stderr(&out));

    // The agent cannot make the task's output directory (its work dir is a file now): that is
    // Corral's failure, retried, and when retries run out the task FAILED with agent_error: 133.
    cluster.start_agent("broken", 2, "1GiB", &["disk=broken"]);
    cluster.wait_for_agents(&["broken"]);
    let work = cluster.agent_dir("broken").join("work");
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::write(&work, b"not a directory").unwrap();
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "--outputs",
        "--retries",
        "1",
        "--constraint",
        "disk=broken",
        writer.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(133), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("FAILED agent_error") && err.contains("attempts=2"),
        "{err}"
    );
    assert!(err.contains("cannot create the output directory"), "{err}");
}

#[test]
fn idempotency_keys_outlive_a_host_restart_and_are_scoped_by_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let module = module_file(dir.path(), "ok.wat", &spinner(1, "ok\n"));
    let mut cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB")]);
    let submit = |cluster: &Cluster, tenant: &str| -> (String, bool) {
        let out = cluster.corral(&[
            "submit",
            "-o",
            "json",
            "--idempotency-key",
            "sweep-1/fold-3",
            "--tenant",
            tenant,
            &module,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            answer["task_id"].as_str().unwrap().to_string(),
            answer["existed"].as_bool().unwrap(),
        )
    };
    let (first, existed) = submit(&cluster, "default");
    assert!(!existed);
    assert_eq!(submit(&cluster, "default"), (first.clone(), true));
    let (acme, existed) = submit(&cluster, "acme");
    assert!(!existed, "another tenant's key is another key");
    assert_ne!(acme, first);

    cluster.kill_host();
    cluster.start_host();
    cluster.wait_for_agents(&["a1"]);
    assert_eq!(submit(&cluster, "default"), (first, true));
    assert_eq!(submit(&cluster, "acme"), (acme, true));
    // The same key for another task is refused, not answered with the first.
    let other = cluster.corral(&[
        "submit",
        "--idempotency-key",
        "sweep-1/fold-3",
        &module,
        "--lr",
        "0.1",
    ]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("different spec"),
        "{}",
        stderr(&other)
    );
    let out = cluster.corral(&["tasks", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

/// Every field README.md documents for a task's JSON (`task get`, `tasks`, `submit --wait`).
const TASK_FIELDS: [&str; 24] = [
    "id",
    "name",
    "tenant",
    "state",
    "attempts",
    "agent",
    "partition",
    "outcome",
    "exit_code",
    "message",
    "fuel_used",
    "peak_memory_bytes",
    "wall_ms",
    "memory_request_bytes",
    "created_at_ms",
    "started_at_ms",
    "finished_at_ms",
    "reason",
    "progress",
    "module_sha256",
    "args",
    "labels",
    "constraints",
    "guest_warnings",
];

#[test]
fn output_caps_truncate_and_say_so_and_json_has_every_documented_field() {
    let hello = fixtures::path("hello");
    let hello = hello.to_str().unwrap();
    let writer = fixtures::path("writer");
    // The host keeps at most 4 bytes of each stream, and of files in all.
    let config = format!("{FAST_CONFIG}\nmax_output_size = \"4B\"\n");
    let cluster = Cluster::start(&config, &[("a1", 2, "1GiB")]);

    // `corral run --max-output`: the guest's own caps, here and now.
    let cache = tempfile::tempdir().unwrap();
    let (report, code) = corral_tests::corral_json(
        &["--max-output", "3"],
        &fixtures::path("hello"),
        &[],
        cache.path(),
    );
    assert_eq!(code, 0);
    assert_eq!(
        (report["stdout"].as_str(), report["stderr"].as_str()),
        (Some("hel"), Some("oop"))
    );
    assert_eq!(
        (
            report["stdout_truncated"].as_bool(),
            report["stderr_truncated"].as_bool()
        ),
        (Some(true), Some(true))
    );

    // `submit --max-output`: the task's caps, below the host's.
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "-o",
        "json",
        "--max-output",
        "3",
        "--label",
        "k=v",
        hello,
        "a1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in TASK_FIELDS.iter().chain(&[
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "files",
        "files_truncated",
    ]) {
        assert!(
            report.get(field).is_some(),
            "submit --wait -o json lacks {field}: {report}"
        );
    }
    assert_eq!(
        (report["stdout"].as_str(), report["stderr"].as_str()),
        (Some("hel"), Some("oop"))
    );
    assert_eq!(report["stdout_truncated"], true);
    assert_eq!(report["stderr_truncated"], true);
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["state"], "FINISHED");
    assert_eq!(report["args"], serde_json::json!(["a1"]));
    assert_eq!(report["labels"], serde_json::json!({"k": "v"}));
    assert!(report["wall_ms"].as_f64().unwrap() > 0.0, "{report}");
    let id = report["id"].as_str().unwrap().to_string();

    // Without --max-output the host's cap applies: 4 bytes.
    let out = cluster.corral(&["submit", "--wait", "-o", "json", hello]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["stdout"].as_str(), report["stderr"].as_str()),
        (Some("hell"), Some("oops"))
    );
    assert_eq!(report["stdout_truncated"], true);
    // The text summary says so too.
    let out = cluster.corral(&["submit", "--wait", hello]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hell");
    let summary = stderr(&out);
    assert!(
        summary.contains("stdout_truncated=true") && summary.contains("stderr_truncated=true"),
        "{summary}"
    );
    assert!(!summary.contains("files_truncated"), "{summary}");
    // Asking for more than the host keeps gets the host's cap.
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "-o",
        "json",
        "--max-output",
        "1MiB",
        hello,
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stdout"], "hell");

    // Output files count against the host's cap too: writer's 3 bytes fit, and are kept.
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "-o",
        "json",
        "--outputs",
        writer.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"], serde_json::json!(["result.txt"]));
    assert_eq!(report["files_truncated"], false);

    // `task get -o json` and `task output -o json` carry every documented field.
    let out = cluster.corral(&["task", "get", "-o", "json", &id]);
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in TASK_FIELDS {
        assert!(
            task.get(field).is_some(),
            "task get -o json lacks {field}: {task}"
        );
    }
    let out = cluster.corral(&["task", "output", "-o", "json", &id]);
    let output: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "files",
        "files_truncated",
    ] {
        assert!(
            output.get(field).is_some(),
            "task output -o json lacks {field}: {output}"
        );
    }
    assert_eq!(output["stdout_truncated"], true);
    // `corral task get ID | head -1`: the reader going away is no error.
    let mut piped = std::process::Command::new(corral_tests::corral())
        .args(["task", "get", &id])
        .env("CORRAL_HOST", &cluster.url)
        .env("CORRAL_TOKEN", cluster.token())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let out = piped.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_slow_compile_neither_blocks_other_modules_nor_outlives_its_kill() {
    let mut cluster = Cluster::start(FAST_CONFIG, &[]);
    // The compile budget is far off: the kill has to stop the compile, not the budget.
    cluster.start_agent_with("a1", 4, "1GiB", &["--compile-timeout", "10m"]);
    cluster.wait_for_agents(&["a1"]);
    let agent = cluster.agent_pid("a1");
    cluster.block_on(async {
        let mut client = cluster.client().await;
        let trivial = upload_wat(&mut client, &fixtures::wat("trivial_wasi")).await;
        let first = submit(&mut client, spec(&trivial, "warm", 16 * MIB)).await;
        corral_tests::server::finished(&mut client, &first).await;

        // Minutes of compiling in a debug build, and a timeout that leaves it all the time.
        let slow = upload_wat(&mut client, &fixtures::nested_loops(64, 4000)).await;
        let mut bomb = spec(&slow, "bomb", 16 * MIB);
        bomb.limits.as_mut().unwrap().timeout_ms = 600_000;
        let bomb = submit(&mut client, bomb).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while corral_tests::server::children(agent).is_empty() {
            assert!(Instant::now() < deadline, "no compile worker started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Another tenant's task of a compiled module runs meanwhile.
        let mut other = spec(&trivial, "other", 16 * MIB);
        other.tenant = "someone-else".into();
        let other = submit(&mut client, other).await;
        corral_tests::server::finished(&mut client, &other).await;
        let still = get(&mut client, &bomb).await;
        assert_eq!(still.state, state(pb::TaskState::Running), "{still:?}");
        assert!(
            !corral_tests::server::children(agent).is_empty(),
            "the compile ended early"
        );

        // A kill stops the compile: the task ends KILLED and the worker is gone.
        client
            .kill_task(pb::KillTaskRequest {
                task_id: bomb.clone(),
            })
            .await
            .unwrap();
        let killed = wait_until(&mut client, &bomb, Duration::from_secs(10), |t| {
            t.state == state(pb::TaskState::Killed)
        })
        .await;
        assert_eq!(
            killed.outcome.as_ref().map(|o| o.kind),
            Some(pb::OutcomeKind::Killed as i32)
        );
        // The run stops waiting at once; the compile thread kills and reaps the worker within
        // its next poll (10 ms). Give that a bounded moment, not forever.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !corral_tests::server::children(agent).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the compile worker outlived the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn uploads_are_received_a_few_at_a_time_and_a_silent_one_is_abandoned() {
    let config =
        format!("{FAST_CONFIG}\nmax_concurrent_uploads = 2\nupload_idle_timeout = \"1s\"\n");
    let cluster = Cluster::start(&config, &[]);
    cluster.block_on(async {
        let client = cluster.client().await;
        let module = wat::parse_str(fixtures::wat("trivial_wasi")).unwrap();
        // Two uploads that keep sending (64 KiB every 200 ms) and never end hold both turns.
        let mut holders = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadModuleRequest>(4);
            let mut c = client.clone();
            let call = tokio::spawn(async move {
                c.upload_module(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            let feeder = tokio::spawn(async move {
                loop {
                    let chunk = pb::UploadModuleRequest {
                        chunk: vec![0u8; 64 << 10].into(),
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            holders.push((call, feeder));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A third waits for a turn, then is refused as busy.
        let mut c = client.clone();
        let busy = c
            .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                chunk: module.clone().into(),
            }]))
            .await
            .unwrap_err();
        assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
        // Once the holders go, uploads are taken again.
        for (call, feeder) in holders {
            feeder.abort();
            call.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = client.clone();
            let answer = c
                .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                    chunk: module.clone().into(),
                }]))
                .await;
            match answer {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "uploads stayed refused: {e:?}"),
            }
        }
        // An upload that goes silent is abandoned, and its turn freed.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadModuleRequest>(1);
        tx.send(pb::UploadModuleRequest {
            chunk: vec![0u8; 1].into(),
        })
        .await
        .unwrap();
        let mut c = client.clone();
        let silent = c
            .upload_module(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(silent.code(), tonic::Code::DeadlineExceeded, "{silent:?}");
        drop(tx);
        // So is one that trickles a byte at a time.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadModuleRequest>(4);
        let trickle = tokio::spawn(async move {
            while tx
                .send(pb::UploadModuleRequest {
                    chunk: vec![0u8; 1].into(),
                })
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut c = client.clone();
        let trickled = c
            .upload_module(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(
            trickled.code(),
            tonic::Code::DeadlineExceeded,
            "{trickled:?}"
        );
        trickle.abort();
    });
}

/// A guest that reports progress, sleeps 3 s in the host, then writes `bytes` zeros to stdout
/// in one call.
fn sleep_then_write(bytes: usize) -> String {
    let pages = (bytes + (64 << 10)).div_ceil(64 << 10) + 1;
    format!(
        r#"(module
  (import "corral" "progress" (func $progress (param i64 i64)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (func (export "_start")
    (call $progress (i64.const 1) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3000000000))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.store (i32.const 256) (i32.const 65536))
    (i32.store (i32.const 260) (i32.const {bytes}))
    (drop (call $write (i32.const 1) (i32.const 256) (i32.const 1) (i32.const 264)))))"#
    )
}

/// The host's data dir fills up while a task runs and a large submit arrives: neither the
/// submit nor the task's result is acknowledged or shown. Once space returns, the host serves
/// again by itself: the agent's re-sent result is kept, the refused submit left no trace (its
/// idempotency key is free), and a restart shows the same.
#[test]
fn a_full_disk_acknowledges_nothing_and_the_host_serves_again_once_space_returns() {
    const OUTPUT: usize = 6 << 20;
    // Agents have long enough to come back (their reconnection backs off while the host
    // refuses them), so the result the agent re-sends is the one kept.
    // No room kept (see the next test): the large submit reaches the store and fails there.
    let config = "heartbeat_interval = \"200ms\"\nheartbeat_timeout = \"20s\"\nmin_free_disk = 0\n";
    let mut cluster = Cluster::new(config);
    let disk = Tmpfs::mount(&cluster.host_dir(), "16m");
    cluster.start_host();
    cluster.start_agent("a1", 2, "1GiB", &[]);
    cluster.wait_for_agents(&["a1"]);
    let (task, trivial) = cluster.block_on(async {
        let mut client = cluster.client().await;
        let trivial = fixtures_sha(&mut client).await;
        let sha = upload_wat(&mut client, &sleep_then_write(OUTPUT)).await;
        let mut writer = spec(&sha, "writer", 64 * MIB);
        writer.limits.as_mut().unwrap().max_output_bytes = 8 * MIB;
        let task = submit(&mut client, writer).await;
        wait_until(&mut client, &task, Duration::from_secs(20), |t| {
            t.progress.is_some()
        })
        .await;
        (task, trivial)
    });
    let state_file = std::fs::metadata(cluster.host_dir().join("state.redb")).unwrap();
    let filled = disk.fill();
    eprintln!(
        "state.redb is {} bytes; the filler took {filled}",
        state_file.len()
    );

    cluster.block_on(async {
        let mut client = cluster.client().await;
        // A submit that needs more room than the disk has: refused, as unavailable.
        let mut big = spec(&trivial, "refused", 16 * MIB);
        big.stdin = vec![7u8; 12 << 20].into();
        let refused = client
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(big),
                idempotency_key: "k".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        // The task ends (at 3 s) while the disk is full: its result is never shown as kept.
        let until = Instant::now() + Duration::from_secs(6);
        let mut answered = 0;
        while Instant::now() < until {
            match client
                .get_task(pb::GetTaskRequest {
                    task_id: task.clone(),
                })
                .await
            {
                Ok(t) => {
                    answered += 1;
                    let t = t.into_inner();
                    assert_ne!(t.state, state(pb::TaskState::Finished), "{t:?}");
                }
                Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("the host answered {answered} reads while the disk was full");
    });

    disk.free();
    let check = |cluster: &Cluster| {
        cluster.block_on(async {
            let mut client = cluster.client().await;
            // Unavailable until the store is reopened.
            let deadline = Instant::now() + WAIT;
            let ended = loop {
                let answer = client
                    .get_task(pb::GetTaskRequest {
                        task_id: task.clone(),
                    })
                    .await;
                match answer {
                    Ok(t) if t.get_ref().state == state(pb::TaskState::Finished) => {
                        break t.into_inner()
                    }
                    Ok(_) => {}
                    Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
                }
                assert!(Instant::now() < deadline, "the host did not serve again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(ended.outcome.unwrap().kind, pb::OutcomeKind::Success as i32);
            assert_eq!(ended.attempts, 1, "the first attempt's result was kept");
            let output = client
                .get_task_output(pb::GetTaskOutputRequest {
                    task_id: task.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(output.stdout.len(), OUTPUT);
            let names: Vec<String> = all_tasks(&mut client)
                .await
                .into_iter()
                .map(|t| t.spec.unwrap_or_default().name)
                .collect();
            assert!(!names.contains(&"refused".to_string()), "{names:?}");
        })
    };
    check(&cluster);
    cluster.block_on(async {
        // The refused submit's key was never kept: it names nothing, so another spec takes it.
        let mut client = cluster.client().await;
        let answer = client
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(spec(&trivial, "after", 16 * MIB)),
                idempotency_key: "k".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.existed, "{answer:?}");
    });
    cluster.kill_host();
    cluster.start_host();
    cluster.wait_for_agents(&["a1"]);
    check(&cluster);
}

/// The sha256 of the trivial WASI fixture, uploaded.
async fn fixtures_sha(client: &mut corral_tests::server::Client) -> String {
    upload_wat(client, &fixtures::wat("trivial_wasi")).await
}

/// With little left on the host's disk, new tasks and modules are refused as
/// `RESOURCE_EXHAUSTED`, naming `min_free_disk`, while the host goes on serving (its store
/// never fails); once space is freed they are taken again.
#[test]
fn a_nearly_full_disk_refuses_new_work_and_keeps_serving() {
    let config = format!("{FAST_CONFIG}\nmin_free_disk = \"8MiB\"\n");
    let mut cluster = Cluster::new(&config);
    let disk = Tmpfs::mount(&cluster.host_dir(), "32m");
    cluster.start_host();
    cluster.start_agent("a1", 2, "1GiB", &[]);
    cluster.wait_for_agents(&["a1"]);
    cluster.block_on(async {
        let mut client = cluster.client().await;
        let sha = fixtures_sha(&mut client).await;
        let first = submit(&mut client, spec(&sha, "first", 16 * MIB)).await;

        disk.fill_leaving(6 << 20);
        // Read again past the 100 ms a reading stands.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = client
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(spec(&sha, "refused", 16 * MIB)),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(refused.message().contains("min_free_disk"), "{refused:?}");
        let module = wat::parse_str(fixtures::wat("hello")).unwrap();
        let upload = client
            .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                chunk: module.into(),
            }]))
            .await
            .unwrap_err();
        assert_eq!(upload.code(), tonic::Code::ResourceExhausted, "{upload:?}");
        // The host serves: the task it took runs to its end and is read back.
        wait_until(&mut client, &first, Duration::from_secs(30), |t| {
            t.state == state(pb::TaskState::Finished)
        })
        .await;

        disk.free();
        // Past the 100 ms between readings.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = submit(&mut client, spec(&sha, "after", 16 * MIB)).await;
        wait_until(&mut client, &after, Duration::from_secs(30), |t| {
            t.state == state(pb::TaskState::Finished)
        })
        .await;
    });
}
