//! The real agent daemon against a host played by the test: a `corral.v1.AgentApi` server on
//! 127.0.0.1 that records what the agent says and sends what the test tells it to. The host
//! can fail module fetches; the agent reaches it through a proxy the test cuts and restores.
//! It plays the host's side of tokens too: a join token gets a credential at the first
//! registration, and it can refuse the agent's token.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_agent::daemon::{self, AgentConfig};
use corral_proto::pb;
use corral_tests::fixtures;
use corral_tests::proxy::Proxy;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(30);

/// What the agent said to the host, in order.
#[derive(Debug)]
enum Heard {
    Registered(pb::RegisterRequest),
    Attached,
    Status(pb::StatusUpdate),
}

/// The stream of what the host sends one session.
type Downstream = mpsc::UnboundedSender<Result<pb::HostMessage, Status>>;

/// A well-formed agent token of `fill` (a hex digit).
fn agent_token(fill: &str) -> String {
    corral_proto::token::compose(
        corral_proto::token::Role::Agent,
        &fill.repeat(corral_proto::token::ACCESSOR_HEX),
        &fill.repeat(corral_proto::token::SECRET_HEX),
    )
}

/// The agents' join token, and the credential the host gives at a first registration.
fn join_token() -> String {
    agent_token("1")
}
fn credential() -> String {
    agent_token("2")
}

/// The token a call carried.
fn bearer<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

