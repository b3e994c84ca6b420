//! The agent daemon: registers with the host, keeps one session stream open, runs the tasks it
//! is launched (up to its slots, concurrently) in the [`Sandbox`], kills on request, and reports.
//!
//! - **Reports are reliable**: a final status (FINISHED, FAILED, KILLED, with outcome and output)
//!   is kept until the host acknowledges it, re-sent on every reconnect and periodically while
//!   unacknowledged. RUNNING updates (state, fuel so far, guest progress) are best effort.
//! - **The host may go away**: tasks keep running; the agent reconnects with exponential backoff
//!   (with jitter) and, when it registers again, tells the host what it runs and what it has not
//!   had acknowledged, so that the host reconciles.
//! - **Modules** are fetched from the host by sha256 the first time a task needs them, kept on
//!   disk in `<data_dir>/modules`, and compiled once (the sandbox's caches).

mod convert;
mod inputs;

pub use convert::outcome_to_pb;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_proto::pb;
use corral_proto::token::Bearer;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::sandbox::{
    CompileBudget, Compiler, DirGrant, Prepared, PreparedModule, RunControl, Sandbox,
    SandboxConfig, Wait,
};

/// How an agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Its id, stable across restarts.
    pub id: String,
    /// The host's URL (`http://host:7700`).
    pub host: String,
    /// Where it says it is, for people and tools.
    pub address: String,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Memory it offers to tasks.
    pub memory_bytes: u64,
    /// Labels that task constraints match.
    pub labels: BTreeMap<String, String>,
    /// Module cache, compiled-code cache and task output directories live here.
    pub data_dir: PathBuf,
    /// Bytes of modules kept in `<data_dir>/modules`, and of compiled code in
    /// `<data_dir>/cache`, each; past it the least recently used are removed.
    pub max_cache_bytes: u64,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// How long an unacknowledged final report waits before it is sent again.
    pub resend_interval: Duration,
    /// Where modules are compiled (`corral agent` uses a compile worker).
    pub compiler: Compiler,
    /// What compiling one module may take.
    pub compile_budget: CompileBudget,
    /// The join token it registers with the first time (afterwards it uses the credential the
    /// host gave it, kept in `<data_dir>/agent.token`).
    pub join_token: Option<String>,
    /// What it trusts and shows when the host's URL is `https://`.
    pub tls: corral_proto::TlsClient,
}

impl AgentConfig {
    /// Default [`AgentConfig::resend_interval`].
    pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(5);
    /// Default [`AgentConfig::max_cache_bytes`]: 2 GiB.
    pub const DEFAULT_MAX_CACHE_BYTES: u64 = 2 << 30;
}

/// An agent's failure to start (a running agent retries everything else).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The host URL is malformed.
    #[error("invalid host address {0:?}: {1}")]
    HostUrl(String, String),
    /// The data dir or sandbox could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The host refused this agent's token: only its operator can fix that.
    #[error("{0}")]
    Refused(String),
}

/// Where an agent keeps the credential the host gave it.
pub fn credential_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("agent.token")
}

/// One attempt, as the agent keys it.
type Key = (String, u32);

/// An attempt's module, as the agent has it: compiled already, or its bytes to admit and
/// compile under the attempt's deadline and kill.
enum Module {
    Prepared(PreparedModule),
    Bytes(Bytes),
}

struct Running {
    control: RunControl,
}

struct Agent {
    config: AgentConfig,
    sandbox: Sandbox,
    endpoint: Endpoint,
    /// The token calls carry: the agent's credential once it has one, its join token before.
    bearer: Mutex<Bearer>,
    running: Mutex<HashMap<Key, Running>>,
    /// Final reports not yet acknowledged, with when they were last sent.
    unacked: Mutex<BTreeMap<Key, (pb::StatusUpdate, Instant)>>,
    /// Where reports go while a session is up.
    outbound: Mutex<Option<mpsc::UnboundedSender<pb::AgentMessage>>>,
    /// Modules this agent compiled, by sha256.
    modules: Mutex<HashMap<String, PreparedModule>>,
    /// One lock per module being fetched, so that its launches fetch it once; other modules'
    /// launches never wait for it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Inputs whose kept copy this process has checked against their sha256.
    verified_inputs: Mutex<std::collections::HashSet<String>>,
    /// The host's module size cap, admitted under here too (what the host accepted runs).
    max_module_bytes: std::sync::atomic::AtomicU64,
}

