//! The control plane: the actor that owns the host's [`HostState`] and does its I/O.
//!
//! Every request (a submit, a kill, an agent's registration, attach, heartbeat or report, the
//! liveness check, and every read) goes to one actor task, which owns the state outright. The
//! actor takes the requests waiting (up to [`MAX_BATCH`]) as a batch, applies them to the
//! [`HostState`] in order, runs one scheduling round, and hands the batch's store writes to the
//! store, which group-commits them. Only once a batch's writes are durable, and those of every
//! batch before it, does it send the batch's agent commands, publish its task events and
//! answer its callers, reads included: so nothing a client, a watcher or an agent learns is
//! ahead of the disk. Meanwhile it goes on applying the next batches (at most
//! [`MAX_IN_FLIGHT`] wait for their commit at once), so the state machine's work overlaps the
//! disk's.
//!
//! A read is answered once its batch is durable, so what it shows is on disk. A watch answers
//! its task as the whole batch left it, and subscribes when it is answered, after the events
//! of its batch and of every batch before it have been published: no change falls between the
//! task it answers and the first event it gets.
//!
//! Each request carries the time it was made, and the state machine is given that time, so a
//! batch held up behind a slow commit does not count the delay against the agents: a
//! heartbeat counts from when it arrived, and a liveness check from when its tick fired.
//!
//! If a commit fails (a full or failing disk), the state in memory is ahead of the disk, and
//! the store writes nothing more: after a failed write or sync the file is not trusted until
//! it is reopened. Every caller of that batch and of the batches after it gets the store's
//! error, none of their effects go out, and the actor **recovers**: it drops the state and the
//! store, refuses every request as unavailable meanwhile, and tries to reopen the store, again
//! and again with a growing pause (see [`REOPEN_BACKOFF`]), until it opens: once space
//! returns. Then it restores the state from what is on disk, which is everything it ever
//! acknowledged, as a restarted host would, and serves again. Agents' command streams end when
//! it fails, so they register again (re-sending the final reports not acknowledged) once it
//! serves; watchers keep their streams, since nothing they were told was ahead of the disk.
//!
//! A panic in the actor (a broken invariant of the state machine) stops the host:
//! [`ControlPlane::stopped`] resolves so that the process can exit.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::{Authenticator, Caller, Minted, Refusals, TokenRecord};
use crate::config::HostConfig;
use crate::error::HostError;
use crate::events::{Events, Subscription};
use crate::free_space::FreeSpace;
use crate::job::{JobId, JobRequest};
use crate::partition::Partition;
use crate::registry::AgentInfo;
use crate::state::{
    public, AgentCommand, AgentView, Effects, HostState, JobView, Now, StatusReport, TaskFilter,
    TenantView,
};
use crate::store::{Commit, Loaded, ModuleFacts, Store, StoreError, Write};
use crate::task::{Attempt, Task, TaskId, TaskOutput, TaskSpec, TaskState};
use crate::tenant::TenantChange;

/// Most requests applied in one batch.
pub const MAX_BATCH: usize = 4096;
/// Most batches applied and waiting for their commit at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Requests that may wait for the actor before callers wait to queue more.
const QUEUE: usize = 65_536;
/// Pauses between attempts to reopen a failed store: from the first to the last, doubling.
pub const REOPEN_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(8));
/// How long after a reopening a successful write, or a new failure, starts the pause between
/// reopenings from the first again: a disk still nearly full may let the store open, and
/// small writes pass, while one large write fails each time.
pub const STEADY_AFTER_REOPEN: Duration = Duration::from_secs(60);
/// How often tokens' last uses and the refused calls counted are written.
const USED_FLUSH: Duration = Duration::from_secs(10);

/// One agent's command channel, for the session it attached with.
struct Link {
    session: u64,
    commands: mpsc::UnboundedSender<AgentCommand>,
}

type Answer<T> = oneshot::Sender<Result<T, HostError>>;
type Commands = mpsc::UnboundedReceiver<AgentCommand>;

/// Who registers an agent: the accessor of its token and, for a new agent that came with a
/// join token, the credential to give it.
struct Registrant {
    by: String,
    credential: Option<TokenRecord>,
}

/// Something asked of the actor.
enum Request {
    Submit(TaskSpec, Option<String>, Caller, Answer<(TaskId, bool)>),
    Kill(TaskId, Caller, Answer<Task>),
    ModuleStored(
        String,
        Bytes,
        ModuleFacts,
        Option<String>,
        Answer<(bool, bool)>,
    ),
    Register(
        AgentInfo,
        Vec<Attempt>,
        Vec<Attempt>,
        Registrant,
        Answer<u64>,
    ),
    /// An agent's session stream, with the accessor of the credential it came with.
    Attach(String, u64, String, Answer<Commands>),
    Heartbeat(String, u64),
    Detach(String, u64),
    Report(String, u64, Attempt, StatusReport),
    Expire,
    Get(TaskId, Option<String>, Answer<Task>),
    List(TaskFilter, Option<TaskId>, usize, Answer<(Vec<Task>, bool)>),
    Watch(
        Option<TaskId>,
        Option<String>,
        Answer<(Option<Task>, Subscription)>,
    ),
    Agents(Answer<Vec<AgentView>>),
    Partitions(Answer<Vec<Partition>>),
    CreateToken(TokenRecord, String, Answer<TokenRecord>),
    RevokeToken(String, String, Answer<TokenRecord>),
    ResetAdmin(TokenRecord, Answer<()>),
    Tokens(Answer<Vec<TokenRecord>>),
    /// A tenant's settings changed (`None`: reset) by the accessor.
    SetTenant(String, Option<TenantChange>, String, Answer<TenantView>),
    /// Tenants, or the one named.
    Tenants(Option<String>, Answer<Vec<TenantView>>),
    /// Tokens' last uses, and the refusals counted, since the last flush.
    Used(Vec<(String, i64)>, Refusals),
    /// May this agent fetch this module?
    MayFetch(String, String, Answer<bool>),
    /// May this agent fetch this input? Its stored copy's generation when it may (counted).
    MayFetchInput(String, String, Answer<Option<u64>>),
    /// May this caller's tenant (`None`: an admin) upload this many bytes (of this sha256)?
    /// The stored size when it has them already.
    InputRoom(Option<String>, Option<String>, u64, Answer<Option<u64>>),
    /// An input received and verified: (sha256, size, uploader's tenant, the staged file).
    InputStored(
        String,
        u64,
        Option<String>,
        crate::store::Staged,
        Answer<(bool, bool)>,
    ),
    /// An input's stored copy (of this generation) does not hash to its name.
    InputDamaged(String, u64),
    GetInput(String, Option<String>, Answer<crate::state::InputView>),
    ListInputs(Option<String>, Answer<crate::state::InputsView>),
    SubmitJob(Box<JobRequest>, Caller, Answer<(JobView, bool)>),
    GetJob(JobId, Option<String>, Answer<JobView>),
    ListJobs(
        Option<String>,
        Option<JobId>,
        usize,
        Answer<(Vec<JobView>, bool)>,
    ),
    KillJob(JobId, Caller, Answer<JobView>),
    JobTasks(
        JobId,
        Option<String>,
        Option<TaskId>,
        usize,
        Answer<(Vec<Task>, bool)>,
    ),
}

/// A request and when it was made.
struct Stamped {
    at: Now,
    request: Request,
}

/// An answer worked out when its batch was applied, sent once the batch is durable.
enum Reply {
    Submit(Answer<(TaskId, bool)>, Result<(TaskId, bool), HostError>),
    Kill(Answer<Task>, Box<Result<Task, HostError>>),
    Register(Answer<u64>, Result<u64, HostError>),
    Attach(Answer<Commands>, Result<Commands, HostError>),
    Get(Answer<Task>, Box<Result<Task, HostError>>),
    List(Answer<(Vec<Task>, bool)>, (Vec<Task>, bool)),
    Watch(
        Answer<(Option<Task>, Subscription)>,
        Option<TaskId>,
        Option<String>,
        Box<Result<Option<Task>, HostError>>,
    ),
    Agents(Answer<Vec<AgentView>>, Vec<AgentView>),
    Partitions(Answer<Vec<Partition>>, Vec<Partition>),
    /// Any other answer: sends it, or the store's error when the batch's commit failed.
    Later(SendLater),
}

