//! Reconciliation when an agent registers again (after a restart, or a partition from the host):
//! what it really runs is compared with what the host believes, against a real `ControlPlane`
//! and store, with the agent played by the test through the same calls the gRPC service makes.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_host::config::HostConfig;
use corral_host::control::{AgentCommand, ControlPlane, StatusReport};
use corral_host::convert;
use corral_host::events::Subscription;
use corral_host::partition::Resources;
use corral_host::registry::{AgentInfo, AgentState};
use corral_host::task::{Attempt, OutcomeRecord, Task, TaskId, TaskState};
use corral_proto::pb;
use tokio::sync::mpsc;

/// `(module (func (export "_start")))`.
const TRIVIAL_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x03, 0x02, 0x01, 0x00, // func 0 of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
];

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

async fn submit(plane: &ControlPlane, sha256: &str, name: &str) -> TaskId {
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
    plane.submit(spec, None).await.unwrap().0
}

async fn next(commands: &mut mpsc::UnboundedReceiver<AgentCommand>) -> AgentCommand {
    tokio::time::timeout(WAIT, commands.recv())
        .await
        .expect("a command within 10 s")
        .expect("the command channel is open")
}

/// The launches an agent receives for `n` placements, as attempts.
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
        outcome: None,
        fuel_used: 10,
        peak_memory_bytes: 65_536,
        wall_ms: 1,
        progress: None,
        output: None,
    }
}

fn finished() -> StatusReport {
    StatusReport {
        state: Some(TaskState::Finished),
        outcome: Some(OutcomeRecord {
            kind: "success".into(),
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

#[tokio::test]
async fn an_agent_coming_back_is_reconciled_with_what_it_really_runs() {
    let data = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(HostConfig::default(), data.path()).unwrap();
    let (sha, _, _) = plane.upload_module(TRIVIAL_MODULE).await.unwrap();

    let first = plane.register(agent("a1"), &[], &[]).unwrap();
    let mut commands = plane.attach("a1", first).unwrap();
    let keeps_running = submit(&plane, &sha, "keeps-running").await;
    let forgotten = submit(&plane, &sha, "forgotten").await;
    let ended_unacked = submit(&plane, &sha, "ended-unacked").await;
    let already_final = submit(&plane, &sha, "already-final").await;
    let placed = launches(&mut commands, 4).await;
    let attempt = |id: TaskId| Attempt {
        task_id: id,
        attempt: 1,
    };
    assert_eq!(
        placed,
        vec![
            attempt(keeps_running),
            attempt(forgotten),
            attempt(ended_unacked),
            attempt(already_final)
        ]
    );
    for id in [keeps_running, forgotten, ended_unacked] {
        plane.status("a1", first, attempt(id), running()).await;
    }
    plane
        .status("a1", first, attempt(already_final), finished())
        .await;
    assert_eq!(
        next(&mut commands).await,
        AgentCommand::Ack(attempt(already_final))
    );
    assert_eq!(plane.get(already_final).unwrap().state, TaskState::Finished);

    // The agent restarts. It still runs `keeps_running`, holds an unacknowledged final report
    // for `ended_unacked`, has forgotten `forgotten`, and (from a stale view) says it runs
    // `already_final` and a task the host never heard of.
    let (_, mut events) = plane.watch(None).unwrap();
    let unknown = Attempt {
        task_id: TaskId(999),
        attempt: 1,
    };
    let second = plane
        .register(
            agent("a1"),
            &[
                attempt(keeps_running),
                attempt(already_final),
                unknown.clone(),
            ],
            &[attempt(ended_unacked)],
        )
        .unwrap();
    assert_ne!(first, second, "a new registration opens a new session");

    // Placed there but not reported: LOST, then queued again (retries remain by default).
    let lost = seen(&mut events, forgotten, TaskState::Lost).await;
    assert!(
        lost.reason.contains("came back without it"),
        "{}",
        lost.reason
    );
    seen(&mut events, forgotten, TaskState::Pending).await;
    // Reported: untouched.
    let task = plane.get(keeps_running).unwrap();
    assert_eq!((task.state, task.attempts), (TaskState::Running, 1));
    assert_eq!(plane.get(ended_unacked).unwrap().state, TaskState::Running);
    assert_eq!(plane.get(already_final).unwrap().state, TaskState::Finished);

    // The old session is gone: its reports are dropped.
    plane
        .status("a1", first, attempt(keeps_running), finished())
        .await;
    assert_eq!(plane.get(keeps_running).unwrap().state, TaskState::Running);

    // On attach: the attempts it runs that the host does not expect are killed, then the lost
    // task is launched again as attempt 2.
    let mut commands = plane.attach("a1", second).unwrap();
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
    kills.sort();
    assert_eq!(kills, vec![attempt(already_final), unknown]);
    assert_eq!(
        relaunch,
        Attempt {
            task_id: forgotten,
            attempt: 2
        }
    );

    // The final report kept across the restart lands, and is acknowledged.
    plane
        .status("a1", second, attempt(ended_unacked), finished())
        .await;
    assert_eq!(
        next(&mut commands).await,
        AgentCommand::Ack(attempt(ended_unacked))
    );
    let task = plane.get(ended_unacked).unwrap();
    assert_eq!((task.state, task.fuel_used), (TaskState::Finished, 42));

    // A late report on the forgotten task's first attempt is stale: acknowledged and dropped.
    plane
        .status("a1", second, attempt(forgotten), finished())
        .await;
    assert_eq!(
        next(&mut commands).await,
        AgentCommand::Ack(attempt(forgotten))
    );
    let task = plane.get(forgotten).unwrap();
    assert_eq!((task.state, task.attempts), (TaskState::Assigned, 2));
}

#[tokio::test]
async fn a_silent_agent_is_lost_and_its_tasks_go_elsewhere() {
    let data = tempfile::tempdir().unwrap();
    let config = HostConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(300),
        ..HostConfig::default()
    };
    let plane = ControlPlane::start(config, data.path()).unwrap();
    let (sha, _, _) = plane.upload_module(TRIVIAL_MODULE).await.unwrap();
    let silent = plane.register(agent("silent"), &[], &[]).unwrap();
    let mut silent_commands = plane.attach("silent", silent).unwrap();
    let id = submit(&plane, &sha, "moves").await;
    let first = launches(&mut silent_commands, 1).await;
    plane
        .status("silent", silent, first[0].clone(), running())
        .await;

    let (_, mut events) = plane.watch(Some(id)).unwrap();
    let alive = plane.register(agent("alive"), &[], &[]).unwrap();
    let mut alive_commands = plane.attach("alive", alive).unwrap();
    // `alive` heartbeats; `silent` says nothing past the timeout.
    let beating = {
        let plane = plane.clone();
        tokio::spawn(async move {
            loop {
                assert!(plane.heartbeat("alive", alive));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let lost = seen(&mut events, id, TaskState::Lost).await;
    assert!(lost.reason.contains("agent silent lost"), "{}", lost.reason);
    let moved = launches(&mut alive_commands, 1).await;
    assert_eq!(
        moved,
        vec![Attempt {
            task_id: id,
            attempt: 2
        }]
    );
    let views = plane.agents();
    let state_of = |id: &str| views.iter().find(|a| a.info.id == id).unwrap().state;
    assert_eq!(state_of("silent"), AgentState::Lost);
    assert_eq!(state_of("alive"), AgentState::Active);
    // Its late heartbeat is refused: it must register again.
    assert!(!plane.heartbeat("silent", silent));
    beating.abort();
}
