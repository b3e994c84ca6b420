//! The control plane: the actor that owns the host's [`HostState`] and does its I/O.
//!
//! Every change (a submit, a kill, an agent's registration, attach, heartbeat or report, the
//! liveness check) is a request to one actor task. The actor takes every request waiting, and
//! under the state's write lock applies them to the [`HostState`] in order, runs one scheduling
//! round, and commits the batch's store writes in one transaction, still holding the lock.
//! Only once the commit is durable does it send the batch's agent commands, publish its task
//! events and answer its callers. If the commit fails, nothing of the batch went out: the
//! state is rebuilt from disk as a restarting host would (agents' sessions end, so they
//! register again and are reconciled) and every caller of the batch gets the store's error.
//! Readers (get, list, watch, output, agents, partitions) take the read lock, so they never see
//! a change that is not on disk.
//!
//! Requests queued while a batch commits form the next batch: one fsync covers them all. Each
//! request carries the time it was made, and the state machine is given that time, so a batch
//! delayed behind a slow commit does not count the delay against the agents: a heartbeat
//! counts from when it arrived, and a liveness check from when its tick fired.
//!
//! If the actor panics, or the store fails and cannot be read back, the host stops: every
//! request, reads included, is refused, and [`ControlPlane::stopped`] resolves so that the
//! process can exit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, RwLock};

use crate::config::HostConfig;
use crate::error::HostError;
use crate::events::{Events, Subscription};
use crate::partition::Partition;
use crate::registry::AgentInfo;
use crate::state::{AgentCommand, AgentView, Effects, HostState, Now, StatusReport, TaskFilter};
use crate::store::{Store, StoreError, Write};
use crate::task::{Attempt, Task, TaskId, TaskOutput, TaskSpec, TaskState};

/// Most requests applied in one batch.
const MAX_BATCH: usize = 4096;
/// Requests that may wait for the actor before callers wait to queue more.
const QUEUE: usize = 65_536;

/// The actor's state: the host's, or why it stopped.
struct Core {
    state: HostState,
    /// Set when the store failed and the state could not be read back: every change is refused.
    failed: Option<String>,
}

/// One agent's command channel, for the session it attached with.
struct Link {
    session: u64,
    commands: mpsc::UnboundedSender<AgentCommand>,
}

type Answer<T> = oneshot::Sender<Result<T, HostError>>;

/// A change asked of the actor.
enum Request {
    Submit(TaskSpec, Option<String>, Answer<(TaskId, bool)>),
    Kill(TaskId, Answer<Task>),
    ModuleStored(String, oneshot::Sender<bool>),
    Register(AgentInfo, Vec<Attempt>, Vec<Attempt>, Answer<u64>),
    Attach(String, u64, Answer<mpsc::UnboundedReceiver<AgentCommand>>),
    Heartbeat(String, u64),
    Detach(String, u64),
    Report(String, u64, Attempt, StatusReport),
    Expire,
}

/// A request and when it was made.
struct Stamped {
    at: Now,
    request: Request,
}

/// An answer worked out in a batch, sent once the batch is durable.
enum Reply {
    Submit(Answer<(TaskId, bool)>, Result<(TaskId, bool), HostError>),
    Kill(Answer<Task>, Box<Result<Task, HostError>>),
    Register(Answer<u64>, Result<u64, HostError>),
    Attach(
        Answer<mpsc::UnboundedReceiver<AgentCommand>>,
        Result<mpsc::UnboundedReceiver<AgentCommand>, HostError>,
    ),
    /// Whether a stored module was new: its bytes were durable before it was asked, so the
    /// answer stands whatever happens to the batch.
    Module(oneshot::Sender<bool>, bool),
}

