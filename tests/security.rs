//! Who may do what, on `corral host` and `corral agent` processes: every RPC of both services
//! against every kind of bad token, each with its documented status; tenants that see nothing
//! of each other; the fake-agent attack replayed; revocation that ends streams at once; the
//! audit log; `corral login`; TLS and mutual TLS with certificates made by the README's steps.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_proto::token::Role;
use corral_tests::cluster::{AgentApi, Cluster, FAST_CONFIG};
use corral_tests::fixtures;
use corral_tests::server::{
    connect_as, create_token, get, listening_on, spec, submit, upload_wat, wait_until, Client, WAIT,
};
use tonic::{Code, Status};

/// A host whose agents in zone eu-1 keep a slot for tenant alpha.
fn config() -> String {
    format!(
        r#"{FAST_CONFIG}
[[partitions]]
name = "alpha-only"
agents = {{ zone = "eu-1" }}
slots = 1
memory = "256MiB"
tenant = "alpha"
"#
    )
}

/// A cluster of one agent (zone eu-1) and a token for each of tenants alpha and beta.
struct World {
    cluster: Cluster,
    alpha: String,
    beta: String,
}

impl World {
    fn start() -> World {
        let mut cluster = Cluster::new(&config());
        cluster.start_host();
        cluster.start_agent("a1", 4, "2GiB", &["zone=eu-1"]);
        cluster.wait_for_agents(&["a1"]);
        let (alpha, beta) = cluster.block_on(async {
            let mut admin = cluster.client().await;
            let alpha = create_token(&mut admin, Role::Tenant, "alpha").await.1;
            let beta = create_token(&mut admin, Role::Tenant, "beta").await.1;
            (alpha, beta)
        });
        World {
            cluster,
            alpha,
            beta,
        }
    }

    async fn client(&self, token: Option<&str>) -> Client {
        connect_as(&self.cluster.url, token).await
    }
}

/// The result of a call, without its answer.
type Called = (&'static str, Result<(), Status>);

fn done<T>(name: &'static str, r: Result<T, Status>) -> Called {
    (name, r.map(drop))
}

/// Every RPC of the client API, once, with requests naming `task` and module `sha`.
async fn client_calls(c: &mut Client, task: &str, sha: &str) -> Vec<Called> {
    let module = fixtures::wat("trivial").into_bytes();
    vec![
        done(
            "UploadModule",
            c.upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                chunk: module.into(),
            }]))
            .await,
        ),
        done(
            "SubmitTask",
            c.submit_task(pb::SubmitTaskRequest {
                spec: Some(spec(sha, "probe", 1 << 20)),
                idempotency_key: String::new(),
            })
            .await,
        ),
        done(
            "GetTask",
            c.get_task(pb::GetTaskRequest {
                task_id: task.into(),
            })
            .await,
        ),
        done(
            "ListTasks",
            c.list_tasks(pb::ListTasksRequest::default()).await,
        ),
        done(
            "KillTask",
            c.kill_task(pb::KillTaskRequest {
                task_id: task.into(),
            })
            .await,
        ),
        done(
            "WatchTasks",
            c.watch_tasks(pb::WatchTasksRequest {
                task_id: task.into(),
            })
            .await,
        ),
        done(
            "GetTaskOutput",
            c.get_task_output(pb::GetTaskOutputRequest {
                task_id: task.into(),
            })
            .await,
        ),
        done("ListAgents", c.list_agents(pb::ListAgentsRequest {}).await),
        done(
            "ListPartitions",
            c.list_partitions(pb::ListPartitionsRequest {}).await,
        ),
        done(
            "CreateToken",
            c.create_token(pb::CreateTokenRequest {
                role: pb::Role::Tenant as i32,
                tenant: "probe".into(),
                ..Default::default()
            })
            .await,
        ),
        done("ListTokens", c.list_tokens(pb::ListTokensRequest {}).await),
        done(
            "RevokeToken",
            c.revoke_token(pb::RevokeTokenRequest {
                accessor: "0".repeat(16),
            })
            .await,
        ),
        done(
            "ListAudit",
            c.list_audit(pb::ListAuditRequest::default()).await,
        ),
        done(
            "SetTenant",
            c.set_tenant(pb::SetTenantRequest {
                tenant: "probe".into(),
                weight: Some(100.0),
                ..Default::default()
            })
            .await,
        ),
        done(
            "ListTenants",
            c.list_tenants(pb::ListTenantsRequest {}).await,
        ),
    ]
}