/// The host's side.
#[derive(Clone)]
struct Host {
    /// The token each call carried, in order, with the call's name.
    tokens: Arc<Mutex<Vec<(&'static str, String)>>>,
    /// Refuse every registration as a revoked token would be.
    refuse: Arc<std::sync::atomic::AtomicBool>,
    heard: mpsc::UnboundedSender<Heard>,
    /// Where the test's commands go: the attached session's stream.
    downstream: Arc<Mutex<Option<Downstream>>>,
    modules: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Inputs by the sha256 they are asked for (whatever their bytes hash to), and how many
    /// times each was fetched.
    inputs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    input_fetches: Arc<Mutex<HashMap<String, usize>>>,
}

type Down = Pin<Box<dyn Stream<Item = Result<pb::HostMessage, Status>> + Send>>;
type Chunks = Pin<Box<dyn Stream<Item = Result<pb::ModuleChunk, Status>> + Send>>;
type InputChunks = Pin<Box<dyn Stream<Item = Result<pb::InputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_api_server::AgentApi for Host {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let token = bearer(&request);
        self.tokens
            .lock()
            .unwrap()
            .push(("register", token.clone()));
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unauthenticated(
                "token 2222222222222222 was revoked",
            ));
        }
        let _ = self.heard.send(Heard::Registered(request.into_inner()));
        Ok(Response::new(pb::RegisterResponse {
            session: 1,
            heartbeat_interval_ms: 100,
            max_module_bytes: 64 << 20,
            credential: if token == join_token() {
                credential()
            } else {
                String::new()
            },
        }))
    }

    type SessionStream = Down;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Down>, Status> {
        self.tokens
            .lock()
            .unwrap()
            .push(("session", bearer(&request)));
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        *self.downstream.lock().unwrap() = Some(tx);
        let heard = self.heard.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let said = match message.message {
                    Some(pb::agent_message::Message::Attach(_)) => Heard::Attached,
                    Some(pb::agent_message::Message::Status(update)) => Heard::Status(update),
                    _ => continue,
                };
                let _ = heard.send(said);
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    type FetchModuleStream = Chunks;
    type FetchInputStream = InputChunks;

    async fn fetch_input(
        &self,
        request: Request<pb::FetchInputRequest>,
    ) -> Result<Response<InputChunks>, Status> {
        let sha = request.into_inner().sha256;
        *self
            .input_fetches
            .lock()
            .unwrap()
            .entry(sha.clone())
            .or_default() += 1;
        let bytes = self.inputs.lock().unwrap().get(&sha).cloned();
        let bytes = bytes.ok_or_else(|| Status::not_found("no such input"))?;
        if bytes.is_empty() {
            // A fetch that stalls: its size, then nothing, for ever.
            let first = Ok(pb::InputChunk {
                size_bytes: 1 << 30,
                chunk: vec![0u8; 1024].into(),
            });
            let stalled = tokio_stream::iter([first]).chain(tokio_stream::pending());
            return Ok(Response::new(Box::pin(stalled)));
        }
        // In two chunks, the size in the first, as the host sends them.
        let half = bytes.len() / 2;
        let chunks = [
            Ok(pb::InputChunk {
                size_bytes: bytes.len() as u64,
                chunk: bytes[..half].to_vec().into(),
            }),
            Ok(pb::InputChunk {
                size_bytes: 0,
                chunk: bytes[half..].to_vec().into(),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn fetch_module(
        &self,
        request: Request<pb::FetchModuleRequest>,
    ) -> Result<Response<Chunks>, Status> {
        self.tokens
            .lock()
            .unwrap()
            .push(("fetch", bearer(&request)));
        let sha = request.into_inner().sha256;
        match self.modules.lock().unwrap().get(&sha) {
            Some(bytes) => {
                let chunk = pb::ModuleChunk {
                    chunk: bytes.clone().into(),
                };
                Ok(Response::new(Box::pin(tokio_stream::iter([Ok(chunk)]))))
            }
            None => Err(Status::unavailable("the host's store is unreachable")),
        }
    }
}

impl Host {
    /// Serves on `listener` for the rest of the test.
    fn serve(&self, listener: TcpListener) {
        let service = pb::agent_api_server::AgentApiServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
    }

    fn send(&self, message: pb::host_message::Message) {
        let down = self.downstream.lock().unwrap();
        let down = down.as_ref().expect("an attached session");
        down.send(Ok(pb::HostMessage {
            message: Some(message),
        }))
        .expect("the session stream is open");
    }

    fn launch(&self, task: &str, spec: pb::TaskSpec) {
        self.send(pb::host_message::Message::Launch(pb::Launch {
            task: Some(task_ref(task)),
            spec: Some(spec),
        }));
    }

    fn ack(&self, task: &str) {
        self.send(pb::host_message::Message::Ack(pb::Ack {
            task: Some(task_ref(task)),
        }));
    }
}

fn task_ref(task: &str) -> pb::TaskRef {
    pb::TaskRef {
        task_id: task.into(),
        attempt: 1,
    }
}

/// The fake host, the agent daemon connected to it, and what the agent says.
struct Rig {
    host: Host,
    heard: mpsc::UnboundedReceiver<Heard>,
    /// The agent's way to the host.
    link: Proxy,
    data: tempfile::TempDir,
}

impl Rig {
    async fn start(resend: Duration) -> Rig {
        Self::start_with(resend, AgentConfig::DEFAULT_MAX_CACHE_BYTES).await
    }

    async fn start_with(resend: Duration, max_cache_bytes: u64) -> Rig {
        let (tx, heard) = mpsc::unbounded_channel();
        let host = Host {
            tokens: Arc::default(),
            refuse: Arc::default(),
            heard: tx,
            downstream: Arc::default(),
            modules: Arc::default(),
            inputs: Arc::default(),
            input_fetches: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Proxy::start(listener.local_addr().unwrap()).await;
        host.serve(listener);
        let data = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            id: "a1".into(),
            host: format!("http://{}", link.addr),
            address: "test".into(),
            slots: 2,
            memory_bytes: 1 << 30,
            labels: BTreeMap::new(),
            data_dir: data.path().to_path_buf(),
            max_backoff: Duration::from_millis(200),
            resend_interval: resend,
            compiler: Default::default(),
            compile_budget: Default::default(),
            max_cache_bytes,
            join_token: Some(join_token()),
            tls: Default::default(),
        };
        tokio::spawn(daemon::run(config, std::future::pending()));
        let mut rig = Rig {
            host,
            heard,
            link,
            data,
        };
        rig.until(|h| matches!(h, Heard::Attached)).await;
        rig
    }

    /// Waits for the first thing heard that `pred` picks, skipping the rest.
    async fn until(&mut self, pred: impl Fn(&Heard) -> bool) -> Heard {
        tokio::time::timeout(WAIT, async {
            loop {
                let heard = self.heard.recv().await.expect("the host is up");
                if pred(&heard) {
                    return heard;
                }
            }
        })
        .await
        .expect("heard within the wait")
    }

    /// The next final report on `task`.
    async fn final_report(&mut self, task: &str) -> pb::StatusUpdate {
        let heard = self
            .until(|h| matches!(h, Heard::Status(u) if is_final(u, task)))
            .await;
        match heard {
            Heard::Status(update) => update,
            other => unreachable!("{other:?}"),
        }
    }

    /// Stores a module on the host as the host does: its binary form, by that form's sha256.
    fn add_module(&self, wat: &str) -> String {
        let binary = wat::parse_str(wat).unwrap();
        let sha = corral_admission::sha256_of(&binary);
        self.host
            .modules
            .lock()
            .unwrap()
            .insert(sha.clone(), binary);
        sha
    }
}

/// A spec of module `sha` mounting `input` (bytes of sha256 `input_sha`) at /input/x.txt.
fn mounting(sha: &str, input_sha: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        inputs: vec![pb::InputMount {
            sha256: input_sha.into(),
            path: "/input/x.txt".into(),
        }],
        ..spec(sha)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_is_fetched_once_kept_read_only_and_seen_by_each_task() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let sha = rig.add_module(&fixtures::wat("read_input"));
    let content = b"shared data\n".to_vec();
    let input = corral_admission::sha256_of(&content);
    rig.host
        .inputs
        .lock()
        .unwrap()
        .insert(input.clone(), content.clone());
    for task in ["t-1", "t-2", "t-3"] {
        rig.host.launch(task, mounting(&sha, &input));
    }
    for task in ["t-1", "t-2", "t-3"] {
        let update = rig.final_report(task).await;
        assert_eq!(kind(&update), pb::OutcomeKind::Success, "{update:?}");
        assert_eq!(update.output.unwrap().stdout.as_ref(), content.as_slice());
    }
    assert_eq!(rig.host.input_fetches.lock().unwrap()[&input], 1);
    let kept = rig
        .data
        .path()
        .join("inputs")
        .join(format!("{input}.input"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o400);
    // Each attempt's links are gone with it.
    let work: Vec<_> = std::fs::read_dir(rig.data.path().join("work"))
        .unwrap()
        .collect();
    assert!(work.is_empty(), "{work:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_larger_than_the_cache_is_kept_while_used_and_evicts_the_others() {
    let content = b"larger than the cache\n".to_vec();
    let mut rig = Rig::start_with(Duration::from_secs(5), 8).await;
    let sha = rig.add_module(&fixtures::wat("read_input"));
    let mut inputs = Vec::new();
    for text in [&b"an older input\n"[..], &content] {
        let input = corral_admission::sha256_of(text);
        rig.host
            .inputs
            .lock()
            .unwrap()
            .insert(input.clone(), text.to_vec());
        inputs.push(input);
    }
    for (i, input) in inputs.iter().enumerate() {
        let task = format!("t-{i}");
        rig.host.launch(&task, mounting(&sha, input));
        let update = rig.final_report(&task).await;
        assert_eq!(kind(&update), pb::OutcomeKind::Success, "{update:?}");
    }
    let kept: Vec<String> = std::fs::read_dir(rig.data.path().join("inputs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, [format!("{}.input", inputs[1])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_stops_a_task_whose_input_is_still_being_fetched() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let sha = rig.add_module(&fixtures::wat("read_input"));
    let input = "e".repeat(64);
    rig.host
        .inputs
        .lock()
        .unwrap()
        .insert(input.clone(), Vec::new());
    rig.host.launch("t-1", mounting(&sha, &input));
    rig.until(|h| matches!(h, Heard::Status(u) if u.state == pb::TaskState::Running as i32))
        .await;
    while !rig
        .data
        .path()
        .join("inputs")
        .read_dir()
        .unwrap()
        .any(|_| true)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.host.send(pb::host_message::Message::Kill(pb::Kill {
        task: Some(task_ref("t-1")),
    }));
    let update = rig.final_report("t-1").await;
    assert_eq!(update.state, pb::TaskState::Killed as i32, "{update:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_the_host_serves_damaged_is_the_agents_failure_and_not_kept() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let sha = rig.add_module(&fixtures::wat("read_input"));
    let input = corral_admission::sha256_of(b"the real bytes");
    rig.host
        .inputs
        .lock()
        .unwrap()
        .insert(input.clone(), b"other bytes".to_vec());
    rig.host.launch("t-1", mounting(&sha, &input));
    let update = rig.final_report("t-1").await;
    assert_eq!(kind(&update), pb::OutcomeKind::AgentError);
    let message = update.outcome.unwrap().message;
    assert!(
        message.contains(&format!("input {input} that hash to")),
        "{message}"
    );
    let kept: Vec<_> = std::fs::read_dir(rig.data.path().join("inputs"))
        .unwrap()
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}

fn is_final(update: &pb::StatusUpdate, task: &str) -> bool {
    update.task.as_ref().is_some_and(|t| t.task_id == task)
        && update.state != pb::TaskState::Running as i32
}

fn spec(sha: &str) -> pb::TaskSpec {
    pb::TaskSpec {
        name: "t".into(),
        module_sha256: sha.into(),
        ..Default::default()
    }
}

fn kind(update: &pb::StatusUpdate) -> pb::OutcomeKind {
    pb::OutcomeKind::try_from(update.outcome.as_ref().unwrap().kind).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_the_host_cannot_serve_is_the_agents_failure_not_the_tasks() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    // The host knows no module of this sha256: its fetch fails as a network fault would.
    rig.host.launch("t-1", spec(&"ab".repeat(32)));
    let update = rig.final_report("t-1").await;
    assert_eq!(update.state, pb::TaskState::Failed as i32);
    assert_eq!(kind(&update), pb::OutcomeKind::AgentError);
    let message = &update.outcome.as_ref().unwrap().message;
    assert!(message.contains("cannot fetch module"), "{message}");
    assert!(
        message.contains("the host's store is unreachable"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_dir_the_agent_cannot_make_is_the_agents_failure_not_the_tasks() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let sha = rig.add_module(&fixtures::wat("writer"));
    // The agent's work dir is not a directory any more (as a full or broken disk would leave
    // it): the task's output directory cannot be made there.
    let work = rig.data.path().join("work");
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::write(&work, b"not a directory").unwrap();
    let mut outputs = spec(&sha);
    outputs.collect_outputs = true;
    rig.host.launch("t-1", outputs);
    let update = rig.final_report("t-1").await;
    assert_eq!(kind(&update), pb::OutcomeKind::AgentError);
    let message = &update.outcome.as_ref().unwrap().message;
    assert!(
        message.contains("cannot create the output directory"),
        "{message}"
    );
    assert!(Path::new(&work).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_modules_stay_within_the_cache_size_least_recently_used_going_first() {
    let texts = ["one\n", "two\n", "three\n"];
    let size_of = |text: &str| wat::parse_str(fixtures::spinner(1, text)).unwrap().len() as u64;
    // Room for one and a half of these modules.
    let cap = size_of(texts[2]) * 3 / 2;
    let mut rig = Rig::start_with(Duration::from_secs(5), cap).await;
    let modules = rig.data.path().join("modules");
    let mut shas = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let sha = rig.add_module(&fixtures::spinner(1, text));
        let task = format!("t-{i}");
        rig.host.launch(&task, spec(&sha));
        assert_eq!(
            kind(&rig.final_report(&task).await),
            pb::OutcomeKind::Success
        );
        shas.push(sha);
    }
    let kept: Vec<String> = std::fs::read_dir(&modules)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    let size: u64 = kept
        .iter()
        .map(|n| std::fs::metadata(modules.join(n)).unwrap().len())
        .sum();
    assert!(size <= cap, "{kept:?} hold {size} bytes, over {cap}");
    assert_eq!(
        kept,
        vec![format!("{}.wasm", shas[2])],
        "the module just used was evicted, or the older ones kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_kept_module_is_fetched_again_not_blamed_on_the_task() {
    // What a crash while it was written, or a failing disk, can leave of the agent's copy.
    for damaged in [
        &b""[..],
        b"\0asm\x01\0\0\0",
        b"(module)",
        b"\0asm\x01\0\0\0\x01\x04\x01",
    ] {
        let mut rig = Rig::start(Duration::from_secs(5)).await;
        let sha = rig.add_module(&fixtures::spinner(1, "fine\n"));
        let kept = rig.data.path().join("modules").join(format!("{sha}.wasm"));
        std::fs::write(&kept, damaged).unwrap();
        rig.host.launch("t-1", spec(&sha));
        let update = rig.final_report("t-1").await;
        assert_eq!(
            kind(&update),
            pb::OutcomeKind::Success,
            "{damaged:?}: {update:?}"
        );
        assert_eq!(update.output.unwrap().stdout.as_ref(), b"fine\n");
        // The copy kept now is the module itself.
        let now_kept = std::fs::read(&kept).unwrap();
        assert_eq!(corral_admission::sha256_of(&now_kept), sha);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_from_the_host_that_are_not_the_module_are_the_agents_failure() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let sha = rig.add_module(&fixtures::spinner(1, "fine\n"));
    // The host's store answers other bytes under the name.
    rig.host
        .modules
        .lock()
        .unwrap()
        .insert(sha.clone(), wat::parse_str(fixtures::exit(3)).unwrap());
    rig.host.launch("t-1", spec(&sha));
    let update = rig.final_report("t-1").await;
    assert_eq!(kind(&update), pb::OutcomeKind::AgentError);
    let message = update.outcome.unwrap().message;
    assert!(
        message.contains(&format!("module {sha} that hash to")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_module_is_the_tasks_own_outcome() {
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let sha = rig.add_module(r#"(module (import "env" "evil" (func)) (func (export "_start")))"#);
    rig.host.launch("t-1", spec(&sha));
    let update = rig.final_report("t-1").await;
    assert_eq!(update.state, pb::TaskState::Failed as i32);
    assert_eq!(kind(&update), pb::OutcomeKind::LinkError);
    assert!(update.outcome.unwrap().message.contains("env::evil"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_data_dir_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let rig = Rig::start(Duration::from_secs(5)).await;
    let mode = std::fs::metadata(rig.data.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_on_through_a_host_outage_and_resends_its_final_report_until_acknowledged() {
    let resend = Duration::from_millis(300);
    let mut rig = Rig::start(resend).await;
    // A second asleep, then done: it ends while the host is away (five seconds, far longer).
    let sha = rig.add_module(&fixtures::sleep(Duration::from_secs(1)));
    rig.host.launch("t-1", spec(&sha));
    // Asleep in the guest: its progress report has reached the host.
    rig.until(|h| matches!(h, Heard::Status(u) if u.progress.is_some()))
        .await;

    // The network between agent and host goes down.
    rig.link.cut().await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // It comes back; the agent registers again, naming the attempt whose final report the
    // host never acknowledged (or, on a machine slow enough that the second is not over yet,
    // the attempt it still runs), and sends that report.
    rig.link.restore().await;
    let registered = rig.until(|h| matches!(h, Heard::Registered(_))).await;
    let Heard::Registered(registered) = registered else {
        unreachable!()
    };
    assert_eq!(registered.protocol, corral_proto::AGENT_PROTOCOL);
    let named: Vec<_> = registered
        .unacknowledged
        .iter()
        .chain(&registered.running)
        .collect();
    assert_eq!(named, [&task_ref("t-1")], "{registered:?}");
    let first = rig.final_report("t-1").await;
    assert_eq!(kind(&first), pb::OutcomeKind::Success, "{first:?}");
    assert_eq!(first.progress, Some(pb::Progress { done: 1, total: 1 }));
    // Not acknowledged: it comes again.
    let again = rig.final_report("t-1").await;
    assert_eq!(kind(&again), pb::OutcomeKind::Success);
    // Acknowledged: it stops.
    rig.host.ack("t-1");
    tokio::time::sleep(resend * 2).await;
    while let Ok(heard) = rig.heard.try_recv() {
        let _ = heard;
    }
    let quiet_until = Instant::now() + resend * 4;
    while Instant::now() < quiet_until {
        if let Ok(Heard::Status(update)) = rig.heard.try_recv() {
            assert!(
                !is_final(&update, "t-1"),
                "re-sent after the ack: {update:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent of one slot whose host (port 9) never answers.
fn no_host_config(id: &str, data_dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        id: id.into(),
        host: "http://127.0.0.1:9".into(),
        address: "test".into(),
        slots: 1,
        memory_bytes: 1 << 30,
        labels: BTreeMap::new(),
        data_dir: data_dir.to_path_buf(),
        max_backoff: Duration::from_millis(200),
        resend_interval: Duration::from_secs(5),
        compiler: Default::default(),
        compile_budget: Default::default(),
        max_cache_bytes: AgentConfig::DEFAULT_MAX_CACHE_BYTES,
        join_token: Some(join_token()),
        tls: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_an_id_the_host_would_refuse_stops_at_once_saying_why() {
    let data = tempfile::tempdir().unwrap();
    for id in ["x/y", "", "tab\there", "nul\0"] {
        let config = no_host_config(id, data.path());
        let ran = tokio::time::timeout(
            Duration::from_secs(10),
            daemon::run(config, std::future::pending()),
        )
        .await
        .expect("the agent kept trying");
        let error = ran.unwrap_err().to_string();
        assert!(error.contains("agent id"), "{id:?}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_earlier_run_of_the_agent_left_in_its_data_dir_is_removed_at_start() {
    let data = tempfile::tempdir().unwrap();
    let stale = data.path().join("work").join("t-9-1");
    std::fs::create_dir_all(stale.join("deep")).unwrap();
    std::fs::write(stale.join("deep").join("big.bin"), vec![7u8; 1 << 20]).unwrap();
    std::fs::create_dir_all(data.path().join("modules")).unwrap();
    let part = data
        .path()
        .join("modules")
        .join(format!("{}.part", "ab".repeat(32)));
    std::fs::write(&part, b"half a module").unwrap();
    let kept = data
        .path()
        .join("modules")
        .join(format!("{}.wasm", "cd".repeat(32)));
    std::fs::write(&kept, b"a module").unwrap();
    let config = no_host_config("a1", data.path());
    let agent = tokio::spawn(daemon::run(config, std::future::pending()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stale.exists() || part.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the leftovers were kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kept.exists(), "a kept module was removed");
    assert!(data.path().join("work").is_dir());
    agent.abort();
}

/// An agent registers with its join token once, keeps the credential the host gives (mode
/// 0600) before using it, and carries it on every later call: its session, its fetches and
/// its registrations after a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_the_credential_it_is_given_and_calls_with_it_from_then_on() {
    use std::os::unix::fs::PermissionsExt;
    let mut rig = Rig::start(Duration::from_secs(5)).await;
    let kept = daemon::credential_path(rig.data.path());
    assert_eq!(
        corral_proto::token::read_secret(&kept).unwrap(),
        credential()
    );
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sha = rig.add_module(&fixtures::spinner(1, "fine\n"));
    rig.host.launch("t-1", spec(&sha));
    rig.until(|h| matches!(h, Heard::Status(u) if u.state == pb::TaskState::Finished as i32))
        .await;
    // A reconnect registers with the credential, not the join token.
    rig.link.cut().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.link.restore().await;
    rig.until(|h| matches!(h, Heard::Attached)).await;
    let tokens = rig.host.tokens.lock().unwrap().clone();
    assert_eq!(tokens[0], ("register", join_token()), "{tokens:?}");
    assert!(
        tokens[1..].iter().all(|(_, t)| *t == credential()),
        "a call after joining went without the credential: {tokens:?}"
    );
    for call in ["session", "fetch"] {
        assert!(tokens.iter().any(|(c, _)| *c == call), "{call}: {tokens:?}");
    }
    assert!(tokens.iter().filter(|(c, _)| *c == "register").count() >= 2);
}

/// An agent whose token the host refuses (revoked, unknown) stops, saying what to do, instead
/// of retrying forever; one with neither a credential nor a join token does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_the_host_refuses_stops_saying_why() {
    let (tx, _heard) = mpsc::unbounded_channel();
    let host = Host {
        tokens: Arc::default(),
        refuse: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        heard: tx,
        downstream: Arc::default(),
        modules: Arc::default(),
        inputs: Arc::default(),
        input_fetches: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    host.serve(listener);
    let data = tempfile::tempdir().unwrap();
    let mut config = no_host_config("a1", data.path());
    config.host = format!("http://{addr}");
    let ran = tokio::time::timeout(WAIT, daemon::run(config, std::future::pending()))
        .await
        .expect("the refused agent kept trying");
    let error = ran.unwrap_err().to_string();
    assert!(error.contains("revoked"), "{error}");
    assert!(error.contains("agent.token"), "{error}");

    let mut config = no_host_config("a2", data.path());
    config.join_token = None;
    let error = daemon::run(config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("join token"), "{error}");
    let mut config = no_host_config("a3", data.path());
    config.join_token = Some("corral_tenant_nonsense".into());
    let error = daemon::run(config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("malformed"), "{error}");
}