/// Sends an answer, given the batch's commit failure if any.
type SendLater = Box<dyn FnOnce(Option<&str>) + Send>;

/// An answer of [`Reply::Later`].
fn later<T: Send + 'static>(to: Answer<T>, result: Result<T, HostError>) -> Reply {
    Reply::Later(Box::new(move |failure| {
        drop(to.send(fail(result, failure)));
    }))
}

/// `r`, or the store's error when the batch's commit failed.
fn fail<T>(r: Result<T, HostError>, failure: Option<&str>) -> Result<T, HostError> {
    match failure {
        Some(message) => Err(HostError::Store(StoreError::Io(message.to_string()))),
        None => r,
    }
}

impl Reply {
    /// Sends the answer; when the batch's commit failed, the store's error instead.
    fn send(self, failure: Option<&str>, events: &Arc<Events>) {
        match self {
            Reply::Submit(to, r) => drop(to.send(fail(r, failure))),
            Reply::Kill(to, r) => drop(to.send(fail(*r, failure))),
            Reply::Register(to, r) => drop(to.send(fail(r, failure))),
            Reply::Attach(to, r) => drop(to.send(fail(r, failure))),
            Reply::Get(to, r) => drop(to.send(fail(*r, failure))),
            Reply::List(to, r) => drop(to.send(fail(Ok(r), failure))),
            // Subscribed now: the events of every batch up to this one are published.
            Reply::Watch(to, id, _, r) => {
                let r = fail(*r, failure).map(|current| (current, events.subscribe(id)));
                drop(to.send(r));
            }
            Reply::Agents(to, r) => drop(to.send(fail(Ok(r), failure))),
            Reply::Partitions(to, r) => drop(to.send(fail(Ok(r), failure))),
            Reply::Later(send) => send(failure),
        }
    }
}

/// The store while it serves; `None` while the actor reopens it after a failure.
type StoreSlot = Arc<RwLock<Option<Store>>>;

struct Shared {
    config: HostConfig,
    /// The tokens in force, as every call checks them.
    auth: Arc<Authenticator>,
    store: StoreSlot,
    /// Commits that failed since the host started.
    store_failures: Arc<AtomicU64>,
    requests: mpsc::Sender<Stamped>,
    /// Why the host stopped, once it has.
    stopped: watch::Receiver<Option<String>>,
    /// Where the actor publishes task changes.
    events: Arc<Events>,
    /// Bytes of inputs being received (declared sizes): counted against the disk's room.
    staging: Arc<AtomicU64>,
}

/// Room on the data dir's disk held for an upload being received; given back as its bytes
/// reach the disk (they are in the disk's free space then), and in all when dropped.
pub struct StagingRoom {
    staging: Arc<AtomicU64>,
    bytes: u64,
}