/// Runs an agent until `shutdown` resolves. Tasks still running then are killed.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    if let Some(problem) = corral_proto::agent_id_problem(&config.id) {
        return Err(AgentError::Setup(problem));
    }
    let endpoint = corral_proto::endpoint(&config.host, &config.tls)
        .map_err(|e| AgentError::HostUrl(config.host.clone(), e))?;
    crate::sandbox::private_dir(&config.data_dir)
        .and_then(|()| std::fs::create_dir_all(config.data_dir.join("modules")))
        .and_then(|()| std::fs::create_dir_all(config.data_dir.join("work")))
        .and_then(|()| std::fs::create_dir_all(config.data_dir.join("inputs")))
        .map_err(|e| {
            AgentError::Setup(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
    clear_leftovers(&config.data_dir);
    let bearer = first_token(&config)?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(config.data_dir.join("cache")),
        max_cache_bytes: config.max_cache_bytes,
        pool_slots: Some(config.slots.max(1)),
        compiler: config.compiler.clone(),
        compile_budget: config.compile_budget,
        ..SandboxConfig::default()
    })
    .map_err(|e| AgentError::Setup(e.to_string()))?;
    let agent = Arc::new(Agent {
        config,
        sandbox,
        endpoint,
        bearer: Mutex::new(bearer),
        running: Mutex::new(HashMap::new()),
        unacked: Mutex::new(BTreeMap::new()),
        outbound: Mutex::new(None),
        modules: Mutex::new(HashMap::new()),
        fetching: Mutex::new(HashMap::new()),
        verified_inputs: Mutex::new(std::collections::HashSet::new()),
        max_module_bytes: std::sync::atomic::AtomicU64::new(
            SandboxConfig::DEFAULT_MAX_MODULE_BYTES,
        ),
    });
    let sessions = agent.clone().sessions();
    let result = tokio::select! {
        refused = sessions => Err(refused),
        () = shutdown => Ok(()),
    };
    for running in lock(&agent.running).values() {
        running.control.kill();
    }
    result
}