fn attach(agent_id: &str, session: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        message: Some(pb::agent_message::Message::Attach(pb::Attach {
            agent_id: agent_id.into(),
            session,
        })),
    }
}

fn register(agent_id: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        protocol: corral_proto::AGENT_PROTOCOL,
        agent_id: agent_id.into(),
        capacity: Some(pb::Capacity {
            slots: 1,
            memory_bytes: 1 << 20,
        }),
        version: "intruder".into(),
        ..Default::default()
    }
}

/// Waits until agent `id`'s state passes `pred` (at most [`WAIT`]).
async fn until_agent(admin: &mut Client, id: &str, pred: impl Fn(pb::AgentState) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        let state = agents
            .iter()
            .find(|a| a.id == id)
            .map(|a| pb::AgentState::try_from(a.state).unwrap_or_default());
        if state.is_some_and(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "agent {id}: {agents:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every RPC of the agent API, once, as agent `agent_id`.
async fn agent_calls(a: &mut AgentApi, agent_id: &str, sha: &str) -> Vec<Called> {
    vec![
        done("Register", a.register(register(agent_id)).await),
        done(
            "Session",
            a.session(tokio_stream::iter(vec![attach(agent_id, 1)]))
                .await,
        ),
        done(
            "FetchModule",
            a.fetch_module(pb::FetchModuleRequest { sha256: sha.into() })
                .await,
        ),
    ]
}

fn assert_all(calls: &[Called], code: Code, says: &str, who: &str) {
    assert!(!calls.is_empty());
    for (name, result) in calls {
        let status = result
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{who}: {name} was let through"));
        assert_eq!(status.code(), code, "{who}: {name}: {status:?}");
        assert!(
            status.message().contains(says),
            "{who}: {name}: {:?} does not say {says:?}",
            status.message()
        );
    }
}

/// A well-formed token of `role` that the host never made.
fn unknown(role: Role) -> String {
    corral_proto::token::compose(role, &"7".repeat(16), &"7".repeat(64))
}

#[test]
fn every_rpc_refuses_every_bad_token_with_its_own_status_and_message() {
    let world = World::start();
    let cluster = &world.cluster;
    cluster.block_on(async {
        let mut admin = cluster.client().await;
        let sha = upload_wat(&mut admin, &fixtures::wat("trivial")).await;
        let id = submit(&mut admin, spec(&sha, "target", 1 << 20)).await;
        let (revoked_accessor, revoked) = create_token(&mut admin, Role::Tenant, "alpha").await;
        admin
            .revoke_token(pb::RevokeTokenRequest {
                accessor: revoked_accessor,
            })
            .await
            .unwrap();
        let expired = admin
            .create_token(pb::CreateTokenRequest {
                role: pb::Role::Tenant as i32,
                tenant: "alpha".into(),
                expires_in_ms: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let (_, join) = create_token(&mut admin, Role::Agent, "").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut typo = world.alpha.clone().into_bytes();
        typo[40] = if typo[40] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();

        let bad: [(&str, Option<&str>, &str); 6] = [
            ("no token", None, "no token"),
            ("not a token", Some("hunter2"), "malformed"),
            ("a mistyped token", Some(&typo), "checksum"),
            (
                "an unknown token",
                Some(&unknown(Role::Tenant)),
                "unknown token",
            ),
            ("a revoked token", Some(&revoked), "was revoked"),
            ("an expired token", Some(&expired), "expired"),
        ];
        for (who, token, says) in bad {
            let mut c = world.client(token).await;
            assert_all(
                &client_calls(&mut c, &id, &sha).await,
                Code::Unauthenticated,
                says,
                who,
            );
            let mut a = cluster.agent_api(token).await;
            let calls = agent_calls(&mut a, "intruder", &sha).await;
            assert_all(&calls, Code::Unauthenticated, says, who);
        }
        // The wrong role: agent tokens on the client API, the others on the agent API.
        let mut c = world.client(Some(&join)).await;
        let calls = client_calls(&mut c, &id, &sha).await;
        assert_all(&calls, Code::PermissionDenied, "agent API", "a join token");
        for (who, token) in [("a tenant", &world.alpha), ("an admin", &cluster.token())] {
            let mut a = cluster.agent_api(Some(token)).await;
            let calls = agent_calls(&mut a, "intruder", &sha).await;
            assert_all(&calls, Code::PermissionDenied, "only agent tokens", who);
        }
        // Nothing of that ran: no task was submitted, no token made, the target not killed.
        let tasks = corral_tests::server::all_tasks(&mut admin).await;
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert!(!tasks[0].kill_requested);
        let tokens = admin
            .list_tokens(pb::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert!(tokens.iter().all(|t| t.tenant != "probe"), "{tokens:?}");
        let tenants = admin
            .list_tenants(pb::ListTenantsRequest {})
            .await
            .unwrap()
            .into_inner()
            .tenants;
        assert!(tenants.iter().all(|t| t.tenant != "probe"), "{tenants:?}");
        // A tenant's token does not manage tokens or tenants, or read the audit log.
        let mut alpha = world.client(Some(&world.alpha)).await;
        let calls: Vec<Called> = client_calls(&mut alpha, &id, &sha)
            .await
            .into_iter()
            .filter(|(name, _)| {
                name.contains("Token") || name.contains("Audit") || *name == "SetTenant"
            })
            .collect();
        assert_eq!(calls.len(), 5);
        assert_all(
            &calls,
            Code::PermissionDenied,
            "takes an admin token",
            "a tenant",
        );
    });
}

/// An upload without a token is refused before its body is read: the call is answered while
/// its stream of chunks never ends.
#[test]
fn an_unauthenticated_upload_is_refused_before_its_body_is_read() {
    let world = World::start();
    world.cluster.block_on(async {
        let mut anonymous = world.client(None).await;
        let endless =
            tokio_stream::StreamExt::map(tokio_stream::iter(std::iter::repeat(())), |()| {
                pb::UploadModuleRequest {
                    chunk: vec![0u8; 1 << 20].into(),
                }
            });
        let refused = tokio::time::timeout(WAIT, anonymous.upload_module(endless))
            .await
            .expect("the host waited for the body")
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    });
}

#[test]
fn a_tenant_sees_nothing_of_another_tenants_work() {
    let world = World::start();
    let cluster = &world.cluster;
    cluster.block_on(async {
        let mut alpha = world.client(Some(&world.alpha)).await;
        let mut beta = world.client(Some(&world.beta)).await;
        // Beta watches every task from the start.
        let mut watch = beta
            .watch_tasks(pb::WatchTasksRequest::default())
            .await
            .unwrap()
            .into_inner();

        let private = fixtures::spinner(1, "alpha's secret\n");
        let sha = upload_wat(&mut alpha, &private).await;
        let mut secret = spec(&sha, "alpha-secret-name", 1 << 20);
        secret.env.insert("API_KEY".into(), "s3cr3t".into());
        let id = submit(&mut alpha, secret).await;
        let task = corral_tests::server::ended(&mut alpha, &id).await;
        assert_eq!(task.spec.unwrap().tenant, "alpha", "the token's tenant");

        // Another tenant's task is answered as one that does not exist.
        let missing = beta
            .get_task(pb::GetTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert!(
            missing.message().starts_with(&format!("no task {id}")),
            "{missing:?}"
        );
        for said in [
            beta.kill_task(pb::KillTaskRequest {
                task_id: id.clone(),
            })
            .await
            .map(drop),
            beta.get_task_output(pb::GetTaskOutputRequest {
                task_id: id.clone(),
            })
            .await
            .map(drop),
            beta.watch_tasks(pb::WatchTasksRequest {
                task_id: id.clone(),
            })
            .await
            .map(drop),
        ] {
            let e = said.unwrap_err();
            assert_eq!((e.code(), e.message()), (missing.code(), missing.message()));
        }
        let listed = beta
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(listed.is_empty(), "{listed:?}");
        // Tenants: beta sees its own row, not alpha's.
        let tenants = beta
            .list_tenants(pb::ListTenantsRequest {})
            .await
            .unwrap()
            .into_inner()
            .tenants;
        let names: Vec<&str> = tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names, ["beta"], "{tenants:?}");
        let named = beta
            .list_tasks(pb::ListTasksRequest {
                tenant: "alpha".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(named.code(), Code::PermissionDenied);

        // Alpha's module: beta can neither run it nor tell it is there.
        let refused = beta
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(spec(&sha, "borrowed", 1 << 20)),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        let never = "f".repeat(64);
        let absent = beta
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(spec(&never, "borrowed", 1 << 20)),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), absent.code());
        assert_eq!(refused.message().replace(&sha, &never), absent.message());
        let upload = |c: &mut Client| {
            let mut c = c.clone();
            let bytes = private.clone().into_bytes();
            async move {
                c.upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
                    chunk: bytes.into(),
                }]))
                .await
                .unwrap()
                .into_inner()
                .existed
            }
        };
        assert!(
            !upload(&mut beta).await,
            "beta learned that alpha has these bytes"
        );
        assert!(upload(&mut beta).await, "beta's own second upload");
        assert!(upload(&mut alpha).await);
        let named = beta
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(pb::TaskSpec {
                    tenant: "alpha".into(),
                    ..spec(&sha, "as-alpha", 1 << 20)
                }),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(named.code(), Code::PermissionDenied, "{named:?}");

        // Partitions: alpha's reservation shows to beta as someone else's, unnamed.
        let partitions = |c: &mut Client| {
            let mut c = c.clone();
            async move {
                c.list_partitions(pb::ListPartitionsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .partitions
            }
        };
        let seen_by_beta = partitions(&mut beta).await;
        let reserved = seen_by_beta
            .iter()
            .find(|p| p.name == "alpha-only")
            .expect("the reserved partition");
        assert!(reserved.reserved_for_other && reserved.tenant.is_empty());
        assert!(
            reserved.allocated.is_none(),
            "beta sees alpha's usage: {reserved:?}"
        );
        let seen_by_alpha = partitions(&mut alpha).await;
        let own = seen_by_alpha
            .iter()
            .find(|p| p.name == "alpha-only")
            .unwrap();
        assert!(!own.reserved_for_other && own.tenant == "alpha");

        // Beta's own task: its watch sees it, and nothing of alpha's came before.
        let beta_sha = upload_wat(&mut beta, &fixtures::wat("trivial")).await;
        let own = submit(&mut beta, spec(&beta_sha, "beta-task", 1 << 20)).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline.into(), watch.message())
                .await
                .expect("beta's task reached its watch")
                .unwrap()
                .unwrap();
            let task = event.task.unwrap();
            let spec = task.spec.clone().unwrap();
            assert_eq!(spec.tenant, "beta", "beta saw {task:?}");
            assert!(!format!("{task:?}").contains("s3cr3t"));
            if task.id == own && task.finished_at_ms != 0 {
                break;
            }
        }
        // Alpha's listing has its own task only.
        let alpha_tasks = corral_tests::server::all_tasks(&mut alpha).await;
        let tenants: BTreeSet<String> = alpha_tasks
            .iter()
            .map(|t| t.spec.clone().unwrap().tenant)
            .collect();
        assert_eq!(tenants, BTreeSet::from(["alpha".to_string()]));
    });
}

