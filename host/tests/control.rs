//! The control plane as an actor over a real store: agents played by the test through the same
//! calls the gRPC service makes. What is tested here is what the pure state machine cannot
//! show: answers, commands and events go out only once durable, a failed commit leaves nothing
//! behind, and reconciliation end to end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_host::config::HostConfig;
use corral_host::control::ControlPlane;
use corral_host::convert;
use corral_host::error::HostError;
use corral_host::events::Subscription;
use corral_host::partition::Resources;
use corral_host::registry::{AgentInfo, AgentState};
use corral_host::state::{AgentCommand, StatusReport, TaskFilter};
use corral_host::task::{Attempt, OutcomeKind, OutcomeRecord, Task, TaskId, TaskState};
use corral_proto::pb;
use corral_tests::fixtures;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn agent(id: &str) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        address: "127.0.0.1:0".into(),
        capacity: Resources {
            slots: 4,
            memory_bytes: 4 << 30,
        },
        labels: BTreeMap::new(),
        version: "test".into(),
    }
}

fn fast() -> HostConfig {
    HostConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(300),
        ..HostConfig::default()
    }
}

async fn submit(plane: &ControlPlane, sha256: &str, name: &str) -> Result<TaskId, String> {
    let spec = convert::spec_from_pb(
        pb::TaskSpec {
            name: name.into(),
            module_sha256: sha256.into(),
            limits: Some(pb::Limits {
                memory_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        },
        plane.config(),
    )
    .unwrap();
    plane
        .submit(spec, None)
        .await
        .map(|(id, _)| id)
        .map_err(|e| e.to_string())
}

async fn next(commands: &mut mpsc::UnboundedReceiver<AgentCommand>) -> AgentCommand {
    tokio::time::timeout(WAIT, commands.recv())
        .await
        .expect("a command within 10 s")
        .expect("the command channel is open")
}

async fn launches(commands: &mut mpsc::UnboundedReceiver<AgentCommand>, n: usize) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    while attempts.len() < n {
        match next(commands).await {
            AgentCommand::Launch(attempt, _) => attempts.push(attempt),
            other => panic!("expected a launch, got {other:?}"),
        }
    }
    attempts.sort();
    attempts
}

fn running() -> StatusReport {
    StatusReport {
        state: Some(TaskState::Running),
        fuel_used: 10,
        ..Default::default()
    }
}

fn finished() -> StatusReport {
    StatusReport {
        state: Some(TaskState::Finished),
        outcome: Some(OutcomeRecord {
            kind: OutcomeKind::Success,
            exit_code: 0,
            message: String::new(),
        }),
        fuel_used: 42,
        ..running()
    }
}

/// Waits for the watch stream to show `id` in `state`.
async fn seen(events: &mut Subscription, id: TaskId, state: TaskState) -> Task {
    tokio::time::timeout(WAIT, async {
        loop {
            let task = events.recv().await.expect("the watch stream is open");
            if task.id == id && task.state == state {
                return (*task).clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{id} never seen {state}"))
}

/// Waits until `pred` holds for task `id`.
async fn until(plane: &ControlPlane, id: TaskId, pred: impl Fn(&Task) -> bool) -> Task {
    let deadline = Instant::now() + WAIT;
    loop {
        let task = plane.get(id).await.unwrap();
        if pred(&task) {
            return task;
        }
        assert!(Instant::now() < deadline, "{id} never got there: {task:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn attempt(id: TaskId, n: u32) -> Attempt {
    Attempt {
        task_id: id,
        attempt: n,
    }
}

#[tokio::test]
async fn an_agent_coming_back_is_reconciled_with_what_it_really_runs() {
    let data = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(HostConfig::default(), data.path()).unwrap();
    let (sha, _, _) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();

    let first = plane.register(agent("a1"), vec![], vec![]).await.unwrap();
    let mut commands = plane.attach("a1", first).await.unwrap();
    let keeps = submit(&plane, &sha, "keeps").await.unwrap();
    let forgotten = submit(&plane, &sha, "forgotten").await.unwrap();
    let unacked = submit(&plane, &sha, "unacked").await.unwrap();
    let placed = launches(&mut commands, 3).await;
    assert_eq!(
        placed,
        vec![
            attempt(keeps, 1),
            attempt(forgotten, 1),
            attempt(unacked, 1)
        ]
    );
    for id in [keeps, forgotten, unacked] {
        plane.report("a1", first, attempt(id, 1), running()).await;
        until(&plane, id, |t| t.state == TaskState::Running).await;
    }

    let (_, mut events) = plane.watch(None).await.unwrap();
    let stranger = attempt(TaskId(999), 1);
    let second = plane
        .register(
            agent("a1"),
            vec![attempt(keeps, 1), stranger.clone()],
            vec![attempt(unacked, 1)],
        )
        .await
        .unwrap();
    assert_ne!(first, second);
    let lost = seen(&mut events, forgotten, TaskState::Lost).await;
    assert!(
        lost.reason.contains("came back without it"),
        "{}",
        lost.reason
    );
    seen(&mut events, forgotten, TaskState::Pending).await;
    // The old session's stream is over: its reports count for nothing.
    plane
        .report("a1", first, attempt(keeps, 1), finished())
        .await;
    let mut commands = plane.attach("a1", second).await.unwrap();
    let mut kills = vec![];
    let relaunch = loop {
        match next(&mut commands).await {
            AgentCommand::Kill(a) => kills.push(a),
            AgentCommand::Launch(a, spec) => {
                assert_eq!(spec.name, "forgotten");
                break a;
            }
            AgentCommand::Ack(a) => panic!("unexpected ack of {a:?}"),
        }
    };
    assert_eq!(kills, vec![stranger]);
    assert_eq!(relaunch, attempt(forgotten, 2));
    assert_eq!(plane.get(keeps).await.unwrap().state, TaskState::Running);

    // The kept final report lands and is acknowledged once durable.
    plane
        .report("a1", second, attempt(unacked, 1), finished())
        .await;
    assert_eq!(
        next(&mut commands).await,
        AgentCommand::Ack(attempt(unacked, 1))
    );
    let task = plane.get(unacked).await.unwrap();
    assert_eq!((task.state, task.fuel_used), (TaskState::Finished, 42));
}

#[tokio::test]
async fn a_silent_agent_is_lost_and_its_tasks_go_elsewhere() {
    let data = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(fast(), data.path()).unwrap();
    let (sha, _, _) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();
    let silent = plane
        .register(agent("silent"), vec![], vec![])
        .await
        .unwrap();
    let mut silent_commands = plane.attach("silent", silent).await.unwrap();
    let id = submit(&plane, &sha, "moves").await.unwrap();
    let first = launches(&mut silent_commands, 1).await;
    plane
        .report("silent", silent, first[0].clone(), running())
        .await;

    let (_, mut events) = plane.watch(Some(id)).await.unwrap();
    let alive = plane
        .register(agent("alive"), vec![], vec![])
        .await
        .unwrap();
    let mut alive_commands = plane.attach("alive", alive).await.unwrap();
    // `alive` heartbeats while the test waits; `silent` says nothing past the timeout.
    let lost = tokio::time::timeout(WAIT, async {
        loop {
            plane.heartbeat("alive", alive).await;
            tokio::select! {
                task = events.recv() => {
                    let task = task.expect("the watch stream is open");
                    if task.state == TaskState::Lost {
                        return task;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
    .await
    .expect("the task is lost within 10 s");
    assert!(lost.reason.contains("agent silent lost"), "{}", lost.reason);
    assert_eq!(launches(&mut alive_commands, 1).await, vec![attempt(id, 2)]);
    let views = plane.agents().await.unwrap();
    let state_of = |id: &str| views.iter().find(|a| a.info.id == id).unwrap().state;
    assert_eq!(state_of("silent"), AgentState::Lost);
    assert_eq!(state_of("alive"), AgentState::Active);
    // Its late heartbeat does not bring it back: it must register again.
    plane.heartbeat("silent", silent).await;
    let e = plane.attach("silent", silent).await.unwrap_err();
    assert!(e.to_string().contains("register again"), "{e}");
}

/// Opens a plane on `dir` once the previous one has let go of its store.
async fn reopen(config: HostConfig, dir: &std::path::Path) -> ControlPlane {
    let deadline = Instant::now() + WAIT;
    loop {
        match ControlPlane::start(config.clone(), dir) {
            Ok(plane) => return plane,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot reopen: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Uploads the trivial module, registers and attaches agent `a1`, submits task `t` and takes
/// its launch: (the module's sha256, a1's session, its commands, the task).
async fn one_launched(
    plane: &ControlPlane,
) -> (String, u64, mpsc::UnboundedReceiver<AgentCommand>, TaskId) {
    let (sha, _, _) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();
    let session = plane.register(agent("a1"), vec![], vec![]).await.unwrap();
    let mut commands = plane.attach("a1", session).await.unwrap();
    let id = submit(plane, &sha, "t").await.unwrap();
    launches(&mut commands, 1).await;
    (sha, session, commands, id)
}

/// Waits until the plane serves again after a failed commit: reads are refused as unavailable
/// while it reopens its store.
async fn serving_again(plane: &ControlPlane) {
    let deadline = Instant::now() + WAIT;
    loop {
        match plane.agents().await {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    e.to_string().contains("state store failed"),
                    "refused for another reason: {e}"
                );
                assert!(Instant::now() < deadline, "the store was not reopened: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn submit_keyed(
    plane: &ControlPlane,
    sha256: &str,
    name: &str,
    key: &str,
) -> Result<(TaskId, bool), String> {
    let spec = convert::spec_from_pb(
        pb::TaskSpec {
            name: name.into(),
            module_sha256: sha256.into(),
            ..Default::default()
        },
        plane.config(),
    )
    .unwrap();
    plane
        .submit(spec, Some(key.into()))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_answers_the_error_keeps_nothing_and_the_host_recovers() {
    let data = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(HostConfig::default(), data.path()).unwrap();
    let (sha, _, _) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();
    let kept = submit(&plane, &sha, "kept").await.unwrap();
    let (_, mut events) = plane.watch(None).await.unwrap();

    plane.inject_store_failures(1);
    let error = submit_keyed(&plane, &sha, "lost-to-the-disk", "k")
        .await
        .unwrap_err();
    assert!(error.contains("injected failure"), "{error}");
    assert_eq!(plane.store_failures(), 1);
    // No watcher heard of it. The host reopens its store and serves what is on disk, which
    // is everything acknowledged and nothing of the failed submit: not its task, not its id,
    // not its idempotency key.
    assert!(events.try_recv().is_none());
    serving_again(&plane).await;
    let (listed, _) = plane.list(&TaskFilter::default(), None, 100).await.unwrap();
    let names: Vec<_> = listed.iter().map(|t| t.spec.name.as_str()).collect();
    assert_eq!(names, ["kept"]);
    assert_eq!(plane.get(kept).await.unwrap().spec.name, "kept");
    let (next, existed) = submit_keyed(&plane, &sha, "another-spec", "k")
        .await
        .unwrap();
    assert!(!existed, "the failed submit's key was never kept");
    assert_eq!(
        next,
        TaskId(2),
        "the failed submit's id was never acknowledged"
    );
    // Watchers carry on: they hear of what the recovered host does.
    let heard = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard.id, next);

    // Restarted, the host has the same.
    drop((plane, events));
    let plane = reopen(HostConfig::default(), data.path()).await;
    let (listed, _) = plane.list(&TaskFilter::default(), None, 100).await.unwrap();
    let names: Vec<_> = listed.iter().map(|t| t.spec.name.as_str()).collect();
    assert_eq!(names, ["kept", "another-spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_learn_of_a_lost_attempt_only_once_it_is_durable() {
    let data = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(fast(), data.path()).unwrap();
    let (_, session, commands, id) = one_launched(&plane).await;
    plane.report("a1", session, attempt(id, 1), running()).await;
    until(&plane, id, |t| t.state == TaskState::Running).await;
    let (_, mut events) = plane.watch(Some(id)).await.unwrap();

    // The agent goes silent and the write of its loss fails: no watcher hears of the loss.
    plane.inject_store_failures(1);
    let deadline = Instant::now() + WAIT;
    while plane.store_failures() == 0 {
        assert!(Instant::now() < deadline, "the loss was never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while let Some(task) = events.try_recv() {
        assert_ne!(
            task.state,
            TaskState::Lost,
            "LOST told before it was durable"
        );
    }
    // On disk the attempt is still RUNNING: the loss was never written.
    drop((plane, events, commands));
    let plane = reopen(fast(), data.path()).await;
    assert_eq!(plane.get(id).await.unwrap().state, TaskState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_does_not_make_heartbeating_agents_lost() {
    let data = tempfile::tempdir().unwrap();
    // Liveness checks every 75 ms; the agent beats every 200 ms, within the 300 ms timeout.
    let plane = ControlPlane::start(fast(), data.path()).unwrap();
    let (sha, _, _) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();
    let session = plane.register(agent("a1"), vec![], vec![]).await.unwrap();
    let _commands = plane.attach("a1", session).await.unwrap();
    plane.heartbeat("a1", session).await;
    // One commit takes more than three heartbeat timeouts; the agent beats throughout, and
    // its beats wait behind liveness checks queued since the commit began.
    plane.inject_store_delay(Duration::from_secs(1));
    let slow = {
        let (plane, sha) = (plane.clone(), sha.clone());
        tokio::spawn(async move { submit(&plane, &sha, "slow").await })
    };
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        plane.heartbeat("a1", session).await;
    }
    slow.await.unwrap().unwrap();
    let views = plane.agents().await.unwrap();
    assert_eq!(views[0].state, AgentState::Active, "{views:?}");
    assert!(
        plane.attach("a1", session).await.is_ok(),
        "its session survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_goes_out_only_once_its_assignment_is_durable() {
    let data = tempfile::tempdir().unwrap();
    // Heartbeats are not played here: the default timeout (15 s) keeps the agent alive.
    let plane = ControlPlane::start(HostConfig::default(), data.path()).unwrap();
    let (sha, _, _) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();
    let session = plane.register(agent("a1"), vec![], vec![]).await.unwrap();
    let mut commands = plane.attach("a1", session).await.unwrap();

    // The disk is slow: the submit and its assignment take a second and a half to commit.
    plane.inject_store_delay(Duration::from_millis(1500));
    let submitting = {
        let plane = plane.clone();
        let sha = sha.clone();
        tokio::spawn(async move { submit(&plane, &sha, "t").await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        commands.try_recv().is_err(),
        "a launch went out before its assignment was on disk"
    );
    let launched = launches(&mut commands, 1).await;
    let id = submitting.await.unwrap().unwrap();
    assert_eq!(launched, vec![attempt(id, 1)]);

    // The host dies the moment the launch is out: what it comes back with is the assignment
    // the agent was told, so the attempt is not placed again elsewhere.
    drop((plane, commands));
    let plane = reopen(HostConfig::default(), data.path()).await;
    let task = plane.get(id).await.unwrap();
    assert_eq!(task.state, TaskState::Assigned, "{task:?}");
    assert_eq!(task.attempts, 1);
    assert_eq!(task.agent_id.as_deref(), Some("a1"));
}

/// With a short retention, a task that ended is removed from memory and disk with its output,
/// and its module after it; a restart brings neither back, and ids go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_past_its_retention_is_removed_and_stays_removed() {
    let data = tempfile::tempdir().unwrap();
    let config = HostConfig {
        task_retention: Duration::from_secs(1),
        module_retention: Duration::from_secs(2),
        ..fast()
    };
    let plane = ControlPlane::start(config.clone(), data.path()).unwrap();
    let (sha, session, commands, id) = one_launched(&plane).await;
    plane
        .report("a1", session, attempt(id, 1), finished())
        .await;
    until(&plane, id, |t| t.state == TaskState::Finished).await;
    assert!(plane.output(id).await.is_ok());
    let deadline = Instant::now() + WAIT;
    let gone = loop {
        plane.heartbeat("a1", session).await;
        match plane.get(id).await {
            Err(e) => break e.to_string(),
            Ok(_) => assert!(Instant::now() < deadline, "never removed"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(gone.contains("task_retention"), "{gone}");
    assert!(plane.output(id).await.is_err());
    while plane.module(&sha).is_ok() {
        plane.heartbeat("a1", session).await;
        assert!(Instant::now() < deadline, "the module was never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    drop((plane, commands));
    let plane = reopen(config, data.path()).await;
    assert!(plane.get(id).await.is_err());
    assert!(plane.module(&sha).is_err());
    let (sha, _, existed) = plane
        .upload_module(fixtures::wat("trivial").into_bytes())
        .await
        .unwrap();
    assert!(!existed);
    let next = submit(&plane, &sha, "next").await.unwrap();
    assert!(next > id, "{next} reuses an id");
}

/// With little room left on the data dir's disk, a new task or module is refused as exhausted,
/// naming `min_free_disk`, and the store never fails; a retry of a task that exists and an
/// upload of a module stored already write nothing and are answered as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_only_what_would_write() {
    let data = tempfile::tempdir().unwrap();
    let disk = corral_tests::disk::Tmpfs::mount(data.path(), "32m");
    let config = HostConfig {
        min_free_disk: bytesize::ByteSize::mib(8),
        ..HostConfig::default()
    };
    let plane = ControlPlane::start(config, data.path()).unwrap();
    let trivial = || fixtures::wat("trivial").into_bytes();
    let (sha, _, _) = plane.upload_module(trivial()).await.unwrap();
    let (kept, _) = submit_keyed(&plane, &sha, "kept", "k").await.unwrap();

    disk.fill_leaving(6 << 20);
    // Past the 100 ms between readings.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = submit_keyed(&plane, &sha, "new", "k2").await.unwrap_err();
    assert!(refused.contains("min_free_disk"), "{refused}");
    assert_eq!(
        submit_keyed(&plane, &sha, "kept", "k").await.unwrap(),
        (kept, true)
    );
    let (_, _, existed) = plane.upload_module(trivial()).await.unwrap();
    assert!(existed);
    let other = fixtures::wat("hello").into_bytes();
    let refused = plane.upload_module(other.clone()).await.unwrap_err();
    assert!(matches!(refused, HostError::Exhausted(_)), "{refused}");
    assert_eq!(plane.store_failures(), 0);

    disk.free();
    tokio::time::sleep(Duration::from_millis(300)).await;
    submit_keyed(&plane, &sha, "new", "k2").await.unwrap();
    plane.upload_module(other).await.unwrap();
    assert_eq!(plane.store_failures(), 0);
    drop(plane);
}

/// An upload whose caller goes while the store writes it (a client that gave up): the file is
/// the store's from the moment it was asked to store it, so the write finds it, and the host
/// does not fail its commit (and every other caller with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_whose_uploader_goes_while_it_is_written_is_stored_all_the_same() {
    let data = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(HostConfig::default(), data.path()).unwrap();
    let bytes = b"an input".to_vec();
    let sha = corral_admission::sha256_of(&bytes);
    let (staged, _file) = plane.stage_input().await.unwrap();
    std::fs::write(staged.path(), &bytes).unwrap();
    plane.inject_store_delay(Duration::from_millis(500));
    let uploader = {
        let (plane, sha) = (plane.clone(), sha.clone());
        let caller = corral_host::auth::Caller::admin();
        tokio::spawn(async move {
            plane
                .input_received(&caller, &sha, bytes.len() as u64, staged)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    uploader.abort();
    let caller = corral_host::auth::Caller::admin();
    let start = Instant::now();
    let stored = loop {
        match plane.input(&caller, &sha).await {
            Ok(stored) => break stored,
            Err(_) if start.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(stored.size, 8);
    assert_eq!(plane.store_failures(), 0);
    assert_eq!(
        std::fs::read(data.path().join("inputs").join(&sha)).unwrap(),
        b"an input"
    );
}