/// The token an agent starts with: its kept credential, or else its join token. Either must
/// be an agent token, well formed; none is an error saying where to put one.
fn first_token(config: &AgentConfig) -> Result<Bearer, AgentError> {
    let path = credential_path(&config.data_dir);
    let (token, from) = if path.exists() {
        let token = corral_proto::token::read_secret(&path).map_err(AgentError::Setup)?;
        (token, path.display().to_string())
    } else {
        let token = config.join_token.clone().ok_or_else(|| {
            AgentError::Setup(format!(
                "agent {} has no credential ({} does not exist) and no join token: give it one \
                 with --join-token-file or CORRAL_JOIN_TOKEN (`corral token create --role \
                 agent` makes one)",
                config.id,
                path.display()
            ))
        })?;
        (token, "the join token".to_string())
    };
    match corral_proto::token::parse(&token) {
        Ok(parsed) if parsed.role == corral_proto::token::Role::Agent => {}
        Ok(parsed) => {
            return Err(AgentError::Setup(format!(
                "{from} holds a {} token, not an agent token",
                parsed.role.name()
            )))
        }
        Err(problem) => return Err(AgentError::Setup(format!("{from}: {problem}"))),
    }
    Bearer::new(Some(&token)).map_err(AgentError::Setup)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Agent {
    /// Connects, serves a session until it ends, and reconnects with backoff, until the host
    /// refuses the agent's token (answered).
    async fn sessions(self: Arc<Self>) -> AgentError {
        let base = Duration::from_millis(100);
        let mut backoff = base;
        loop {
            let attached = Arc::new(std::sync::atomic::AtomicBool::new(false));
            match self.clone().session(attached.clone()).await {
                Ok(()) => tracing::warn!(agent_id = %self.config.id, "host closed the session"),
                Err(e) if refused(&e) => {
                    return AgentError::Refused(format!(
                        "the host refused agent {}: {} (a revoked or unknown credential: remove \
                         {} and start the agent again with a join token)",
                        self.config.id,
                        e.message(),
                        credential_path(&self.config.data_dir).display()
                    ))
                }
                Err(e) => {
                    let hint = corral_proto::unreachable_hint(&self.config.host, e.message());
                    tracing::warn!(agent_id = %self.config.id, error = %e, hint, "session with the host failed")
                }
            }
            *lock(&self.outbound) = None;
            if attached.load(std::sync::atomic::Ordering::SeqCst) {
                backoff = base;
            }
            // Up to 25% jitter, so that many agents do not reconnect in step.
            let jitter = backoff.mul_f64(f64::from(jitter_percent()) / 400.0);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One session: register, attach, then serve launches, kills and acks.
    async fn session(
        self: Arc<Self>,
        attached: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), tonic::Status> {
        let channel = self.endpoint.connect().await.map_err(|e| {
            let text = corral_proto::source_chain(&e);
            let hint = corral_proto::unreachable_hint(&self.config.host, &text);
            tonic::Status::unavailable(format!(
                "cannot reach host {}: {text}{hint}",
                self.config.host
            ))
        })?;
        let mut client = api_client(channel.clone(), lock(&self.bearer).clone());
        let running: Vec<pb::TaskRef> = lock(&self.running).keys().map(convert::task_ref).collect();
        let unacknowledged: Vec<pb::TaskRef> =
            lock(&self.unacked).keys().map(convert::task_ref).collect();
        let registered = client
            .register(pb::RegisterRequest {
                protocol: corral_proto::AGENT_PROTOCOL,
                agent_id: self.config.id.clone(),
                address: self.config.address.clone(),
                capacity: Some(pb::Capacity {
                    slots: self.config.slots,
                    memory_bytes: self.config.memory_bytes,
                }),
                labels: self.config.labels.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                running,
                unacknowledged,
            })
            .await?
            .into_inner();
        if !registered.credential.is_empty() {
            // Kept before it is used: an agent that used a credential it then lost could
            // never register again.
            let path = credential_path(&self.config.data_dir);
            // Not kept: tried again later (the host gives a new one to the same join token
            // while the first was never used).
            corral_proto::token::write_secret(&path, &registered.credential).map_err(|e| {
                tonic::Status::unavailable(format!(
                    "cannot keep the credential the host gave in {}: {e}",
                    path.display()
                ))
            })?;
            let bearer = Bearer::new(Some(&registered.credential))
                .map_err(tonic::Status::permission_denied)?;
            *lock(&self.bearer) = bearer.clone();
            client = api_client(channel, bearer);
            tracing::info!(agent_id = %self.config.id, path = %path.display(), "joined the cluster: credential kept");
        }
        if registered.max_module_bytes > 0 {
            self.max_module_bytes.store(
                registered.max_module_bytes,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(pb::AgentMessage {
            message: Some(pb::agent_message::Message::Attach(pb::Attach {
                agent_id: self.config.id.clone(),
                session: registered.session,
            })),
        });
        let mut inbound = client
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        attached.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(agent_id = %self.config.id, session = registered.session, host = %self.config.host, "attached to host");
        *lock(&self.outbound) = Some(tx.clone());
        // Whatever ended while we were away goes again.
        for (update, sent) in lock(&self.unacked).values_mut() {
            let _ = tx.send(convert::status_message(update.clone()));
            *sent = Instant::now();
        }
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(100));
        let mut heartbeat = tokio::time::interval(interval);
        let resend_after = self.config.resend_interval;
        let mut resend = tokio::time::interval(resend_after);
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let Some(message) = message? else { return Ok(()) };
                    self.handle(message, &client);
                }
                _ = heartbeat.tick() => {
                    let running = lock(&self.running).keys().map(convert::task_ref).collect();
                    let beat = pb::agent_message::Message::Heartbeat(pb::Heartbeat { running });
                    if tx.send(pb::AgentMessage { message: Some(beat) }).is_err() {
                        return Ok(());
                    }
                }
                _ = resend.tick() => {
                    let stale = Instant::now() - resend_after;
                    for (update, sent) in lock(&self.unacked).values_mut() {
                        if *sent < stale {
                            let _ = tx.send(convert::status_message(update.clone()));
                            *sent = Instant::now();
                        }
                    }
                }
            }
        }
    }

    fn handle(self: &Arc<Self>, message: pb::HostMessage, client: &Client) {
        use pb::host_message::Message;
        match message.message {
            Some(Message::Launch(launch)) => {
                let (Some(key), Some(spec)) = (convert::key(launch.task.as_ref()), launch.spec)
                else {
                    tracing::warn!("launch without a task or spec");
                    return;
                };
                let known = lock(&self.running).contains_key(&key)
                    || lock(&self.unacked).contains_key(&key);
                if known {
                    return;
                }
                tracing::debug!(task_id = %key.0, attempt = key.1, "launch");
                let control = RunControl::new();
                lock(&self.running).insert(
                    key.clone(),
                    Running {
                        control: control.clone(),
                    },
                );
                tokio::spawn(self.clone().run_task(key, spec, control, client.clone()));
            }
            Some(Message::Kill(kill)) => {
                if let Some(key) = convert::key(kill.task.as_ref()) {
                    if let Some(running) = lock(&self.running).get(&key) {
                        tracing::info!(task_id = %key.0, attempt = key.1, "killing on request");
                        running.control.kill();
                    }
                }
            }
            Some(Message::Ack(ack)) => {
                if let Some(key) = convert::key(ack.task.as_ref()) {
                    lock(&self.unacked).remove(&key);
                }
            }
            None => {}
        }
    }

    fn send(&self, update: pb::StatusUpdate) {
        if let Some(tx) = lock(&self.outbound).as_ref() {
            let _ = tx.send(convert::status_message(update));
        }
    }

    /// Runs one attempt and reports on it.
    async fn run_task(
        self: Arc<Self>,
        key: Key,
        spec: pb::TaskSpec,
        control: RunControl,
        client: Client,
    ) {
        let task_ref = convert::task_ref(&key);
        self.send(pb::StatusUpdate {
            task: Some(task_ref.clone()),
            state: pb::TaskState::Running as i32,
            ..Default::default()
        });
        // A kill while its inputs are fetched (gigabytes, maybe) stops the fetch: the run then
        // ends KILLED at once, without them.
        let mounting = tokio::select! {
            mounted = self.mount_inputs(&key, &spec, &client) => mounted,
            () = control.killed() => Ok(None),
        };
        let prepared = match mounting {
            Ok(mounted) => self
                .module(&spec.module_sha256, client)
                .await
                .map(|module| (module, mounted)),
            Err(message) => Err(message),
        };
        let final_update = match prepared {
            Ok((module, mounted)) => {
                let grants = mounted.as_ref().map_or(&[][..], |m| &m.grants[..]);
                self.execute(&key, &spec, module, grants, control).await
            }
            Err(message) => {
                tracing::warn!(task_id = %key.0, attempt = key.1, error = %message, "attempt failed on the agent");
                convert::agent_error(&task_ref, message)
            }
        };
        tracing::debug!(task_id = %key.0, attempt = key.1, state = final_update.state, "attempt ended");
        lock(&self.unacked).insert(key.clone(), (final_update.clone(), Instant::now()));
        lock(&self.running).remove(&key);
        self.send(final_update);
    }

    async fn execute(
        self: &Arc<Self>,
        key: &Key,
        spec: &pb::TaskSpec,
        module: Module,
        inputs: &[DirGrant],
        control: RunControl,
    ) -> pb::StatusUpdate {
        let task_ref = convert::task_ref(key);
        let work = self
            .config
            .data_dir
            .join("work")
            .join(format!("{}-{}", key.0, key.1));
        let output_dir = if spec.collect_outputs {
            if let Err(e) = std::fs::create_dir_all(&work) {
                let message = format!(
                    "agent {} cannot create the output directory {}: {e}",
                    self.config.id,
                    work.display()
                );
                tracing::warn!(task_id = %key.0, attempt = key.1, error = %message, "attempt failed on the agent");
                return convert::agent_error(&task_ref, message);
            }
            Some(work.clone())
        } else {
            None
        };
        let progress = Arc::new(Mutex::new(None::<(u64, u64)>));
        let run_spec = convert::run_spec(
            spec,
            output_dir.as_deref(),
            inputs,
            control.clone(),
            progress.clone(),
        );
        // Live figures while it runs, at most four times a second.
        let reporter = {
            let agent = self.clone();
            let task_ref = task_ref.clone();
            let control = control.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let progress = *lock(&progress);
                    agent.send(pb::StatusUpdate {
                        task: Some(task_ref.clone()),
                        state: pb::TaskState::Running as i32,
                        fuel_used: control.fuel_used(),
                        progress: progress.map(|(done, total)| pb::Progress { done, total }),
                        ..Default::default()
                    });
                }
            })
        };
        // The attempt's clock starts here: compiling counts in its wall time and against its
        // timeout, and its kill stops the compile.
        let agent = self.clone();
        let sha256 = spec.module_sha256.clone();
        let result = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let prepared = match module {
                Module::Prepared(module) => Ok(Prepared {
                    module,
                    cached: true,
                }),
                Module::Bytes(bytes) => {
                    let cap = agent
                        .max_module_bytes
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let wait = Wait {
                        deadline: started.checked_add(run_spec.limits.timeout),
                        control: Some(&control),
                    };
                    let prepared = agent.sandbox.prepare_for(&bytes, cap, wait);
                    if let Ok(prepared) = &prepared {
                        let mut modules = lock(&agent.modules);
                        if modules.len() >= 256 {
                            modules.clear();
                        }
                        modules.insert(sha256, prepared.module.clone());
                    }
                    prepared
                }
            };
            agent.sandbox.run_prepared(prepared, &run_spec, started)
        })
        .await;
        reporter.abort();
        let limit = spec.limits.as_ref().map_or(0, |l| l.max_output_bytes);
        let files = output_dir
            .as_deref()
            .map(|dir| convert::collect_files(dir, limit))
            .transpose();
        if output_dir.is_some() {
            let _ = std::fs::remove_dir_all(&work);
        }
        let failed = |message: String| {
            tracing::warn!(task_id = %key.0, attempt = key.1, error = %message, "attempt failed on the agent");
            convert::agent_error(&task_ref, message)
        };
        let files = match files {
            Ok(files) => files,
            Err(e) => return failed(format!("agent {}: {e}", self.config.id)),
        };
        match result {
            Ok(Ok(report)) => convert::final_update(&task_ref, report, files),
            Ok(Err(e)) => failed(format!("agent {}: {e}", self.config.id)),
            Err(e) => failed(format!(
                "agent {}: the sandbox thread failed: {e}",
                self.config.id
            )),
        }
    }

    /// The module for `sha256`: compiled already, or its bytes from disk or from the host.
    async fn module(&self, sha256: &str, mut client: Client) -> Result<Module, String> {
        if let Some(module) = lock(&self.modules).get(sha256) {
            return Ok(Module::Prepared(module.clone()));
        }
        let agent = &self.config.id;
        if !corral_admission::is_sha256_hex(sha256) {
            return Err(format!(
                "agent {agent} was launched a task whose module sha256 {sha256:?} is malformed"
            ));
        }
        let fetch_lock = lock(&self.fetching)
            .entry(sha256.to_string())
            .or_default()
            .clone();
        let fetched = {
            let _fetching = fetch_lock.lock().await;
            self.kept_or_fetched(sha256, &mut client).await
        };
        self.fetch_done(sha256, &fetch_lock);
        fetched.map(Module::Bytes)
    }

    /// Lets the fetch lock of `key` leave the map once nobody else holds it, and only if it is
    /// still the map's.
    fn fetch_done(&self, key: &str, fetch_lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut fetching = lock(&self.fetching);
        if fetching
            .get(key)
            .is_some_and(|l| Arc::ptr_eq(l, fetch_lock) && Arc::strong_count(l) == 2)
        {
            fetching.remove(key);
        }
    }

    /// The module's bytes: the kept copy if its bytes hash to its name, else fetched from the
    /// host and kept. Disk reads and hashing run on the blocking pool.
    async fn kept_or_fetched(&self, sha256: &str, client: &mut Client) -> Result<Bytes, String> {
        let path = self
            .config
            .data_dir
            .join("modules")
            .join(format!("{sha256}.wasm"));
        // A kept copy counts only if its bytes hash to its name: a scribbled, truncated or
        // empty file (a crash while it was written, a failing disk) is fetched again.
        let kept = {
            let (path, sha256) = (path.clone(), sha256.to_string());
            tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path).ok()?;
                if corral_admission::sha256_of(&bytes) == sha256 {
                    crate::lru::touch(&path);
                    return Some(Bytes::from(bytes));
                }
                tracing::warn!(
                    sha256,
                    "the kept copy of the module is damaged: fetching it again"
                );
                let _ = std::fs::remove_file(&path);
                None
            })
            .await
            .ok()
            .flatten()
        };
        if let Some(bytes) = kept {
            return Ok(bytes);
        }
        let bytes = self.fetch(sha256, client).await?;
        let kept = bytes.clone();
        let sha = sha256.to_string();
        let max = self.config.max_cache_bytes;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = keep(&path, &kept) {
                // The run goes on from memory; the next process fetches it again.
                tracing::warn!(sha256 = sha, error = %e, "cannot keep the module on disk");
            }
            if let Some(dir) = path.parent() {
                crate::lru::evict(dir, ".wasm", max, None);
            }
        })
        .await;
        Ok(bytes)
    }

    /// A module's bytes from the host, checked against the sha256 they are named by.
    async fn fetch(&self, sha256: &str, client: &mut Client) -> Result<Bytes, String> {
        let agent = &self.config.id;
        let fetch_error = |e: tonic::Status| {
            format!(
                "agent {agent} cannot fetch module {sha256} from the host: {}",
                e.message()
            )
        };
        let mut stream = client
            .fetch_module(pb::FetchModuleRequest {
                sha256: sha256.into(),
            })
            .await
            .map_err(fetch_error)?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(fetch_error)? {
            bytes.extend_from_slice(&chunk.chunk);
        }
        let got = corral_admission::sha256_of(&bytes);
        if got != sha256 {
            return Err(format!(
                "agent {agent} fetched {} bytes for module {sha256} that hash to {got}",
                bytes.len()
            ));
        }
        Ok(Bytes::from(bytes))
    }
}

/// Removes what a previous run of the agent left: the work directories of attempts (no attempt
/// outlives its agent process) and modules half written.
fn clear_leftovers(data_dir: &std::path::Path) {
    let entries = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
    };
    for path in entries(&data_dir.join("work")) {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale work directory");
        }
    }
    for path in entries(&data_dir.join("modules")).chain(entries(&data_dir.join("inputs"))) {
        if path.extension().is_some_and(|e| e == "part") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes a module to `path` durably: a temp file, synced, then renamed over it, then the
/// directory synced, so that a crash leaves the old file, or none, or the whole new one.
fn keep(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("part");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

type Client = pb::agent_api_client::AgentApiClient<InterceptedService<Channel, Bearer>>;

fn api_client(channel: Channel, bearer: Bearer) -> Client {
    pb::agent_api_client::AgentApiClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
}

/// Whether the host refused the agent's token (rather than failing for a while).
fn refused(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// 0..100, different from call to call and from agent to agent.
fn jitter_percent() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 100
}