impl Reply {
    /// Sends the answer; when the batch's commit failed, the store's error instead.
    fn send(self, failure: Option<&str>) {
        fn fail<T>(r: Result<T, HostError>, failure: Option<&str>) -> Result<T, HostError> {
            match failure {
                Some(message) => Err(HostError::Store(StoreError::Io(message.to_string()))),
                None => r,
            }
        }
        match self {
            Reply::Submit(to, r) => drop(to.send(fail(r, failure))),
            Reply::Kill(to, r) => drop(to.send(fail(*r, failure))),
            Reply::Register(to, r) => drop(to.send(fail(r, failure))),
            Reply::Attach(to, r) => drop(to.send(fail(r, failure))),
            Reply::Module(to, new) => drop(to.send(new)),
        }
    }
}

struct Shared {
    config: HostConfig,
    store: Store,
    core: Arc<RwLock<Core>>,
    events: Arc<Events>,
    requests: mpsc::Sender<Stamped>,
    /// Why the host stopped, once it has.
    stopped: watch::Receiver<Option<String>>,
}

/// The host's core. Cheap to clone; the actor stops when the last clone is dropped.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

/// Why a request could not reach the actor.
fn stopped() -> HostError {
    HostError::Unavailable("the host is stopping".into())
}

impl ControlPlane {
    /// Opens the store in `data_dir`, restores the state and starts the actor and the agent
    /// liveness check. Must be called inside a tokio runtime.
    pub fn start(config: HostConfig, data_dir: &Path) -> Result<Self, HostError> {
        config.validate().map_err(HostError::InvalidArgument)?;
        let (store, loaded) = Store::open(data_dir)?;
        let state = HostState::restore(&config, loaded, Now::current());
        tracing::info!(
            tasks = state.tasks().count(),
            pending = state.pending().count(),
            agents = state.agents().len(),
            "state restored"
        );
        let core = Arc::new(RwLock::new(Core {
            state,
            failed: None,
        }));
        let events = Events::new(16_384);
        let (requests, inbox) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(None);
        let actor = Actor {
            config: config.clone(),
            store: store.clone(),
            core: core.clone(),
            events: events.clone(),
            links: HashMap::new(),
            stop: stop.clone(),
        };
        let running = tokio::spawn(actor.run(inbox));
        // A panic in the actor (a broken invariant of the state machine) stops the host: the
        // state may be half changed, so nothing is served from it any more.
        let watched = core.clone();
        tokio::spawn(async move {
            if let Err(e) = running.await {
                if e.is_panic() {
                    let reason = format!("the host's state machine failed ({e}): restart the host");
                    tracing::error!("{reason}");
                    watched.write().await.failed = Some(reason.clone());
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
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                store,
                core,
                events,
                requests,
                stopped,
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
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

    /// The state to read, unless the host has stopped.
    async fn read(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Core>, HostError> {
        let core = self.shared.core.read().await;
        match &core.failed {
            Some(reason) => Err(HostError::Unavailable(reason.clone())),
            None => Ok(core),
        }
    }

    // ----- modules ------------------------------------------------------------------------

    /// Admits (the same check the sandbox makes, without compiling, on a blocking thread: a
    /// large module takes a while) and stores a module. Answers its sha256, size and whether
    /// it was already there.
    pub async fn upload_module(&self, bytes: Vec<u8>) -> Result<(String, u64, bool), HostError> {
        let policy = corral_admission::Policy {
            max_module_bytes: self.shared.config.max_module_size.as_u64(),
        };
        let admitted = tokio::task::spawn_blocking(move || {
            corral_admission::admit(&bytes, &policy)
                .map(|a| (a.sha256_hex(), a.binary.into_owned()))
        })
        .await
        .map_err(|e| HostError::Unavailable(format!("admitting the module failed: {e}")))?;
        let (sha, binary) = admitted.map_err(HostError::Refused)?;
        let size = binary.len() as u64;
        if self.read().await?.state.has_module(&sha) {
            return Ok((sha, size, true));
        }
        self.shared
            .store
            .write(vec![Write::Module(sha.clone(), Bytes::from(binary))])
            .durable()
            .await?;
        let (answer, answered) = oneshot::channel();
        self.tell(Request::ModuleStored(sha.clone(), answer)).await;
        let new = answered.await.map_err(|_| stopped())?;
        tracing::info!(sha256 = %sha, size, "module stored");
        Ok((sha, size, !new))
    }

    /// A stored module's binary.
    pub fn module(&self, sha256: &str) -> Result<Bytes, HostError> {
        self.shared
            .store
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
        self.ask(|answer| Request::Submit(spec, idempotency_key, answer))
            .await
    }

    /// One task (with its stdin).
    pub async fn get(&self, id: TaskId) -> Result<Task, HostError> {
        self.read().await?.state.get(id).cloned()
    }

    /// Tasks after `after` (exclusive) in id order that pass `filter`, at most `limit`, without
    /// stdin; and whether more remain.
    pub async fn list(
        &self,
        filter: &TaskFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<(Vec<Task>, bool), HostError> {
        Ok(self.read().await?.state.list(filter, after, limit))
    }

    /// Kills a task (see [`HostState::kill`]); answers once the change is durable.
    pub async fn kill(&self, id: TaskId) -> Result<Task, HostError> {
        self.ask(|answer| Request::Kill(id, answer)).await
    }

    /// A task's stored output. Tasks that have not ended have none yet.
    pub async fn output(&self, id: TaskId) -> Result<TaskOutput, HostError> {
        let core = self.read().await?;
        let task = core.state.get(id)?;
        if !task.state.is_terminal() {
            return Err(HostError::FailedPrecondition(format!(
                "task {id} has not ended ({}): its output is kept when it does",
                task.state
            )));
        }
        Ok(self.shared.store.output(id)?.unwrap_or_default())
    }

    /// Subscribes to task changes (every task's, or one task's); with `id`, also answers that
    /// task as it is now. No change falls between the two: events are published under the
    /// state's write lock, and this holds the read lock.
    pub async fn watch(
        &self,
        id: Option<TaskId>,
    ) -> Result<(Option<Task>, Subscription), HostError> {
        let core = self.read().await?;
        let current = match id {
            Some(id) => Some(crate::state::public(core.state.get(id)?)),
            None => None,
        };
        Ok((current, self.shared.events.subscribe(id)))
    }

    /// Every agent, by id.
    pub async fn agents(&self) -> Result<Vec<AgentView>, HostError> {
        Ok(self.read().await?.state.agents())
    }

    /// Every partition, by id.
    pub async fn partitions(&self) -> Result<Vec<Partition>, HostError> {
        Ok(self.read().await?.state.partitions().cloned().collect())
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
        self.ask(|answer| Request::Register(info, running, unacknowledged, answer))
            .await
    }

    /// Opens an agent's command channel for its registered session.
    pub async fn attach(
        &self,
        agent_id: &str,
        session: u64,
    ) -> Result<mpsc::UnboundedReceiver<AgentCommand>, HostError> {
        self.ask(|answer| Request::Attach(agent_id.to_string(), session, answer))
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
        self.shared.store.fail_next_commits(n);
    }

    /// Makes the store's next commit take `delay` longer, as a slow disk would: for tests.
    #[doc(hidden)]
    pub fn inject_store_delay(&self, delay: Duration) {
        self.shared.store.delay_next_commit(delay);
    }
}

/// The task that applies requests in batches; see the module documentation.
struct Actor {
    config: HostConfig,
    store: Store,
    core: Arc<RwLock<Core>>,
    events: Arc<Events>,
    links: HashMap<String, Link>,
    stop: watch::Sender<Option<String>>,
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Stamped>) {
        let mut batch = Vec::new();
        while inbox.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let core = self.core.clone();
            let mut core = core.write().await;
            if let Some(reason) = &core.failed {
                let reason = reason.clone();
                for stamped in batch.drain(..) {
                    refuse(stamped.request, &reason);
                }
                continue;
            }
            let mut fx = Effects::default();
            let mut replies = Vec::with_capacity(batch.len());
            for Stamped { at, request } in batch.drain(..) {
                self.apply(&mut core.state, request, at, &mut fx, &mut replies);
            }
            core.state.schedule(Now::current(), &mut fx);
            let durable = if fx.writes.is_empty() {
                Ok(())
            } else {
                self.store
                    .write(std::mem::take(&mut fx.writes))
                    .durable()
                    .await
            };
            match durable {
                Ok(()) => {
                    self.dispatch(fx);
                    for reply in replies {
                        reply.send(None);
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    tracing::error!(error = %message, "state store commit failed: rebuilding the state from disk");
                    self.rebuild(&mut core);
                    for reply in replies {
                        reply.send(Some(&message));
                    }
                }
            }
        }
    }

    /// Applies one request to the state, recording its effects and its answer.
    fn apply(
        &mut self,
        state: &mut HostState,
        request: Request,
        now: Now,
        fx: &mut Effects,
        replies: &mut Vec<Reply>,
    ) {
        match request {
            Request::Submit(spec, key, answer) => {
                let result = state.submit(spec, key, now, fx);
                replies.push(Reply::Submit(answer, result));
            }
            Request::Kill(id, answer) => {
                let result = state.kill(id, now, fx);
                replies.push(Reply::Kill(answer, Box::new(result)));
            }
            Request::ModuleStored(sha, answer) => {
                let new = state.module_stored(&sha);
                replies.push(Reply::Module(answer, new));
            }
            Request::Register(info, running, unacknowledged, answer) => {
                let id = info.id.clone();
                let result = state.register(info, &running, &unacknowledged, now, fx);
                if result.is_ok() {
                    // Its old stream, if any, ends.
                    self.links.remove(&id);
                    tracing::info!(agent_id = %id, "agent registered");
                }
                replies.push(Reply::Register(answer, result));
            }
            Request::Attach(agent, session, answer) => {
                let result = state.attach(&agent, session, now, fx).map(|()| {
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
            }
        }
    }

    /// Sends a durable batch's commands and publishes its events.
    fn dispatch(&mut self, fx: Effects) {
        for (agent, command) in fx.commands {
            if let Some(link) = self.links.get(&agent) {
                let _ = link.commands.send(command);
            }
        }
        for event in fx.events {
            if event.state == TaskState::Lost {
                tracing::warn!(task_id = %event.id, reason = %event.reason, "attempt lost");
            }
            self.events.publish(event);
        }
    }

    /// After a failed commit: the state as the disk has it, as a restarting host would see it.
    /// Every agent stream ends, so agents register again and are reconciled.
    fn rebuild(&mut self, core: &mut Core) {
        self.links.clear();
        match self.store.load() {
            Ok(loaded) => {
                let last = core.state.last_session();
                core.state = HostState::restore(&self.config, loaded, Now::current());
                // Agents still hold the old state's sessions: none is handed out again.
                core.state.sessions_after(last);
            }
            Err(e) => {
                let reason = format!(
                    "the state store failed and cannot be read back ({e}): restart the host"
                );
                tracing::error!("{reason}");
                core.failed = Some(reason.clone());
                let _ = self.stop.send(Some(reason));
            }
        }
    }
}

/// Answers a request the stopped host cannot take.
fn refuse(request: Request, reason: &str) {
    let error = || HostError::Unavailable(reason.to_string());
    match request {
        Request::Submit(_, _, answer) => drop(answer.send(Err(error()))),
        Request::Kill(_, answer) => drop(answer.send(Err(error()))),
        Request::Register(_, _, _, answer) => drop(answer.send(Err(error()))),
        Request::Attach(_, _, answer) => drop(answer.send(Err(error()))),
        Request::ModuleStored(_, answer) => {
            let _ = answer.send(false);
        }
        Request::Heartbeat(..) | Request::Detach(..) | Request::Report(..) | Request::Expire => {}
    }
}