impl StagingRoom {
    /// `bytes` of the upload have reached the disk: their room is no longer held.
    pub fn written(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.staging.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Drop for StagingRoom {
    fn drop(&mut self) {
        self.staging.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The host's core. Cheap to clone; the actor stops when the last clone is dropped.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

/// Why a request got no answer: the actor is gone.
fn stopped() -> HostError {
    HostError::Unavailable("the host is stopping".into())
}

impl ControlPlane {
    /// Opens the store in `data_dir`, restores the state and starts the actor and the agent
    /// liveness check. Must be called inside a tokio runtime.
    pub fn start(config: HostConfig, data_dir: &Path) -> Result<Self, HostError> {
        config.validate().map_err(HostError::InvalidArgument)?;
        let (store, loaded) = Store::open(data_dir)?;
        let state = restore(&config, loaded);
        let auth = Arc::new(Authenticator::default());
        auth.install(state.tokens());
        let slot: StoreSlot = Arc::new(RwLock::new(Some(store.clone())));
        let store_failures = Arc::new(AtomicU64::new(0));
        let (requests, inbox) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(None);
        let events = Events::new(16_384);
        let staging = Arc::new(AtomicU64::new(0));
        let actor = Actor {
            staging: staging.clone(),
            state,
            store: Some(store),
            slot: slot.clone(),
            store_failures: store_failures.clone(),
            config: config.clone(),
            data_dir: data_dir.to_path_buf(),
            events: events.clone(),
            links: HashMap::new(),
            in_flight: VecDeque::new(),
            failed: None,
            free_space: FreeSpace::watch(data_dir, config.min_free_disk.as_u64()),
            pending_bytes: 0,
            batch_bytes: 0,
            reopen_pause: REOPEN_BACKOFF.0,
            reopened_at: None,
            last_session: 0,
            auth: auth.clone(),
        };
        let running = tokio::spawn(actor.run(inbox));
        // A panic in the actor (a broken invariant of the state machine) stops the host.
        tokio::spawn(async move {
            if let Err(e) = running.await {
                if e.is_panic() {
                    let reason = format!("the host's state machine failed ({e}): restart the host");
                    tracing::error!("{reason}");
                    let _ = stop.send(Some(reason));
                }
            }
        });
        let ticker = requests.downgrade();
        let period =
            (config.heartbeat_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(requests) = ticker.upgrade() else {
                    break;
                };
                let expire = Stamped {
                    at: Now::current(),
                    request: Request::Expire,
                };
                if requests.send(expire).await.is_err() {
                    break;
                }
            }
        });
        // Tokens' last uses and the refused calls go to the store every few seconds, in one
        // write at most, however many calls there were.
        let flusher = requests.downgrade();
        let counted = auth.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(USED_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(requests) = flusher.upgrade() else {
                    break;
                };
                let (used, refused) = (counted.used(), counted.take_refusals());
                if used.is_empty() && refused.is_empty() {
                    continue;
                }
                let flush = Stamped {
                    at: Now::current(),
                    request: Request::Used(used, refused),
                };
                if requests.send(flush).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            shared: Arc::new(Shared {
                auth,
                config,
                store: slot,
                store_failures,
                requests,
                stopped,
                events,
                staging,
            }),
        })
    }

    /// Tasks watched one by one now, each by one or more watches (for tests and metrics).
    pub fn watched_tasks(&self) -> usize {
        self.shared.events.watched_tasks()
    }

    /// Commits of the state store that failed since the host started (each followed by a
    /// recovery; see the module documentation).
    pub fn store_failures(&self) -> u64 {
        self.shared.store_failures.load(Ordering::SeqCst)
    }

    /// The store, unless it is being reopened after a failure.
    fn store(&self) -> Result<Store, HostError> {
        let slot = self.shared.store.read().unwrap_or_else(|e| e.into_inner());
        slot.clone().ok_or_else(|| {
            HostError::Unavailable(
                "the host's state store failed and is being reopened: try again shortly".into(),
            )
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    /// The tokens in force, for the services' gates.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.shared.auth.clone()
    }

    /// Resolves, with the reason, once the host has stopped serving (see the module
    /// documentation); never while it serves.
    pub async fn stopped(&self) -> String {
        let mut stopped = self.shared.stopped.clone();
        loop {
            if let Some(reason) = stopped.borrow_and_update().clone() {
                return reason;
            }
            if stopped.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn ask<T>(&self, request: impl FnOnce(Answer<T>) -> Request) -> Result<T, HostError> {
        let (answer, answered) = oneshot::channel();
        self.tell(request(answer)).await;
        answered.await.map_err(|_| stopped())?
    }

    async fn tell(&self, request: Request) {
        let stamped = Stamped {
            at: Now::current(),
            request,
        };
        // Only fails when the actor is gone, and then nothing is listening anyway.
        let _ = self.shared.requests.send(stamped).await;
    }

    // ----- modules ------------------------------------------------------------------------

    /// Admits (the same check the sandbox makes, without compiling, on a blocking thread: a
    /// large module takes a while) and stores a module. Answers its sha256, size and whether
    /// it was already there.
    pub async fn upload_module(&self, bytes: Vec<u8>) -> Result<(String, u64, bool), HostError> {
        self.upload_module_as(bytes, &Caller::admin()).await
    }

    /// [`ControlPlane::upload_module`] by `caller`: a tenant's upload makes the module its
    /// own, and `existed` says whether that tenant had it (never whether another does).
    pub async fn upload_module_as(
        &self,
        bytes: Vec<u8>,
        caller: &Caller,
    ) -> Result<(String, u64, bool), HostError> {
        let policy = corral_admission::Policy {
            max_module_bytes: self.shared.config.max_module_size.as_u64(),
        };
        let admitted = tokio::task::spawn_blocking(move || {
            corral_admission::admit(&bytes, &policy)
                .map(|a| (a.sha256_hex(), a.imports, a.binary.into_owned()))
        })
        .await
        .map_err(|e| HostError::Unavailable(format!("admitting the module failed: {e}")))?;
        let (sha, imports, binary) = admitted.map_err(HostError::Refused)?;
        let size = binary.len() as u64;
        let facts = ModuleFacts { size, imports };
        // Written by the actor, in order with every other write: a module it removes and one
        // uploaded again cannot pass each other on the way to the disk.
        let bytes = Bytes::from(binary);
        let tenant = caller.tenant.clone();
        let (new, had) = self
            .ask(|answer| Request::ModuleStored(sha.clone(), bytes, facts, tenant, answer))
            .await?;
        if new {
            tracing::info!(sha256 = %sha, size, "module stored");
        }
        Ok((sha, size, had))
    }

    /// A module's binary for agent `agent_id`: only a module of a task placed on it.
    pub async fn module_for(&self, agent_id: &str, sha256: &str) -> Result<Bytes, HostError> {
        let launched = self
            .ask(|answer| Request::MayFetch(agent_id.to_string(), sha256.to_string(), answer))
            .await?;
        if !launched {
            return Err(HostError::PermissionDenied(format!(
                "agent {agent_id} runs no task of module {sha256}: an agent fetches only the \
                 modules of tasks launched to it"
            )));
        }
        self.module(sha256)
    }

    // ----- inputs ---------------------------------------------------------------------------

    /// Whether `caller` may upload `size` bytes (of `sha256`, when it says): refused past its
    /// tenant's storage limit or the disk's room; the stored size when it has these bytes
    /// already.
    pub async fn input_room(
        &self,
        caller: &Caller,
        sha256: Option<&str>,
        size: u64,
    ) -> Result<Option<u64>, HostError> {
        let (tenant, sha) = (caller.tenant.clone(), sha256.map(str::to_string));
        self.ask(|answer| Request::InputRoom(tenant, sha, size, answer))
            .await
    }

    /// Holds `bytes` of the disk's room for an upload being received, until dropped.
    pub fn hold_staging_room(&self, bytes: u64) -> StagingRoom {
        self.shared.staging.fetch_add(bytes, Ordering::Relaxed);
        StagingRoom {
            staging: self.shared.staging.clone(),
            bytes,
        }
    }

    /// A new file to receive an upload into, in the store's staging directory (on a blocking
    /// thread).
    pub async fn stage_input(&self) -> Result<(crate::store::Staged, std::fs::File), HostError> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || store.stage())
            .await
            .map_err(|e| HostError::Unavailable(e.to_string()))?
            .map_err(|e| HostError::Unavailable(format!("the host cannot stage the input: {e}")))
    }

    /// Copy `generation` of input `sha256` was found damaged: it is forgotten (unless
    /// another copy is stored since), so that the next upload stores it again.
    pub async fn input_damaged(&self, sha256: &str, generation: u64) {
        self.tell(Request::InputDamaged(sha256.to_string(), generation))
            .await;
    }

    /// Stores an input received into `staged` (its bytes verified to hash to `sha256`,
    /// synced) for `caller`, and answers once that is durable: (whether the file was taken,
    /// as new; whether the caller had it). The file is the actor's from the moment this is
    /// asked, so that a caller gone meanwhile cannot remove it under the store's write.
    pub async fn input_received(
        &self,
        caller: &Caller,
        sha256: &str,
        size: u64,
        staged: crate::store::Staged,
    ) -> Result<(bool, bool), HostError> {
        let (tenant, sha) = (caller.tenant.clone(), sha256.to_string());
        let (new, had) = self
            .ask(|answer| Request::InputStored(sha, size, tenant, staged, answer))
            .await?;
        if new {
            tracing::info!(sha256, size, "input stored");
        }
        Ok((new, had))
    }

    /// An input the caller may use.
    pub async fn input(
        &self,
        caller: &Caller,
        sha256: &str,
    ) -> Result<crate::state::InputView, HostError> {
        let (tenant, sha) = (caller.tenant.clone(), sha256.to_string());
        self.ask(|answer| Request::GetInput(sha, tenant, answer))
            .await
    }

    /// `tenant`'s inputs (every input for `None`).
    pub async fn inputs(
        &self,
        tenant: Option<String>,
    ) -> Result<crate::state::InputsView, HostError> {
        self.ask(|answer| Request::ListInputs(tenant, answer)).await
    }

    /// The file of input `sha256` for agent `agent_id`, and its copy's generation: only a
    /// stored input of a task placed on it.
    pub async fn input_for(
        &self,
        agent_id: &str,
        sha256: &str,
    ) -> Result<(std::path::PathBuf, u64), HostError> {
        let generation = self
            .ask(|answer| Request::MayFetchInput(agent_id.to_string(), sha256.to_string(), answer))
            .await?;
        let Some(generation) = generation else {
            return Err(HostError::PermissionDenied(format!(
                "agent {agent_id} runs no task mounting input {sha256}, or the host no longer \
                 has it (upload it again): an agent fetches only the stored inputs of tasks \
                 launched to it"
            )));
        };
        Ok((self.store()?.input_path(sha256), generation))
    }

    /// A stored module's binary.
    pub fn module(&self, sha256: &str) -> Result<Bytes, HostError> {
        self.store()?
            .module(sha256)?
            .ok_or_else(|| HostError::NotFound(format!("no module with sha256 {sha256}")))
    }

    // ----- tasks --------------------------------------------------------------------------

    /// Records a new task (or answers the one an idempotency key already names) and answers
    /// once it is durable: (id, whether it existed).
    pub async fn submit(
        &self,
        spec: TaskSpec,
        idempotency_key: Option<String>,
    ) -> Result<(TaskId, bool), HostError> {
        self.submit_as(spec, idempotency_key, &Caller::admin())
            .await
    }

    /// [`ControlPlane::submit`] by `caller`: a tenant runs only modules it uploaded (the spec's
    /// tenant is the caller's business, checked by the api).
    pub async fn submit_as(
        &self,
        spec: TaskSpec,
        idempotency_key: Option<String>,
        caller: &Caller,
    ) -> Result<(TaskId, bool), HostError> {
        let caller = caller.clone();
        self.ask(|answer| Request::Submit(spec, idempotency_key, caller, answer))
            .await
    }

    /// One task (with its stdin), as it is on disk.
    pub async fn get(&self, id: TaskId) -> Result<Task, HostError> {
        self.get_as(id, &Caller::admin()).await
    }

    /// [`ControlPlane::get`] by `caller`: another tenant's task is answered as one that does
    /// not exist.
    pub async fn get_as(&self, id: TaskId, caller: &Caller) -> Result<Task, HostError> {
        let tenant = caller.tenant.clone();
        self.ask(|answer| Request::Get(id, tenant, answer)).await
    }

    /// Tasks after `after` (exclusive) in id order that pass `filter`, at most `limit`, without
    /// stdin; and whether more remain.
    pub async fn list(
        &self,
        filter: &TaskFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<(Vec<Task>, bool), HostError> {
        self.ask(|answer| Request::List(filter.clone(), after, limit, answer))
            .await
    }

    /// Kills a task (see [`HostState::kill`]); answers once the change is durable.
    pub async fn kill(&self, id: TaskId) -> Result<Task, HostError> {
        self.kill_as(id, &Caller::admin()).await
    }

    /// [`ControlPlane::kill`] by `caller`, recorded in the audit log.
    pub async fn kill_as(&self, id: TaskId, caller: &Caller) -> Result<Task, HostError> {
        let caller = caller.clone();
        self.ask(|answer| Request::Kill(id, caller, answer)).await
    }

    // ----- jobs ---------------------------------------------------------------------------

    /// Records a job (see [`HostState::submit_job`]) by `caller`, or answers the one its
    /// idempotency key names, once it and all its tasks are durable, in one commit: (the job,
    /// whether it existed).
    pub async fn submit_job_as(
        &self,
        request: JobRequest,
        caller: &Caller,
    ) -> Result<(JobView, bool), HostError> {
        let caller = caller.clone();
        self.ask(|answer| Request::SubmitJob(Box::new(request), caller, answer))
            .await
    }

    /// A job, as `caller` may see it.
    pub async fn job_as(&self, id: JobId, caller: &Caller) -> Result<JobView, HostError> {
        let tenant = caller.tenant.clone();
        self.ask(|answer| Request::GetJob(id, tenant, answer)).await
    }

    /// Jobs after `after` in id order, of `tenant` (`None`: all), at most `limit`; and whether
    /// more remain.
    pub async fn list_jobs(
        &self,
        tenant: Option<String>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<(Vec<JobView>, bool), HostError> {
        self.ask(|answer| Request::ListJobs(tenant, after, limit, answer))
            .await
    }

    /// Kills a job's unended tasks (see [`HostState::kill_job`]), recorded in the audit log.
    pub async fn kill_job_as(&self, id: JobId, caller: &Caller) -> Result<JobView, HostError> {
        let caller = caller.clone();
        self.ask(|answer| Request::KillJob(id, caller, answer))
            .await
    }

    /// A job's tasks in index order after `after`, at most `limit`, as they are on disk,
    /// without stdin; and whether more remain.
    pub async fn job_tasks_as(
        &self,
        id: JobId,
        caller: &Caller,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<(Vec<Task>, bool), HostError> {
        let tenant = caller.tenant.clone();
        self.ask(|answer| Request::JobTasks(id, tenant, after, limit, answer))
            .await
    }

    /// The stored output of a task answered by [`ControlPlane::job_tasks_as`], read on a
    /// blocking thread; `None` when it has none.
    pub async fn stored_output(&self, id: TaskId) -> Result<Option<TaskOutput>, HostError> {
        let store = self.store()?;
        tokio::task::spawn_blocking(move || store.output(id))
            .await
            .map_err(|e| HostError::Unavailable(format!("reading an output failed: {e}")))?
            .map_err(HostError::from)
    }

    /// A task's stored output. Tasks that have not ended have none yet.
    pub async fn output(&self, id: TaskId) -> Result<TaskOutput, HostError> {
        self.output_as(id, &Caller::admin()).await
    }

    /// [`ControlPlane::output`] by `caller`.
    pub async fn output_as(&self, id: TaskId, caller: &Caller) -> Result<TaskOutput, HostError> {
        let task = self.get_as(id, caller).await?;
        if !task.state.is_terminal() {
            return Err(HostError::FailedPrecondition(format!(
                "task {id} has not ended ({}): its output is kept when it does",
                task.state
            )));
        }
        // The task's end, and its output, were durable before `get` answered.
        // Read before anything is awaited: no store handle is held across a wait.
        let stored = self.store()?.output(id)?;
        match stored {
            Some(output) => Ok(output),
            // Removed (past its retention) since `get` answered, or stored without one.
            None => self.get_as(id, caller).await.map(|_| TaskOutput::default()),
        }
    }

    /// Subscribes to task changes (every task's, or one task's); with `id`, also answers that
    /// task as it is now. No change falls between the two (see the module documentation).
    pub async fn watch(
        &self,
        id: Option<TaskId>,
    ) -> Result<(Option<Task>, Subscription), HostError> {
        self.watch_as(id, &Caller::admin()).await
    }

    /// [`ControlPlane::watch`] by `caller`: another tenant's task is answered as one that does
    /// not exist. (A tenant's watch of every task is filtered by the api.)
    pub async fn watch_as(
        &self,
        id: Option<TaskId>,
        caller: &Caller,
    ) -> Result<(Option<Task>, Subscription), HostError> {
        let tenant = caller.tenant.clone();
        self.ask(|answer| Request::Watch(id, tenant, answer)).await
    }

    // ----- tokens and the audit log -------------------------------------------------------

    /// Makes a token (its record durable before it is answered, and usable from then on).
    pub async fn create_token(
        &self,
        minted: Minted,
        caller: &Caller,
    ) -> Result<(TokenRecord, String), HostError> {
        let by = caller.accessor.clone();
        let record = self
            .ask(|answer| Request::CreateToken(minted.record, by, answer))
            .await?;
        Ok((record, minted.text))
    }

    /// Revokes a token: its calls are refused and its streams end once this is durable.
    pub async fn revoke_token(
        &self,
        accessor: &str,
        caller: &Caller,
    ) -> Result<TokenRecord, HostError> {
        let by = caller.accessor.clone();
        self.ask(|answer| Request::RevokeToken(accessor.to_string(), by, answer))
            .await
    }

    /// Every token, by accessor.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, HostError> {
        self.ask(Request::Tokens).await
    }

    // ----- tenants ------------------------------------------------------------------------

    /// Changes a tenant's settings (`None`: forgets what was set), recorded in the audit log;
    /// answers once durable, and the next scheduling round follows them.
    pub async fn set_tenant(
        &self,
        tenant: &str,
        change: Option<TenantChange>,
        caller: &Caller,
    ) -> Result<TenantView, HostError> {
        let (tenant, by) = (tenant.to_string(), caller.accessor.clone());
        self.ask(|answer| Request::SetTenant(tenant, change, by, answer))
            .await
    }

    /// Every tenant known (see [`HostState::tenants`]), or only `only`.
    pub async fn tenants(&self, only: Option<&str>) -> Result<Vec<TenantView>, HostError> {
        let only = only.map(str::to_string);
        self.ask(|answer| Request::Tenants(only, answer)).await
    }

    /// The first admin token of a host that has none (none was ever made), or, with `reset`,
    /// a new one that replaces every admin token: written to `path` (mode 0600; the file
    /// first, then the record, so that a token recorded is never one nobody has). Answers
    /// whether one was made.
    pub async fn bootstrap_admin(&self, path: &Path, reset: bool) -> Result<bool, HostError> {
        if !reset && !self.tokens().await?.is_empty() {
            return Ok(false);
        }
        let now = Now::current();
        let minted = crate::auth::mint(
            corral_proto::token::Role::Admin,
            "",
            "",
            0,
            now.ms,
            "the first admin token, made by the host",
        );
        corral_proto::token::write_secret(path, &minted.text).map_err(|e| {
            HostError::Unavailable(format!(
                "cannot write the admin token to {}: {e}",
                path.display()
            ))
        })?;
        let record = minted.record;
        if reset {
            self.ask(|answer| Request::ResetAdmin(record, answer))
                .await?;
        } else {
            self.ask(|answer| Request::CreateToken(record, String::new(), answer))
                .await?;
        }
        Ok(true)
    }

    /// Up to `limit` entries of the audit log after `after`, oldest first.
    pub fn audit(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::auth::AuditEntry>, HostError> {
        Ok(self.store()?.audit(after, limit)?)
    }

    /// Every agent, by id.
    pub async fn agents(&self) -> Result<Vec<AgentView>, HostError> {
        self.ask(Request::Agents).await
    }

    /// Every partition, by id.
    pub async fn partitions(&self) -> Result<Vec<Partition>, HostError> {
        self.ask(Request::Partitions).await
    }

    // ----- agents -------------------------------------------------------------------------

    /// Registers an agent (or one coming back) and reconciles it (see
    /// [`HostState::register`]). Answers its session once durable.
    pub async fn register(
        &self,
        info: AgentInfo,
        running: Vec<Attempt>,
        unacknowledged: Vec<Attempt>,
    ) -> Result<u64, HostError> {
        self.register_as(info, running, unacknowledged, "").await
    }

    /// [`ControlPlane::register`] of an agent with its own credential, `by` (the api has
    /// checked that the credential is that agent's).
    pub async fn register_as(
        &self,
        info: AgentInfo,
        running: Vec<Attempt>,
        unacknowledged: Vec<Attempt>,
        by: &str,
    ) -> Result<u64, HostError> {
        let registrant = Registrant {
            by: by.to_string(),
            credential: None,
        };
        self.ask(|answer| Request::Register(info, running, unacknowledged, registrant, answer))
            .await
    }

    /// Registers a new agent that came with join token `by`: refused when its id belongs to
    /// an agent with a credential; otherwise answers its session and its own credential, both
    /// durable.
    pub async fn join(
        &self,
        info: AgentInfo,
        running: Vec<Attempt>,
        unacknowledged: Vec<Attempt>,
        by: &str,
    ) -> Result<(u64, String), HostError> {
        let mut minted = crate::auth::mint(
            corral_proto::token::Role::Agent,
            "",
            &info.id,
            0,
            Now::current().ms,
            "an agent's credential, made when it joined",
        );
        minted.record.issued_by = by.to_string();
        let registrant = Registrant {
            by: by.to_string(),
            credential: Some(minted.record),
        };
        let session = self
            .ask(|answer| Request::Register(info, running, unacknowledged, registrant, answer))
            .await?;
        Ok((session, minted.text))
    }

    /// Opens an agent's command channel for its registered session.
    pub async fn attach(&self, agent_id: &str, session: u64) -> Result<Commands, HostError> {
        self.attach_as(agent_id, session, "").await
    }

    /// [`ControlPlane::attach`] with credential `by`, whose first use is recorded.
    pub async fn attach_as(
        &self,
        agent_id: &str,
        session: u64,
        by: &str,
    ) -> Result<Commands, HostError> {
        let by = by.to_string();
        self.ask(|answer| Request::Attach(agent_id.to_string(), session, by, answer))
            .await
    }

    /// A heartbeat, counted from now. Not answered: when the session is not current, the
    /// agent's command stream ends (if it is still open), and the agent registers again.
    pub async fn heartbeat(&self, agent_id: &str, session: u64) {
        self.tell(Request::Heartbeat(agent_id.to_string(), session))
            .await;
    }

    /// The agent's stream of `session` ended.
    pub async fn detach(&self, agent_id: &str, session: u64) {
        self.tell(Request::Detach(agent_id.to_string(), session))
            .await;
    }

    /// An agent's report on one attempt (see [`HostState::report`]). A final report is
    /// acknowledged through the agent's channel once it is durable.
    pub async fn report(
        &self,
        agent_id: &str,
        session: u64,
        attempt: Attempt,
        report: StatusReport,
    ) {
        self.tell(Request::Report(
            agent_id.to_string(),
            session,
            attempt,
            report,
        ))
        .await;
    }

    /// Makes the store's next `n` commits fail, as a full or failing disk would: for tests of
    /// what the host does then.
    #[doc(hidden)]
    pub fn inject_store_failures(&self, n: u32) {
        if let Ok(store) = self.store() {
            store.fail_next_commits(n);
        }
    }

    /// Makes the store's next commit take `delay` longer, as a slow disk would: for tests.
    #[doc(hidden)]
    pub fn inject_store_delay(&self, delay: Duration) {
        if let Ok(store) = self.store() {
            store.delay_next_commit(delay);
        }
    }
}

/// About what a task's record takes on disk, with its idempotency key.
fn stored_size(spec: &TaskSpec, key: Option<&str>) -> u64 {
    spec.stored_bytes() + key.map_or(0, |k| k.len() as u64)
}

/// A batch applied to the state, waiting for its writes to be durable.
struct InFlight {
    /// `None` when it wrote nothing.
    commit: Option<Commit>,
    effects: Effects,
    replies: Vec<Reply>,
    /// Bytes of new tasks and modules it accepted (see [`FreeSpace`]).
    room: u64,
}

/// The task that owns the state and applies requests in batches; see the module
/// documentation.
struct Actor {
    state: HostState,
    /// `None` from a failed commit until the store is reopened.
    store: Option<Store>,
    /// The store as the control plane's readers see it.
    slot: StoreSlot,
    store_failures: Arc<AtomicU64>,
    config: HostConfig,
    data_dir: PathBuf,
    events: Arc<Events>,
    links: HashMap<String, Link>,
    in_flight: VecDeque<InFlight>,
    /// Why the store failed, while it is being reopened: every request is refused.
    failed: Option<String>,
    /// The room kept on the data dir's disk.
    free_space: FreeSpace,
    /// Bytes of new tasks and modules accepted in batches not yet durable.
    pending_bytes: u64,
    /// Bytes of inputs being received (`Shared::staging`).
    staging: Arc<AtomicU64>,
    /// The same, in the batch being applied.
    batch_bytes: u64,
    /// The pause before the next attempt to reopen the store. It grows with each attempt and
    /// with each failure soon after a reopening, and starts again once a commit succeeds, or
    /// the store fails, [`STEADY_AFTER_REOPEN`] after the last reopening.
    reopen_pause: Duration,
    /// When the store was last reopened.
    reopened_at: Option<std::time::Instant>,
    /// The last agent session handed out before the store failed: sessions go on from it, so
    /// that a stream of a session before the failure never passes for a new one.
    last_session: u64,
    /// Told of token changes once they are durable.
    auth: Arc<Authenticator>,
}

/// An attempt to reopen the store, after a pause.
type Reopening = Pin<Box<dyn Future<Output = Result<(Store, Loaded), StoreError>> + Send>>;

/// The state a store held, as the host serves it from.
fn restore(config: &HostConfig, loaded: Loaded) -> HostState {
    let state = HostState::restore(config, loaded, Now::current());
    tracing::info!(
        tasks = state.tasks().count(),
        pending = state.pending().count(),
        agents = state.agents().len(),
        "state restored"
    );
    state
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Stamped>) {
        let mut batch = Vec::new();
        let mut open = true;
        let mut reopening: Option<Reopening> = None;
        while open || !self.in_flight.is_empty() {
            // Finish, in order, the batches whose writes are durable.
            self.finish_durable();
            if self.failed.is_some() && reopening.is_none() {
                let pause = self.reopen_pause;
                reopening = Some(reopen_after(pause, self.data_dir.clone()));
                self.reopen_pause = (pause * 2).min(REOPEN_BACKOFF.1);
            }
            let room = open && self.in_flight.len() < MAX_IN_FLIGHT;
            let head = self.in_flight.front_mut().and_then(|b| b.commit.as_mut());
            let waiting = head.is_some();
            tokio::select! {
                opened = async { reopening.as_mut().expect("guarded").await },
                    if reopening.is_some() =>
                {
                    reopening = None;
                    match opened {
                        Ok((store, loaded)) => self.recovered(store, loaded),
                        Err(e) => tracing::warn!(
                            error = %e,
                            retry_in = ?self.reopen_pause,
                            "the state store cannot be reopened yet"
                        ),
                    }
                }
                n = inbox.recv_many(&mut batch, MAX_BATCH), if room => {
                    if n == 0 {
                        open = false;
                        continue;
                    }
                    self.apply_batch(&mut batch);
                }
                durable = async { head.expect("guarded by `waiting`").await }, if waiting => {
                    let finished = self.in_flight.pop_front().expect("there is a head");
                    match durable {
                        Ok(()) => self.finish(finished, None),
                        Err(e) => self.halt(finished, &e.detail()),
                    }
                }
            }
        }
    }

    /// Applies a batch of requests, then one scheduling round, and hands its writes to the
    /// store.
    fn apply_batch(&mut self, batch: &mut Vec<Stamped>) {
        if let Some(reason) = self.failed.clone() {
            for stamped in batch.drain(..) {
                refuse(stamped.request, &reason);
            }
            return;
        }
        let mut effects = Effects::default();
        let mut replies = Vec::with_capacity(batch.len());
        self.batch_bytes = 0;
        for Stamped { at, request } in batch.drain(..) {
            self.apply(request, at, &mut effects, &mut replies);
        }
        self.state.schedule(Now::current(), &mut effects);
        // A watch answers the task as the whole batch leaves it: it subscribes once the
        // batch's events are published, so an event of this batch applied after the watch
        // must already show in what it answers.
        for reply in &mut replies {
            if let Reply::Watch(_, Some(id), tenant, current) = reply {
                **current = self
                    .state
                    .get_as(*id, tenant.as_deref())
                    .map(|t| Some(public(t)));
            }
        }
        let store = self.store.as_ref().expect("a store while serving");
        let commit =
            (!effects.writes.is_empty()).then(|| store.write(std::mem::take(&mut effects.writes)));
        self.in_flight.push_back(InFlight {
            commit,
            effects,
            replies,
            room: self.batch_bytes,
        });
        self.pending_bytes += self.batch_bytes;
    }

    /// Applies one request to the state, recording its effects and its answer.
    fn apply(&mut self, request: Request, now: Now, fx: &mut Effects, replies: &mut Vec<Reply>) {
        let state = &mut self.state;
        match request {
            Request::Submit(spec, key, caller, answer) => {
                // A retry of a task that exists writes nothing: never refused for room.
                let retry = key
                    .as_deref()
                    .is_some_and(|k| state.names_task(&spec.tenant, k));
                let size = stored_size(&spec, key.as_deref());
                let pending =
                    self.pending_bytes + self.batch_bytes + self.staging.load(Ordering::Relaxed);
                let room = if !retry && !state.may_use_module(&spec.module_sha256, caller.scope()) {
                    // Another tenant's module is answered as one that is not stored.
                    Err(crate::state::unknown_module(&spec.module_sha256))
                } else if retry {
                    Ok(())
                } else {
                    // And another tenant's input as one that is not stored.
                    state
                        .check_inputs(&spec.inputs, caller.scope())
                        .and_then(|()| self.free_space.check(pending, size, "task"))
                };
                // A tenant's own token is held to its policy; an admin's is not.
                let policy = match (&caller.tenant, retry) {
                    (Some(_), false) => state
                        .tenant_settings(&spec.tenant)
                        .0
                        .check_task(&spec.tenant, &spec.limits)
                        .map_err(HostError::FailedPrecondition)
                        .and_then(|()| {
                            state.check_module_policy(&spec.tenant, &spec.module_sha256)
                        }),
                    _ => Ok(()),
                };
                let result = room
                    .and(policy)
                    .and_then(|()| state.submit(spec, key, now, fx));
                if matches!(result, Ok((_, false))) {
                    self.batch_bytes += size;
                }
                replies.push(Reply::Submit(answer, result));
            }
            Request::SubmitJob(request, caller, answer) => {
                let template = &request.template;
                let pending =
                    self.pending_bytes + self.batch_bytes + self.staging.load(Ordering::Relaxed);
                // A retry of a job that exists makes nothing: answered as it is.
                let retry = request
                    .idempotency_key
                    .as_deref()
                    .is_some_and(|k| state.names_job(&template.tenant, k));
                let known =
                    match retry || state.may_use_module(&template.module_sha256, caller.scope()) {
                        false => Err(crate::state::unknown_module(&template.module_sha256)),
                        true if retry => Ok(()),
                        true => state.check_inputs(&template.inputs, caller.scope()),
                    };
                let policy = match (&caller.tenant, retry) {
                    (Some(_), false) => state
                        .tenant_settings(&template.tenant)
                        .0
                        .check_task(&template.tenant, &template.limits)
                        .map_err(HostError::FailedPrecondition)
                        .and_then(|()| {
                            state.check_module_policy(&template.tenant, &template.module_sha256)
                        }),
                    _ => Ok(()),
                };
                // The room is checked once the job's tasks are made, for what they take.
                let free_space = &mut self.free_space;
                let room = |size: u64| free_space.check(pending, size, "job");
                let result = known
                    .and(policy)
                    .and_then(|()| state.submit_job(*request, room, now, fx));
                if let Ok(made) = &result {
                    self.batch_bytes += made.stored_bytes;
                }
                replies.push(later(answer, result.map(|m| (m.view, m.existed))));
            }
            Request::GetJob(id, tenant, answer) => {
                replies.push(later(answer, state.job(id, tenant.as_deref())));
            }
            Request::ListJobs(tenant, after, limit, answer) => {
                let listed = state.list_jobs(tenant.as_deref(), after, limit);
                replies.push(later(answer, Ok(listed)));
            }
            Request::KillJob(id, caller, answer) => {
                let result = state.kill_job(id, caller.scope(), now, fx);
                if let Ok(view) = &result {
                    let detail = format!("job {id} of tenant {}", view.job.tenant);
                    state.audit("job.kill", &caller.accessor, detail, 1, now, fx);
                }
                replies.push(later(answer, result));
            }
            Request::JobTasks(id, tenant, after, limit, answer) => {
                let page = state.job_tasks(id, tenant.as_deref(), after, limit);
                replies.push(later(answer, page));
            }
            Request::Kill(id, caller, answer) => {
                let result = state.get_as(id, caller.scope()).map(|_| ()).and_then(|()| {
                    let task = state.kill(id, now, fx)?;
                    state.audit_kill(&task, &caller.accessor, now, fx);
                    Ok(task)
                });
                replies.push(Reply::Kill(answer, Box::new(result)));
            }
            Request::ModuleStored(sha, bytes, facts, tenant, answer) => {
                // A module stored already writes nothing: never refused for room.
                let size = bytes.len() as u64;
                let pending =
                    self.pending_bytes + self.batch_bytes + self.staging.load(Ordering::Relaxed);
                // A tenant's upload is held to its policy (as its submits are): a module it
                // may not run is not kept for it.
                let policy = tenant.as_deref().map_or(Ok(()), |t| {
                    state
                        .tenant_settings(t)
                        .0
                        .check_module(t, &sha, facts.size, facts.imports)
                        .map_err(HostError::FailedPrecondition)
                });
                let room = match state.has_module(&sha) {
                    true => Ok(()),
                    false => self.free_space.check(pending, size, "module"),
                };
                let result = policy
                    .and(room)
                    .map(|()| state.module_uploaded(&sha, facts, tenant.as_deref(), now, fx));
                if let Ok((true, _)) = result {
                    fx.writes.push(Write::Module(sha, bytes, facts));
                    self.batch_bytes += size;
                }
                replies.push(later(answer, result));
            }
            Request::Register(info, running, unacknowledged, registrant, answer) => {
                let id = info.id.clone();
                let joining = registrant.credential.is_some();
                let auth = &self.auth;
                let joined = match joining {
                    true => state.may_join(&id, &registrant.by, |t| auth.last_used(t) != 0, now),
                    false => Ok(None),
                };
                let (result, retire) = match joined {
                    Err(error) => {
                        // Counted like the gate's refusals: never a write per refused call.
                        self.auth.count_refusal("join refused", &registrant.by);
                        (Err(error), None)
                    }
                    Ok(retire) => (
                        state.register(info, &running, &unacknowledged, now, fx),
                        retire,
                    ),
                };
                if result.is_ok() {
                    // Its old stream, if any, ends.
                    self.links.remove(&id);
                    tracing::info!(agent_id = %id, "agent registered");
                    match registrant.credential {
                        Some(credential) => {
                            state.claim_agent(&id, credential, retire, &registrant.by, now, fx);
                        }
                        None => state.audit(
                            "agent.register",
                            &registrant.by,
                            format!("agent {id}"),
                            1,
                            now,
                            fx,
                        ),
                    }
                }
                replies.push(Reply::Register(answer, result));
            }
            Request::Attach(agent, session, by, answer) => {
                let result = state.attach(&agent, session, now, fx).map(|()| {
                    state.credential_used(&by, now, fx);
                    let (commands, receiver) = mpsc::unbounded_channel();
                    self.links.insert(agent.clone(), Link { session, commands });
                    tracing::info!(agent_id = %agent, session, "agent attached");
                    receiver
                });
                replies.push(Reply::Attach(answer, result));
            }
            Request::Heartbeat(agent, session) => {
                if !state.heartbeat(&agent, session, now)
                    && self.links.get(&agent).is_some_and(|l| l.session == session)
                {
                    // Its session is over (it was lost): end its stream, it registers again.
                    self.links.remove(&agent);
                }
            }
            Request::Detach(agent, session) => {
                state.detach(&agent, session);
                if self.links.get(&agent).is_some_and(|l| l.session == session) {
                    self.links.remove(&agent);
                    tracing::warn!(agent_id = %agent, "agent disconnected");
                }
            }
            Request::Report(agent, session, attempt, report) => {
                state.report(&agent, session, attempt, report, now, fx);
            }
            Request::Expire => {
                for agent in state.expire(now, fx) {
                    tracing::warn!(agent_id = %agent, "agent lost: silent past the heartbeat timeout");
                    self.links.remove(&agent);
                }
                let collected = state.collect(now, fx);
                if collected.tasks + collected.modules > 0 {
                    tracing::info!(
                        tasks = collected.tasks,
                        modules = collected.modules,
                        "removed what is past its retention"
                    );
                }
            }
            Request::Get(id, tenant, answer) => {
                let task = state
                    .get_as(id, tenant.as_deref())
                    .cloned()
                    .map(|mut task| {
                        state.explain(std::slice::from_mut(&mut task), now);
                        task
                    });
                replies.push(Reply::Get(answer, Box::new(task)));
            }
            Request::List(filter, after, limit, answer) => {
                replies.push(Reply::List(answer, state.list(&filter, after, limit, now)));
            }
            // Its task is read once the whole batch is applied (`apply_batch`).
            Request::Watch(id, tenant, answer) => {
                replies.push(Reply::Watch(answer, id, tenant, Box::new(Ok(None))))
            }
            Request::Agents(answer) => replies.push(Reply::Agents(answer, state.agents())),
            Request::Partitions(answer) => {
                let partitions = state.partitions().cloned().collect();
                replies.push(Reply::Partitions(answer, partitions));
            }
            Request::CreateToken(record, by, answer) => {
                state.create_token(record.clone(), &by, now, fx);
                replies.push(later(answer, Ok(record)));
            }
            Request::RevokeToken(accessor, by, answer) => {
                let result = state.revoke_token(&accessor, &by, now, fx);
                replies.push(later(answer, result));
            }
            Request::ResetAdmin(record, answer) => {
                state.reset_admin(record, now, fx);
                replies.push(later(answer, Ok(())));
            }
            Request::Tokens(answer) => {
                replies.push(later(answer, Ok(state.tokens().cloned().collect())));
            }
            Request::SetTenant(tenant, change, by, answer) => {
                let detail = match &change {
                    Some(change) => format!("{tenant}: {}", change.describe()),
                    None => format!("{tenant}: reset"),
                };
                let result = state.set_tenant(&tenant, change, now, fx);
                if result.is_ok() {
                    state.audit("tenant.set", &by, detail, 1, now, fx);
                }
                replies.push(later(answer, result));
            }
            Request::Tenants(only, answer) => {
                replies.push(later(answer, Ok(state.tenants(only.as_deref(), now))));
            }
            Request::Used(used, refused) => {
                state.tokens_used(&used, fx);
                for ((kind, accessor), count) in refused {
                    state.audit("auth.refused", &accessor, kind, count, now, fx);
                }
            }
            Request::MayFetch(agent, sha, answer) => {
                replies.push(later(answer, Ok(state.launched_module(&agent, &sha))));
            }
            Request::MayFetchInput(agent, sha, answer) => {
                replies.push(later(answer, Ok(state.input_fetch(&agent, &sha))));
            }
            Request::InputRoom(tenant, sha, size, answer) => {
                // The caller holds its own room already (`StagingRoom`): the others' count.
                let staging = self.staging.load(Ordering::Relaxed).saturating_sub(size);
                let pending = self.pending_bytes + self.batch_bytes + staging;
                let result = state
                    .input_room(tenant.as_deref(), sha.as_deref(), size)
                    .and_then(|had| match (had, &sha) {
                        (Some(stored), Some(sha)) => {
                            // An upload of what the caller has counts as a use of it.
                            state.input_used(sha, tenant.as_deref(), now);
                            Ok(Some(stored))
                        }
                        _ => self.free_space.check(pending, size, "input").map(|()| None),
                    });
                replies.push(later(answer, result));
            }
            Request::InputStored(sha, size, tenant, staged, answer) => {
                // Its bytes are on the disk already (staged): only its records are to write.
                // The file is the store's from here: renamed in by the write, or removed.
                let result = state.input_uploaded(&sha, size, tenant.as_deref(), now, fx);
                if let Ok((true, _)) = result {
                    fx.writes.push(Write::Input(sha, size, staged.take()));
                }
                replies.push(later(answer, result));
            }
            Request::InputDamaged(sha, generation) => state.input_damaged(&sha, generation, fx),
            Request::GetInput(sha, tenant, answer) => {
                replies.push(later(answer, state.input(&sha, tenant.as_deref(), now)));
            }
            Request::ListInputs(tenant, answer) => {
                replies.push(later(answer, Ok(state.list_inputs(tenant.as_deref()))));
            }
        }
    }

    /// Finishes the batches at the head whose writes are already durable (or that wrote
    /// nothing), in order.
    fn finish_durable(&mut self) {
        while let Some(head) = self.in_flight.front_mut() {
            let durable = match head.commit.as_mut() {
                None => Ok(()),
                Some(commit) => match poll_now(commit) {
                    Some(result) => result,
                    None => return,
                },
            };
            let finished = self.in_flight.pop_front().expect("there is a head");
            match durable {
                Ok(()) => self.finish(finished, None),
                Err(e) => self.halt(finished, &e.detail()),
            }
        }
    }

    /// Sends a durable batch's commands, publishes its events, and answers its callers.
    fn finish(&mut self, batch: InFlight, failure: Option<&str>) {
        self.pending_bytes = self.pending_bytes.saturating_sub(batch.room);
        let steady = self
            .reopened_at
            .is_none_or(|at| at.elapsed() >= STEADY_AFTER_REOPEN);
        if failure.is_none() && batch.commit.is_some() && steady {
            self.reopen_pause = REOPEN_BACKOFF.0;
        }
        if failure.is_none() {
            for (agent, command) in batch.effects.commands {
                if let Some(link) = self.links.get(&agent) {
                    let _ = link.commands.send(command);
                }
            }
            for event in batch.effects.events {
                if event.state == TaskState::Lost {
                    tracing::warn!(task_id = %event.id, reason = %event.reason, "attempt lost");
                }
                self.events.publish(event);
            }
            for token in batch.effects.tokens {
                // A revoked agent's stream ends now; it cannot register again.
                if token.is_credential()
                    && token.revoked_ms != 0
                    && self.links.remove(&token.agent_id).is_some()
                {
                    tracing::warn!(agent_id = %token.agent_id, "agent's credential revoked: its session ends");
                }
                self.auth.put(token);
            }
        }
        for reply in batch.replies {
            reply.send(failure, &self.events);
        }
    }

    /// A commit failed: the host recovers (see the module documentation). Nothing of this
    /// batch or of the ones applied after it goes out; their callers get the error.
    fn halt(&mut self, failed: InFlight, error: &str) {
        self.links.clear();
        let reason = format!(
            "the host's state store failed ({error}); nothing since was kept, and the host \
             serves again once it can reopen the store"
        );
        tracing::error!("{reason}");
        self.store_failures.fetch_add(1, Ordering::SeqCst);
        // A failure long after the last reopening starts a new outage: from the first pause.
        if self
            .reopened_at
            .is_none_or(|at| at.elapsed() >= STEADY_AFTER_REOPEN)
        {
            self.reopen_pause = REOPEN_BACKOFF.0;
        }
        self.failed = Some(reason);
        self.finish(failed, Some(error));
        while let Some(later) = self.in_flight.pop_front() {
            self.finish(later, Some(error));
        }
        // The store is reopened once every handle on it is gone. Dropping the last one joins
        // its writer thread, so it is dropped off the actor, and outside the slot's lock.
        let shared = self.slot.write().unwrap_or_else(|e| e.into_inner()).take();
        let own = self.store.take();
        tokio::task::spawn_blocking(move || drop((shared, own)));
        self.last_session = self.state.last_session();
        self.state = HostState::new(&self.config);
    }

    /// The store reopened: serve again from what it holds.
    fn recovered(&mut self, store: Store, loaded: Loaded) {
        self.state = restore(&self.config, loaded);
        self.state.continue_sessions_after(self.last_session);
        self.auth.install(self.state.tokens());
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
        self.store = Some(store);
        self.failed = None;
        self.reopened_at = Some(std::time::Instant::now());
        tracing::warn!("the state store was reopened: the host serves again");
    }
}

/// Reopens the store after `pause`, on a blocking thread: reading it back takes a while.
fn reopen_after(pause: Duration, data_dir: PathBuf) -> Reopening {
    Box::pin(async move {
        tokio::time::sleep(pause).await;
        tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|e| StoreError::Io(format!("reopening the store failed: {e}")))?
    })
}

/// The commit's outcome if it is already known, without waiting.
fn poll_now(commit: &mut Commit) -> Option<Result<(), StoreError>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(commit).poll(&mut cx) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}

/// Answers a request the stopped host cannot take.
fn refuse(request: Request, reason: &str) {
    let error = || HostError::Unavailable(reason.to_string());
    match request {
        Request::Submit(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::Kill(_, _, answer) | Request::Get(_, _, answer) => drop(answer.send(Err(error()))),
        Request::Register(_, _, _, _, answer) => drop(answer.send(Err(error()))),
        Request::Attach(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::List(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::Watch(_, _, answer) => drop(answer.send(Err(error()))),
        Request::Agents(answer) => drop(answer.send(Err(error()))),
        Request::Partitions(answer) => drop(answer.send(Err(error()))),
        Request::ModuleStored(_, _, _, _, answer) => drop(answer.send(Err(error()))),
        Request::CreateToken(_, _, answer) | Request::RevokeToken(_, _, answer) => {
            drop(answer.send(Err(error())))
        }
        Request::ResetAdmin(_, answer) => drop(answer.send(Err(error()))),
        Request::Tokens(answer) => drop(answer.send(Err(error()))),
        Request::SetTenant(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::Tenants(_, answer) => drop(answer.send(Err(error()))),
        Request::MayFetch(_, _, answer) => drop(answer.send(Err(error()))),
        Request::MayFetchInput(_, _, answer) => drop(answer.send(Err(error()))),
        Request::InputRoom(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::InputStored(_, _, _, _, answer) => drop(answer.send(Err(error()))),
        Request::InputDamaged(..) => {}
        Request::GetInput(_, _, answer) => drop(answer.send(Err(error()))),
        Request::ListInputs(_, answer) => drop(answer.send(Err(error()))),
        Request::SubmitJob(_, _, answer) => drop(answer.send(Err(error()))),
        Request::GetJob(_, _, answer) | Request::KillJob(_, _, answer) => {
            drop(answer.send(Err(error())))
        }
        Request::ListJobs(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::JobTasks(_, _, _, _, answer) => drop(answer.send(Err(error()))),
        Request::Heartbeat(..)
        | Request::Detach(..)
        | Request::Report(..)
        | Request::Expire
        | Request::Used(..) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::partition::Resources;
    use crate::task::{OutcomeKind, OutcomeRecord};

    /// A watch and the final report of its task in one batch, the watch first: the watcher
    /// learns of the end, in what it is answered or in its first event.
    #[tokio::test]
    async fn a_watch_sees_an_end_applied_after_it_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let config = HostConfig::default();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let now = Now::current();
        let mut state = HostState::restore(&config, loaded, now);
        let mut fx = Effects::default();
        state.module_stored(&"0".repeat(64), ModuleFacts::default(), now);
        let info = AgentInfo {
            id: "a1".into(),
            address: String::new(),
            capacity: Resources {
                slots: 1,
                memory_bytes: 1 << 30,
            },
            labels: BTreeMap::new(),
            version: "test".into(),
        };
        let session = state.register(info, &[], &[], now, &mut fx).unwrap();
        state.attach("a1", session, now, &mut fx).unwrap();
        let spec = crate::convert::spec_from_pb(
            corral_proto::pb::TaskSpec {
                module_sha256: "0".repeat(64),
                ..Default::default()
            },
            &config,
        )
        .unwrap();
        let (id, _) = state.submit(spec, None, now, &mut fx).unwrap();
        state.schedule(now, &mut fx);
        let attempt = Attempt {
            task_id: id,
            attempt: 1,
        };
        let running = StatusReport {
            state: Some(TaskState::Running),
            ..Default::default()
        };
        state.report("a1", session, attempt.clone(), running, now, &mut fx);
        store
            .write(std::mem::take(&mut fx.writes))
            .durable()
            .await
            .unwrap();

        let mut actor = Actor {
            state,
            store: Some(store.clone()),
            slot: Arc::new(RwLock::new(Some(store))),
            store_failures: Arc::new(AtomicU64::new(0)),
            config,
            data_dir: dir.path().to_path_buf(),
            events: Events::new(16),
            links: HashMap::new(),
            in_flight: VecDeque::new(),
            failed: None,
            free_space: FreeSpace::fixed(u64::MAX, 0),
            staging: Arc::default(),
            pending_bytes: 0,
            batch_bytes: 0,
            reopen_pause: REOPEN_BACKOFF.0,
            reopened_at: None,
            last_session: 0,
            auth: Arc::new(Authenticator::default()),
        };
        let (answer, answered) = oneshot::channel();
        let finished = StatusReport {
            state: Some(TaskState::Finished),
            outcome: Some(OutcomeRecord {
                kind: OutcomeKind::Success,
                exit_code: 0,
                message: String::new(),
            }),
            ..Default::default()
        };
        let mut batch = vec![
            Stamped {
                at: now,
                request: Request::Watch(Some(id), None, answer),
            },
            Stamped {
                at: now,
                request: Request::Report("a1".into(), session, attempt, finished),
            },
        ];
        actor.apply_batch(&mut batch);
        let mut head = actor.in_flight.pop_front().unwrap();
        head.commit.as_mut().unwrap().await.unwrap();
        actor.finish(head, None);
        let (current, mut events) = answered.await.unwrap().unwrap();
        let ended = match current {
            Some(task) if task.state.is_terminal() => task,
            _ => (*tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("the end reaches the watcher")
                .unwrap())
            .clone(),
        };
        assert_eq!(ended.state, TaskState::Finished);
    }
}