#[test]
fn the_fake_agent_attack_fails_at_every_step() {
    let world = World::start();
    let mut cluster = world.cluster;
    let join = cluster.join_token();
    cluster.block_on(async {
        let mut admin = cluster.client().await;
        let sleeper = upload_wat(&mut admin, &fixtures::sleep(Duration::from_secs(4))).await;
        let mut on_a1 = spec(&sleeper, "victim", 1 << 20);
        on_a1.constraints.insert("zone".into(), "eu-1".into());
        on_a1.env.insert("SECRET".into(), "victim's".into());
        let victim = submit(&mut admin, on_a1).await;
        wait_until(&mut admin, &victim, WAIT, |t| {
            t.state == pb::TaskState::Running as i32
        })
        .await;

        // Without a token, or with a tenant's, nobody registers.
        for token in [None, Some(world.alpha.as_str())] {
            let mut a = cluster.agent_api(token).await;
            assert!(a.register(register("evil")).await.is_err());
        }
        // A join token cannot take a1's id: a1's tasks go on.
        let mut a = cluster.agent_api(Some(&join)).await;
        let hijack = a.register(register("a1")).await.unwrap_err();
        assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");
        assert!(hijack.message().contains("cannot claim"), "{hijack:?}");

        // It joins under an id of its own, and gets a credential for that id only.
        let joined = a.register(register("evil")).await.unwrap().into_inner();
        assert!(!joined.credential.is_empty());
        let mut evil = cluster.agent_api(Some(&joined.credential)).await;
        let as_a1 = evil.register(register("a1")).await.unwrap_err();
        assert_eq!(as_a1.code(), Code::PermissionDenied, "{as_a1:?}");
        let attach_a1 = evil
            .session(tokio_stream::iter(vec![attach("a1", 1)]))
            .await
            .unwrap_err();
        assert_eq!(attach_a1.code(), Code::PermissionDenied);
        // Modules are served only for tasks launched to the agent.
        let fetch = evil
            .fetch_module(pb::FetchModuleRequest {
                sha256: sleeper.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(fetch.code(), Code::PermissionDenied, "{fetch:?}");

        // On its own session it reports the victim FINISHED with a forged output: ignored.
        let session = evil
            .register(register("evil"))
            .await
            .unwrap()
            .into_inner()
            .session;
        let forged = pb::AgentMessage {
            message: Some(pb::agent_message::Message::Status(pb::StatusUpdate {
                task: Some(pb::TaskRef {
                    task_id: victim.clone(),
                    attempt: 1,
                }),
                state: pb::TaskState::Finished as i32,
                outcome: Some(pb::Outcome {
                    kind: pb::OutcomeKind::Success as i32,
                    ..Default::default()
                }),
                output: Some(pb::TaskOutput {
                    stdout: b"forged".to_vec().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let (up, rx) = tokio::sync::mpsc::unbounded_channel();
        up.send(attach("evil", session)).unwrap();
        let _down = evil
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .unwrap();
        // Its session is attached (so its reports are read) before it forges one.
        until_agent(&mut admin, "evil", |state| state == pb::AgentState::Active).await;
        up.send(forged).unwrap();
        // What is under test is that nothing happens: give the report time to be applied.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let task = get(&mut admin, &victim).await;
        assert_eq!(task.state, pb::TaskState::Running as i32, "{task:?}");
        let ended = corral_tests::server::ended(&mut admin, &victim).await;
        assert_eq!(ended.state, pb::TaskState::Finished as i32);
        assert_eq!(ended.agent_id, "a1");
        let output = admin
            .get_task_output(pb::GetTaskOutputRequest {
                task_id: victim.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!output.stdout.starts_with(b"forged"), "{output:?}");
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        let a1 = agents.iter().find(|a| a.id == "a1").unwrap();
        assert_eq!(a1.state, pb::AgentState::Active as i32, "{agents:?}");
        drop(up);
    });
}

#[test]
fn revoking_a_token_ends_its_watch_and_its_agents_session_at_once() {
    let world = World::start();
    let mut cluster = world.cluster;
    cluster.start_agent("a2", 1, "1GiB", &[]);
    cluster.wait_for_agents(&["a2"]);
    cluster.block_on(async {
        let mut admin = cluster.client().await;
        let (accessor, tenant) = create_token(&mut admin, Role::Tenant, "gamma").await;
        let mut gamma = connect_as(&cluster.url, Some(&tenant)).await;
        let mut watch = gamma
            .watch_tasks(pb::WatchTasksRequest::default())
            .await
            .unwrap()
            .into_inner();
        admin
            .revoke_token(pb::RevokeTokenRequest {
                accessor: accessor.clone(),
            })
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the watch outlived its token's revocation");
        let e = ended.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = gamma
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap_err();
        assert!(e.message().contains("was revoked"), "{e:?}");

        // a2's credential, revoked: its session ends and the agent stops, saying why.
        let tokens = admin
            .list_tokens(pb::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens;
        let credential = tokens.iter().find(|t| t.agent_id == "a2").unwrap();
        assert!(tokens.iter().any(|t| t.agent_id == "a1"));
        admin
            .revoke_token(pb::RevokeTokenRequest {
                accessor: credential.accessor.clone(),
            })
            .await
            .unwrap();
        until_agent(&mut admin, "a2", |state| state != pb::AgentState::Active).await;
    });
    let deadline = Instant::now() + WAIT;
    while cluster.agent_running("a2") {
        assert!(Instant::now() < deadline, "the revoked agent kept running");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_for_agents(&["a1"]);
}

#[test]
fn the_audit_log_records_tokens_kills_registrations_and_counts_refusals() {
    let world = World::start();
    let cluster = &world.cluster;
    cluster.block_on(async {
        let mut admin = cluster.client().await;
        let (accessor, _) = create_token(&mut admin, Role::Tenant, "delta").await;
        admin
            .revoke_token(pb::RevokeTokenRequest {
                accessor: accessor.clone(),
            })
            .await
            .unwrap();
        let sha = upload_wat(&mut admin, &fixtures::sleep(Duration::from_secs(60))).await;
        let id = submit(&mut admin, spec(&sha, "doomed", 1 << 20)).await;
        admin
            .kill_task(pb::KillTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap();
        // Fifty refused calls: counted, written as one entry.
        let mut anonymous = world.client(Some(&unknown(Role::Tenant))).await;
        for _ in 0..50 {
            assert!(anonymous
                .list_agents(pb::ListAgentsRequest {})
                .await
                .is_err());
        }
        let deadline = Instant::now() + WAIT;
        let events = loop {
            let events = admin
                .list_audit(pb::ListAuditRequest::default())
                .await
                .unwrap()
                .into_inner()
                .events;
            if events.iter().any(|e| e.action == "auth.refused") {
                break events;
            }
            assert!(
                Instant::now() < deadline,
                "no refusal was recorded: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let has = |action: &str, detail: &str| {
            events
                .iter()
                .any(|e| e.action == action && e.detail.contains(detail))
        };
        assert!(has("token.create", &accessor), "{events:?}");
        assert!(has("token.revoke", &accessor), "{events:?}");
        assert!(has("task.kill", &id), "{events:?}");
        assert!(has("agent.register", "a1"), "{events:?}");
        let refused: Vec<_> = events
            .iter()
            .filter(|e| e.action == "auth.refused" && e.detail == "unknown")
            .collect();
        assert_eq!(
            refused.iter().map(|e| e.count).sum::<u64>(),
            50,
            "{refused:?}"
        );
        assert!(
            refused.len() <= 2,
            "refusals were not aggregated: {refused:?}"
        );
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    });
    // The CLI: `corral audit` as the admin, refused to a tenant with its own status.
    let out = cluster.corral(&["audit"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("token.create"));
    let out = cluster.corral_as(Some(&world.alpha), &["audit"]);
    assert_eq!(out.status.code(), Some(139), "{out:?}");
    let out = cluster.corral_as(None, &["tasks"]);
    assert_eq!(out.status.code(), Some(139), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
}

#[test]
fn token_commands_print_the_secret_once_and_login_saves_a_private_profile() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::start();
    let cluster = &world.cluster;
    let out = cluster.corral(&[
        "token",
        "create",
        "--role",
        "tenant",
        "--tenant",
        "epsilon",
        "--expires",
        "30d",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_string();
    assert!(secret.starts_with("corral_tenant_"), "{stdout}");
    let accessor = corral_proto::token::parse(&secret)
        .unwrap()
        .accessor
        .to_string();
    let listed = cluster.corral(&["token", "list"]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains(&accessor) && listed.contains("epsilon"),
        "{listed}"
    );
    assert!(!listed.contains(&secret[20..]), "a secret was listed");

    // `corral login` saves host and token (0600); later commands need neither flag nor variable.
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("epsilon.token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(corral_tests::corral());
        command
            .args(args)
            .env_remove("CORRAL_HOST")
            .env_remove("CORRAL_TOKEN")
            .env("XDG_CONFIG_HOME", home.path());
        corral_tests::output_within(command, None, corral_tests::COMMAND_LIMIT)
    };
    let out = run(&[
        "login",
        "--host",
        &cluster.url,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let profile = home.path().join("corral/config.toml");
    assert_eq!(
        std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = run(&["tasks", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // A flag still wins over the profile.
    let out = run(&["tasks", "--token", "nonsense"]);
    assert_eq!(out.status.code(), Some(139), "{out:?}");
    // Revoked: the profile's token is refused with its own status and message.
    let out = cluster.corral(&["token", "revoke", &accessor]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["tasks"]);
    assert_eq!(out.status.code(), Some(139), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
}

#[test]
fn tls_and_mutual_tls_serve_clients_and_agents_and_plaintext_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = corral_tests::tls::make_certificates(dir.path());
    let path = |name: &str| pki.join(name).to_str().unwrap().to_string();
    let data = dir.path().join("host");
    let mut host = Command::new(corral_tests::corral())
        .args(["host", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args([
            "--tls-cert",
            &path("host.pem"),
            "--tls-key",
            &path("host.key"),
        ])
        .args(["--tls-client-ca", &path("ca.pem")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = listening_on(&mut host);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let plain = url.replacen("https://", "http://", 1);
    let admin = corral_tests::server::admin_token(&data);
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(corral_tests::corral());
        command
            .args(args)
            .env_remove("CORRAL_TLS_CA")
            .env("XDG_CONFIG_HOME", dir.path())
            .env("CORRAL_TOKEN", &admin)
            .envs(env.iter().copied());
        corral_tests::output_within(command, None, corral_tests::COMMAND_LIMIT)
    };
    let ca = path("ca.pem");
    let out = cli(&["agents", "--host", &url, "--tls-ca", &ca], &[]);
    assert!(out.status.success(), "{out:?}");
    // Plaintext to the TLS host fails, saying what to do.
    let out = cli(&["agents", "--host", &plain], &[]);
    assert_eq!(out.status.code(), Some(133), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("use an https:// URL"),
        "{out:?}"
    );
    // https:// without the CA: the host is not trusted, and nothing goes in the clear.
    let out = cli(&["agents", "--host", &url], &[]);
    assert_eq!(out.status.code(), Some(133), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{out:?}"
    );
    // A CA with an http:// URL is refused rather than ignored.
    let out = cli(&["agents", "--host", &plain, "--tls-ca", &ca], &[]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("https://"),
        "{out:?}"
    );

    let join = {
        let out = cli(
            &[
                "token", "create", "--role", "agent", "--host", &url, "--tls-ca", &ca,
            ],
            &[],
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    let join_file = dir.path().join("join.token");
    std::fs::write(&join_file, format!("{join}\n")).unwrap();
    let agent = |id: &str, certificate: bool| {
        let mut command = Command::new(corral_tests::corral());
        command
            .args([
                "agent", "--host", &url, "--id", id, "--slots", "2", "--memory", "1GiB",
            ])
            .arg("--data-dir")
            .arg(dir.path().join(id))
            .args(["--tls-ca", &ca])
            .args(["--join-token-file", join_file.to_str().unwrap()]);
        if certificate {
            command.args([
                "--tls-cert",
                &path("agent.pem"),
                "--tls-key",
                &path("agent.key"),
            ]);
        }
        command
    };
    // Without a client certificate the agent API refuses it, and it stops saying why.
    let out =
        corral_tests::output_within(agent("no-cert", false), None, corral_tests::COMMAND_LIMIT);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("client certificate"),
        "{out:?}"
    );
    // With one it joins and runs a task end to end.
    let mut good = agent("tls-1", true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hello = corral_tests::repo_root().join("tests/fixtures/hello.wat");
    let out = cli(
        &[
            "submit",
            "--wait",
            "--host",
            &url,
            "--tls-ca",
            &ca,
            hello.to_str().unwrap(),
        ],
        &[],
    );
    // The HTTP API over the same TLS, from a client that offers only HTTP/1.1 in its ALPN,
    // as Python's urllib does.
    let http11 = Command::new("python3")
        .args([
            "-c",
            "import ssl, sys, urllib.request as u\n\
             c = ssl.create_default_context(cafile=sys.argv[2])\n\
             c.set_alpn_protocols(['http/1.1'])\n\
             r = u.urlopen(u.Request(sys.argv[1] + '/v1/agents', \
                 headers={'Authorization': 'Bearer ' + sys.argv[3]}), context=c)\n\
             print(r.status, r.read().decode())",
            &url,
            &ca,
            &admin,
        ])
        .output()
        .expect("running python3");
    let _ = good.kill();
    let _ = good.wait();
    let _ = host.kill();
    let _ = host.wait();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&http11.stdout);
    assert!(http11.status.success(), "{http11:?}");
    assert!(
        said.starts_with("200 ") && said.contains("\"tls-1\""),
        "{said}"
    );
}

#[test]
fn a_host_refuses_to_listen_beyond_loopback_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(corral_tests::corral());
    command
        .args(["host", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path());
    let out = corral_tests::output_within(command, None, corral_tests::COMMAND_LIMIT);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without TLS") && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
}

/// The first start writes the first admin token (0600); a restart keeps it; a start with
/// `--reset-admin-token` revokes it and writes a new one.
#[test]
fn a_host_writes_its_first_admin_token_and_a_reset_replaces_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let start = |reset: bool| {
        let mut command = Command::new(corral_tests::corral());
        command
            .args(["host", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if reset {
            command.arg("--reset-admin-token");
        }
        let mut child = command.spawn().unwrap();
        let url = listening_on(&mut child);
        (child, url)
    };
    let file = dir.path().join("admin.token");
    let (mut host, _) = start(false);
    let first = corral_tests::server::admin_token(dir.path());
    assert!(first.starts_with("corral_admin_"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    host.kill().unwrap();
    host.wait().unwrap();
    let (mut host, _) = start(false);
    assert_eq!(
        corral_tests::server::admin_token(dir.path()),
        first,
        "a restart made a new one"
    );
    host.kill().unwrap();
    host.wait().unwrap();
    let (mut host, url) = start(true);
    let second = corral_tests::server::admin_token(dir.path());
    assert_ne!(second, first);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut old = connect_as(&url, Some(&first)).await;
        let e = old.list_tokens(pb::ListTokensRequest {}).await.unwrap_err();
        assert!(e.message().contains("was revoked"), "{e:?}");
        let mut new = connect_as(&url, Some(&second)).await;
        let tokens = new
            .list_tokens(pb::ListTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens;
        let live = tokens
            .iter()
            .filter(|t| t.role == pb::Role::Admin as i32 && t.revoked_at_ms == 0)
            .count();
        assert_eq!(live, 1, "{tokens:?}");
    });
    host.kill().unwrap();
    host.wait().unwrap();
}
