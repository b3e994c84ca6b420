//! The control plane: the host's one authority over tasks, agents and partitions.
//!
//! It holds the state in memory behind one lock and applies every change there first, then
//! queues the matching [`Write`]s to the store. Changes a client or an agent is told about are
//! awaited to durability first: a submit is answered, and a final status acknowledged, only
//! once it is on disk. Decisions are the pure [`scheduler`](crate::scheduler) and
//! [`registry`](crate::registry); this module applies them and talks to agents through
//! [`AgentCommand`] channels (the api turns those into protobuf).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::allocator::{never_fits, Candidate, Request};
use crate::config::HostConfig;
use crate::events::{Events, Subscription};
use crate::partition::{self, Partition, PartitionState};
use crate::registry::{AgentInfo, AgentState, Registry};
use crate::scheduler::{self, PendingTask};
use crate::store::{Store, StoreError, Write};
use crate::task::{
    Attempt, OutcomeRecord, Progress, Task, TaskId, TaskOutput, TaskSpec, TaskState,
};

/// Most pending tasks considered in one scheduling round.
const MAX_ROUND: usize = 50_000;

/// An error answered to a client or an agent.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No such task, agent or module.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be done in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the host tells one agent.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentCommand {
    /// Run this attempt.
    Launch(Attempt, Arc<TaskSpec>),
    /// Stop this attempt.
    Kill(Attempt),
    /// The final status of this attempt is durable; stop re-sending it.
    Ack(Attempt),
}

/// A status report from an agent on one attempt.
#[derive(Clone, Debug, Default)]
pub struct StatusReport {
    /// `Running`, or a final state: `Finished`, `Failed` or `Killed`.
    pub state: Option<TaskState>,
    /// How it ended (final reports).
    pub outcome: Option<OutcomeRecord>,
    /// Fuel used so far, or in all.
    pub fuel_used: u64,
    /// Peak linear memory.
    pub peak_memory_bytes: u64,
    /// Wall time, in milliseconds.
    pub wall_ms: u64,
    /// The guest's progress.
    pub progress: Option<Progress>,
    /// Captured output (final reports).
    pub output: Option<TaskOutput>,
}

/// Filters for [`ControlPlane::list`].
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks with this name.
    pub name: Option<String>,
    /// Only tasks of this tenant.
    pub tenant: Option<String>,
    /// Only tasks carrying all these labels.
    pub labels: BTreeMap<String, String>,
}

/// An agent as listed.
#[derive(Clone, Debug)]
pub struct AgentView {
    /// What it said of itself.
    pub info: AgentInfo,
    /// Whether it is heard from.
    pub state: AgentState,
    /// When it was last heard from (ms since the epoch).
    pub last_seen_ms: i64,
    /// Tasks it holds (assigned or running).
    pub running: u32,
}

/// A task whose attempt just ended, and the events that tell watchers so: the state it ended
/// in, then PENDING again when it is retried.
struct Ended {
    task: Task,
    events: Vec<Task>,
}

struct Link {
    session: u64,
    commands: mpsc::UnboundedSender<AgentCommand>,
}

#[derive(Default)]
struct State {
    tasks: BTreeMap<TaskId, Task>,
    pending: BTreeSet<TaskId>,
    idempotency: HashMap<(String, String), TaskId>,
    registry: Registry,
    partitions: BTreeMap<String, Partition>,
    links: HashMap<String, Link>,
    /// Commands for agents not attached yet (reconciliation kills), sent when they attach.
    queued: HashMap<String, Vec<AgentCommand>>,
    modules: BTreeSet<String>,
    next_id: u64,
    /// Outputs of tasks that ended, until their commit is durable.
    fresh_outputs: HashMap<TaskId, TaskOutput>,
}

struct Shared {
    config: HostConfig,
    store: Store,
    validator: corral_agent::sandbox::Validator,
    state: Mutex<State>,
    /// Task changes, shared: every watcher gets the same `Arc`.
    events: Arc<Events>,
    schedule: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wakes the scheduler loop so that it sees the plane is gone and ends.
        self.schedule.notify_one();
    }
}

/// The host's core. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A task as clients see it in events and listings: without its stdin bytes.
fn public(task: &Task) -> Task {
    let mut task = task.clone();
    task.spec.stdin = Bytes::new();
    task
}

impl ControlPlane {
    /// Opens the store in `data_dir`, restores the state and starts the scheduler and the
    /// agent liveness check. Must be called inside a tokio runtime.
    pub fn start(config: HostConfig, data_dir: &Path) -> Result<Self, HostError> {
        config.validate().map_err(HostError::InvalidArgument)?;
        let (store, loaded) = Store::open(data_dir)?;
        let validator = corral_agent::sandbox::Validator::new(config.max_module_size.as_u64())
            .map_err(|e| HostError::FailedPrecondition(e.to_string()))?;
        let now = Instant::now();
        let mut state = State::default();
        for (info, seen) in loaded.agents {
            state.registry.restore(info, now, seen);
        }
        for mut p in loaded.partitions {
            // Nothing goes to an agent's partitions until it attaches again.
            p.draining = true;
            if let Some(agent) = state.registry.get(&p.agent_id) {
                p.agent_labels = agent.info.labels.clone();
            }
            state.partitions.insert(p.id.clone(), p);
        }
        for task in loaded.tasks {
            state.next_id = state.next_id.max(task.id.0);
            if task.state == TaskState::Pending {
                state.pending.insert(task.id);
            }
            if task.state.holds_resources() {
                if let Some(p) = task
                    .partition_id
                    .as_ref()
                    .and_then(|p| state.partitions.get_mut(p))
                {
                    p.allocated = p.allocated.plus(&task.spec.resources());
                }
            }
            state.tasks.insert(task.id, task);
        }
        state.idempotency = loaded.idempotency.into_iter().collect();
        state.modules = loaded.modules.into_iter().collect();
        tracing::info!(
            tasks = state.tasks.len(),
            pending = state.pending.len(),
            agents = state.registry.iter().count(),
            "state restored"
        );
        let events = Events::new(16_384);
        let plane = Self {
            shared: Arc::new(Shared {
                config,
                store,
                validator,
                state: Mutex::new(state),
                events,
                schedule: Arc::new(Notify::new()),
            }),
        };
        plane.spawn_loops();
        Ok(plane)
    }

    /// The configuration in force.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_loops(&self) {
        let weak = Arc::downgrade(&self.shared);
        let wake = self.shared.schedule.clone();
        tokio::spawn(async move {
            loop {
                let notified = wake.notified();
                let Some(shared) = weak.upgrade() else { break };
                ControlPlane { shared }.schedule_round();
                notified.await;
            }
        });
        let weak = Arc::downgrade(&self.shared);
        let period = (self.shared.config.heartbeat_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                ControlPlane { shared }.expire_agents(Instant::now());
            }
        });
    }

    // ----- modules --------------------------------------------------------------------------

    /// Validates and stores a module. Answers its sha256, size and whether it was already there.
    pub async fn upload_module(&self, bytes: &[u8]) -> Result<(String, u64, bool), HostError> {
        let valid = self
            .shared
            .validator
            .validate(bytes)
            .map_err(|e| HostError::InvalidArgument(format!("invalid module: {e}")))?;
        let size = valid.binary.len() as u64;
        if self.lock().modules.contains(&valid.sha256) {
            return Ok((valid.sha256, size, true));
        }
        let sha = valid.sha256.clone();
        self.shared
            .store
            .write(vec![Write::Module(sha.clone(), Bytes::from(valid.binary))])
            .durable()
            .await?;
        let existed = !self.lock().modules.insert(sha.clone());
        tracing::info!(sha256 = %sha, size, "module stored");
        Ok((sha, size, existed))
    }

    /// A stored module's binary.
    pub fn module(&self, sha256: &str) -> Result<Bytes, HostError> {
        self.shared
            .store
            .module(sha256)?
            .ok_or_else(|| HostError::NotFound(format!("no module with sha256 {sha256}")))
    }

    // ----- tasks ----------------------------------------------------------------------------

    /// Records a new task (or answers the one an idempotency key already names) and answers
    /// once it is durable: (id, whether it existed).
    pub async fn submit(
        &self,
        spec: TaskSpec,
        idempotency_key: Option<String>,
    ) -> Result<(TaskId, bool), HostError> {
        let key = idempotency_key.map(|k| (spec.tenant.clone(), k));
        let (task, mut writes) = {
            let mut state = self.lock();
            if let Some(id) = key.as_ref().and_then(|k| state.idempotency.get(k)) {
                return Ok((*id, true));
            }
            if !state.modules.contains(&spec.module_sha256) {
                return Err(HostError::NotFound(format!(
                    "no module with sha256 {}: upload it first",
                    spec.module_sha256
                )));
            }
            let request = request(&spec);
            // Usually the first partition could hold it; the reason is worked out only when
            // none could.
            if !state.registry.is_empty()
                && !state
                    .partitions
                    .values()
                    .any(|p| candidate(p).could_ever_hold(&request))
            {
                if let Some(reason) = never_fits(&candidates(&state), &request) {
                    return Err(HostError::FailedPrecondition(format!(
                        "no agent could ever run this task: {reason}"
                    )));
                }
            }
            state.next_id += 1;
            let id = TaskId(state.next_id);
            let task = Task::new(id, spec, now_ms());
            if let Some(k) = &key {
                state.idempotency.insert(k.clone(), id);
            }
            state.tasks.insert(id, task.clone());
            (task, Vec::new())
        };
        let id = task.id;
        if let Some((tenant, k)) = key {
            writes.push(Write::Idempotency(tenant, k, id));
        }
        self.shared.events.publish(Arc::new(public(&task)));
        writes.insert(0, Write::Task(task));
        self.shared.store.write(writes).durable().await?;
        self.lock().pending.insert(id);
        self.shared.schedule.notify_one();
        tracing::debug!(task_id = %id, "task submitted");
        Ok((id, false))
    }

    /// One task (with its stdin).
    pub fn get(&self, id: TaskId) -> Result<Task, HostError> {
        self.lock()
            .tasks
            .get(&id)
            .cloned()
            .ok_or_else(|| unknown_task(id))
    }

    /// Tasks after `after` (exclusive) in id order that pass `filter`, at most `limit`, without
    /// stdin; and whether more remain.
    pub fn list(
        &self,
        filter: &TaskFilter,
        after: Option<TaskId>,
        limit: usize,
    ) -> (Vec<Task>, bool) {
        let state = self.lock();
        let start = after.map_or(0, |a| a.0 + 1);
        let mut out = Vec::new();
        let mut more = false;
        for task in state.tasks.range(TaskId(start)..).map(|(_, t)| t) {
            let keep = filter.state.is_none_or(|s| s == task.state)
                && filter.name.as_ref().is_none_or(|n| *n == task.spec.name)
                && filter
                    .tenant
                    .as_ref()
                    .is_none_or(|t| *t == task.spec.tenant)
                && partition::contains_all(&task.spec.labels, &filter.labels);
            if !keep {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(public(task));
        }
        (out, more)
    }

    /// Kills a task: a pending one at once; a placed one through its agent (the answer is the
    /// task as it is now, and it becomes KILLED when the agent reports); one whose agent is away
    /// at once (the agent is told when it comes back).
    pub async fn kill(&self, id: TaskId) -> Result<Task, HostError> {
        let (task, durable) = {
            let mut state = self.lock();
            let task = state.tasks.get(&id).ok_or_else(|| unknown_task(id))?;
            if task.state.is_terminal() {
                return Err(HostError::FailedPrecondition(format!(
                    "task {id} already ended ({})",
                    task.state
                )));
            }
            let attempt = Attempt {
                task_id: id,
                attempt: task.attempts,
            };
            let holds = task.state.holds_resources();
            let agent = task.agent_id.clone();
            let linked = holds && agent.as_ref().is_some_and(|a| state.links.contains_key(a));
            if linked {
                let agent = agent.unwrap_or_default();
                send(&state, &agent, AgentCommand::Kill(attempt));
                let task = state.tasks.get_mut(&id).expect("task looked up above");
                task.reason = "kill requested".into();
                task.updated_at_ms = now_ms();
                (public(task), None)
            } else {
                if let Some(agent) = agent.filter(|_| holds) {
                    state
                        .queued
                        .entry(agent)
                        .or_default()
                        .push(AgentCommand::Kill(attempt));
                }
                let Ended { task, events } =
                    self.end(&mut state, id, TaskState::Killed, "killed on request");
                (
                    public(&task),
                    Some((self.shared.store.write(vec![Write::Task(task)]), events)),
                )
            }
        };
        if let Some((commit, events)) = durable {
            commit.durable().await?;
            self.emit(events);
            self.shared.schedule.notify_one();
        }
        Ok(task)
    }

    /// A task's stored output. Tasks that have not ended have none yet.
    pub fn output(&self, id: TaskId) -> Result<TaskOutput, HostError> {
        let task = self.get(id)?;
        if let Some(output) = self.lock().fresh_outputs.get(&id) {
            return Ok(output.clone());
        }
        if !task.state.is_terminal() {
            return Err(HostError::FailedPrecondition(format!(
                "task {id} has not ended ({}): its output is kept when it does",
                task.state
            )));
        }
        Ok(self.shared.store.output(id)?.unwrap_or_default())
    }

    /// Subscribes to task changes (every task's, or one task's); with `id`, also answers that
    /// task as it is now.
    pub fn watch(&self, id: Option<TaskId>) -> Result<(Option<Task>, Subscription), HostError> {
        let state = self.lock();
        let current = match id {
            Some(id) => Some(public(
                state.tasks.get(&id).ok_or_else(|| unknown_task(id))?,
            )),
            None => None,
        };
        // Subscribed under the lock: no change falls between `current` and the first event.
        Ok((current, self.shared.events.subscribe(id)))
    }

    /// Every agent, by id.
    pub fn agents(&self) -> Vec<AgentView> {
        let state = self.lock();
        let mut running: HashMap<&str, u32> = HashMap::new();
        for task in state.tasks.values().filter(|t| t.state.holds_resources()) {
            if let Some(agent) = &task.agent_id {
                *running.entry(agent.as_str()).or_default() += 1;
            }
        }
        state
            .registry
            .iter()
            .map(|entry| AgentView {
                info: entry.info.clone(),
                state: entry.state,
                last_seen_ms: entry.last_seen_ms,
                running: running.get(entry.info.id.as_str()).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Every partition, by id.
    pub fn partitions(&self) -> Vec<Partition> {
        self.lock().partitions.values().cloned().collect()
    }

    // ----- agents ---------------------------------------------------------------------------

    /// Registers an agent (or one coming back) and reconciles: attempts the host placed there
    /// that the agent neither runs nor has a final report for are LOST; attempts the agent runs
    /// that the host does not expect there are killed once it attaches. Answers the session.
    pub fn register(
        &self,
        info: AgentInfo,
        running: &[Attempt],
        unacknowledged: &[Attempt],
    ) -> Result<u64, HostError> {
        if info.id.is_empty() || info.id.contains('/') {
            return Err(HostError::InvalidArgument(format!(
                "agent id {:?} must be non-empty and contain no '/'",
                info.id
            )));
        }
        if info.capacity.slots == 0 || info.capacity.memory_bytes == 0 {
            return Err(HostError::InvalidArgument(format!(
                "agent {} offers no capacity: it needs at least one slot and some memory",
                info.id
            )));
        }
        let now = now_ms();
        let mut writes = Vec::new();
        let session = {
            let mut state = self.lock();
            let state = &mut *state;
            let (session, previous) = state.registry.register(info.clone(), Instant::now(), now);
            // A new stream replaces any old one.
            state.links.remove(&info.id);
            if previous.as_ref() != Some(&info)
                || !state
                    .partitions
                    .keys()
                    .any(|k| k.starts_with(&format!("{}/", info.id)))
            {
                let mut carved = partition::carve(
                    &info.id,
                    info.capacity,
                    &info.labels,
                    &self.shared.config.partitions,
                );
                state.partitions.retain(|_, p| p.agent_id != info.id);
                for p in &mut carved {
                    p.draining = true;
                    for task in state.tasks.values() {
                        if task.state.holds_resources()
                            && task.partition_id.as_deref() == Some(p.id.as_str())
                        {
                            p.allocated = p.allocated.plus(&task.spec.resources());
                        }
                    }
                }
                writes.push(Write::Partitions(info.id.clone(), carved.clone()));
                state
                    .partitions
                    .extend(carved.into_iter().map(|p| (p.id.clone(), p)));
            }
            writes.push(Write::Agent(info.clone(), now));

            let reported: BTreeSet<&Attempt> = running.iter().chain(unacknowledged).collect();
            let placed_here: Vec<TaskId> = state
                .tasks
                .values()
                .filter(|t| {
                    t.state.holds_resources() && t.agent_id.as_deref() == Some(info.id.as_str())
                })
                .filter(|t| {
                    !reported.contains(&Attempt {
                        task_id: t.id,
                        attempt: t.attempts,
                    })
                })
                .map(|t| t.id)
                .collect();
            for id in placed_here {
                writes.extend(self.lose(
                    state,
                    id,
                    &format!("agent {} came back without it", info.id),
                ));
            }
            let mut kills = Vec::new();
            for attempt in running {
                let expected = state.tasks.get(&attempt.task_id).is_some_and(|t| {
                    t.state.holds_resources()
                        && t.attempts == attempt.attempt
                        && t.agent_id.as_deref() == Some(info.id.as_str())
                });
                if !expected {
                    kills.push(AgentCommand::Kill(attempt.clone()));
                }
            }
            state.queued.insert(info.id.clone(), kills);
            session
        };
        drop(self.shared.store.write(writes));
        tracing::info!(agent_id = %info.id, session, slots = info.capacity.slots, "agent registered");
        Ok(session)
    }

    /// Opens an agent's command channel for its registered session.
    pub fn attach(
        &self,
        agent_id: &str,
        session: u64,
    ) -> Result<mpsc::UnboundedReceiver<AgentCommand>, HostError> {
        let (commands, receiver) = mpsc::unbounded_channel();
        {
            let mut state = self.lock();
            if !state
                .registry
                .heard(agent_id, session, Instant::now(), now_ms())
            {
                return Err(HostError::FailedPrecondition(format!(
                    "agent {agent_id} session {session} is not current: register again"
                )));
            }
            for command in state.queued.remove(agent_id).unwrap_or_default() {
                let _ = commands.send(command);
            }
            // Launches of attempts assigned but not yet running go out again: the old stream may
            // have dropped them. The agent ignores one it already has.
            for task in state.tasks.values() {
                if task.state == TaskState::Assigned && task.agent_id.as_deref() == Some(agent_id) {
                    let attempt = Attempt {
                        task_id: task.id,
                        attempt: task.attempts,
                    };
                    let _ =
                        commands.send(AgentCommand::Launch(attempt, Arc::new(task.spec.clone())));
                }
            }
            state
                .links
                .insert(agent_id.to_string(), Link { session, commands });
            for p in state
                .partitions
                .values_mut()
                .filter(|p| p.agent_id == agent_id)
            {
                p.draining = false;
            }
        }
        self.shared.schedule.notify_one();
        tracing::info!(agent_id, session, "agent attached");
        Ok(receiver)
    }

    /// Records a heartbeat. False when the session is not current (the agent must register).
    pub fn heartbeat(&self, agent_id: &str, session: u64) -> bool {
        self.lock()
            .registry
            .heard(agent_id, session, Instant::now(), now_ms())
    }

    /// The agent's stream ended: its partitions take no new tasks, and it is lost unless it
    /// comes back within the heartbeat timeout.
    pub fn detach(&self, agent_id: &str, session: u64) {
        let mut state = self.lock();
        if state
            .links
            .get(agent_id)
            .is_some_and(|l| l.session == session)
        {
            state.links.remove(agent_id);
        }
        if state.registry.disconnected(agent_id, session) {
            for p in state
                .partitions
                .values_mut()
                .filter(|p| p.agent_id == agent_id)
            {
                p.draining = true;
            }
            tracing::warn!(agent_id, "agent disconnected");
        }
    }

    /// Applies an agent's status report on one attempt. A final report is acknowledged (through
    /// the agent's channel) once it is durable; a report on an attempt the host no longer expects
    /// is acknowledged too, and a running one is killed.
    pub async fn status(
        &self,
        agent_id: &str,
        session: u64,
        attempt: Attempt,
        report: StatusReport,
    ) {
        let Some(reported) = report.state else { return };
        let commit = {
            let mut state = self.lock();
            let state = &mut *state;
            if state
                .links
                .get(agent_id)
                .is_none_or(|l| l.session != session)
            {
                return;
            }
            state
                .registry
                .heard(agent_id, session, Instant::now(), now_ms());
            let current = state.tasks.get(&attempt.task_id).is_some_and(|t| {
                t.state.holds_resources()
                    && t.attempts == attempt.attempt
                    && t.agent_id.as_deref() == Some(agent_id)
            });
            if !current {
                let command = if reported.is_terminal() {
                    AgentCommand::Ack(attempt)
                } else {
                    AgentCommand::Kill(attempt)
                };
                send(state, agent_id, command);
                return;
            }
            let task = state
                .tasks
                .get_mut(&attempt.task_id)
                .expect("checked above");
            task.fuel_used = report.fuel_used;
            task.peak_memory_bytes = report.peak_memory_bytes;
            task.wall_ms = report.wall_ms;
            if report.progress.is_some() {
                task.progress = report.progress;
            }
            task.updated_at_ms = now_ms();
            if !reported.is_terminal() {
                let first = task.state == TaskState::Assigned;
                if first {
                    task.state = TaskState::Running;
                    task.started_at_ms = task.updated_at_ms;
                    task.reason.clear();
                }
                self.shared.events.publish(Arc::new(public(task)));
                if first {
                    drop(self.shared.store.write(vec![Write::Task(task.clone())]));
                }
                return;
            }
            task.outcome = report.outcome.clone();
            let final_state = match &report.outcome {
                Some(o) if o.is_success() => TaskState::Finished,
                Some(o) if o.is_killed() => TaskState::Killed,
                _ => TaskState::Failed,
            };
            let reason = match &report.outcome {
                Some(o) if !o.message.is_empty() => format!("{}: {}", o.kind, o.message),
                Some(o) if o.kind == "exit" => format!("exit({})", o.exit_code),
                Some(o) => o.kind.clone(),
                None => "ended without an outcome".into(),
            };
            let Ended { task, events } = self.end(state, attempt.task_id, final_state, &reason);
            let mut writes = vec![Write::Task(task.clone())];
            let output = cap_output(
                report.output.unwrap_or_default(),
                self.shared.config.max_output_size.as_u64(),
            );
            state.fresh_outputs.insert(task.id, output.clone());
            writes.push(Write::Output(task.id, output));
            (self.shared.store.write(writes), task, events)
        };
        self.shared.schedule.notify_one();
        let (commit, task, events) = commit;
        tracing::debug!(task_id = %task.id, state = %task.state, "attempt ended");
        let durable = commit.durable().await;
        let mut state = self.lock();
        state.fresh_outputs.remove(&task.id);
        match durable {
            Ok(()) => {
                tracing::debug!(task_id = %task.id, "end durable");
                // Watchers learn of the end once it (and the output) is durable.
                self.emit(events);
                send(&state, agent_id, AgentCommand::Ack(attempt));
            }
            // Not acknowledged: the agent sends it again.
            Err(e) => {
                tracing::error!(error = %e, task_id = %attempt.task_id, "final status not stored")
            }
        }
    }

    // ----- internals ------------------------------------------------------------------------

    /// Ends the task's current attempt in `ended`: frees its resources, and queues it again
    /// when its retry policy allows. Answers the task as it now is; the caller tells watchers
    /// (once the change is durable, where that matters).
    fn end(&self, state: &mut State, id: TaskId, ended: TaskState, reason: &str) -> Ended {
        let now = now_ms();
        let task = state.tasks.get_mut(&id).expect("ending a known task");
        if task.state.holds_resources() {
            if let Some(p) = task
                .partition_id
                .as_ref()
                .and_then(|p| state.partitions.get_mut(p))
            {
                p.allocated = p.allocated.minus(&task.spec.resources());
            }
        }
        state.pending.remove(&id);
        task.state = ended;
        task.reason = reason.to_string();
        task.updated_at_ms = now;
        let retry = task.may_retry_after(ended);
        if !retry {
            task.finished_at_ms = now;
        }
        let mut events = vec![public(task)];
        if retry {
            task.state = TaskState::Pending;
            task.reason = format!("retrying after {}: {reason}", ended.as_str());
            events.push(public(task));
            state.pending.insert(id);
            self.shared.schedule.notify_one();
        }
        Ended {
            task: task.clone(),
            events,
        }
    }

    fn emit(&self, events: Vec<Task>) {
        for event in events {
            self.shared.events.publish(Arc::new(event));
        }
    }

    /// The current attempt of `id` is LOST (its agent vanished or forgot it).
    fn lose(&self, state: &mut State, id: TaskId, reason: &str) -> Vec<Write> {
        let Ended { task, events } = self.end(state, id, TaskState::Lost, reason);
        self.emit(events);
        tracing::warn!(task_id = %id, state = %task.state, reason, "attempt lost");
        vec![Write::Task(task)]
    }

    /// Declares agents silent past the timeout lost, and their attempts LOST.
    fn expire_agents(&self, now: Instant) {
        let mut writes = Vec::new();
        {
            let mut state = self.lock();
            let state = &mut *state;
            for agent in state
                .registry
                .expire(now, self.shared.config.heartbeat_timeout)
            {
                tracing::warn!(agent_id = %agent, "agent lost: silent past the heartbeat timeout");
                state.links.remove(&agent);
                for p in state
                    .partitions
                    .values_mut()
                    .filter(|p| p.agent_id == agent)
                {
                    p.draining = true;
                }
                let held: Vec<TaskId> = state
                    .tasks
                    .values()
                    .filter(|t| {
                        t.state.holds_resources() && t.agent_id.as_deref() == Some(agent.as_str())
                    })
                    .map(|t| t.id)
                    .collect();
                for id in held {
                    writes.extend(self.lose(state, id, &format!("agent {agent} lost")));
                }
            }
        }
        if !writes.is_empty() {
            drop(self.shared.store.write(writes));
        }
    }

    /// One scheduling round: plan the pending tasks over the partitions, apply the plan, send
    /// the launches.
    fn schedule_round(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        if state.pending.is_empty() {
            return;
        }
        let candidates = candidates(state);
        // With every slot taken, no plan can place anything: skip the pass over the queue.
        if candidates.iter().all(|c| c.draining || c.free.slots == 0) {
            return;
        }
        // Read lazily: the plan stops once every slot is taken.
        let pending = state
            .pending
            .iter()
            .take(MAX_ROUND)
            .filter_map(|id| state.tasks.get(id))
            .map(|t| PendingTask {
                task_id: t.id,
                request: request(&t.spec),
            });
        let plan = scheduler::plan(&candidates, pending, self.shared.config.strategy);
        let placements: Vec<(TaskId, String)> = plan
            .placements
            .iter()
            .map(|p| (p.task_id, candidates[p.partition].partition_id.to_string()))
            .collect();
        drop(candidates);
        let now = now_ms();
        let mut writes = Vec::with_capacity(placements.len());
        for (task_id, partition_id) in &placements {
            let Some(p) = state.partitions.get_mut(partition_id) else {
                continue;
            };
            let Some(task) = state.tasks.get_mut(task_id) else {
                continue;
            };
            p.allocated = p.allocated.plus(&task.spec.resources());
            task.state = TaskState::Assigned;
            task.attempts += 1;
            task.agent_id = Some(p.agent_id.clone());
            task.partition_id = Some(p.id.clone());
            task.reason.clear();
            task.updated_at_ms = now;
            task.fuel_used = 0;
            task.progress = None;
            state.pending.remove(&task.id);
            let attempt = Attempt {
                task_id: task.id,
                attempt: task.attempts,
            };
            if let Some(link) = state.links.get(&p.agent_id) {
                let _ = link
                    .commands
                    .send(AgentCommand::Launch(attempt, Arc::new(task.spec.clone())));
            }
            self.shared.events.publish(Arc::new(public(task)));
            writes.push(Write::Task(task.clone()));
        }
        for unplaced in plan.unplaced {
            if let Some(task) = state.tasks.get_mut(&unplaced.task_id) {
                task.reason = unplaced.reason;
            }
        }
        if !writes.is_empty() {
            tracing::debug!(placed = writes.len(), "scheduling round");
            drop(self.shared.store.write(writes));
        }
    }
}

fn unknown_task(id: TaskId) -> HostError {
    HostError::NotFound(format!("no task {id}"))
}

fn send(state: &State, agent_id: &str, command: AgentCommand) {
    if let Some(link) = state.links.get(agent_id) {
        let _ = link.commands.send(command);
    }
}

fn request(spec: &TaskSpec) -> Request<'_> {
    Request {
        resources: spec.resources(),
        tenant: &spec.tenant,
        labels: &spec.labels,
        constraints: &spec.constraints,
    }
}

/// The allocator's view of every partition, in id order, borrowed from the state.
fn candidates(state: &State) -> Vec<Candidate<'_>> {
    state.partitions.values().map(candidate).collect()
}

/// The allocator's view of one partition.
fn candidate(p: &Partition) -> Candidate<'_> {
    Candidate {
        partition_id: &p.id,
        agent_id: &p.agent_id,
        agent_labels: &p.agent_labels,
        reservation: &p.reservation,
        capacity: p.capacity,
        free: p.free(),
        draining: p.draining || p.state() == PartitionState::Draining,
    }
}

/// Keeps output within the host's cap: files are kept in order while they fit in `max` bytes
/// in all; stdout and stderr were capped by the agent and are capped again here.
fn cap_output(mut output: TaskOutput, max: u64) -> TaskOutput {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if output.stdout.len() > max {
        output.stdout.truncate(max);
        output.stdout_truncated = true;
    }
    if output.stderr.len() > max {
        output.stderr.truncate(max);
        output.stderr_truncated = true;
    }
    let mut total = 0usize;
    let before = output.files.len();
    output.files.retain(|f| {
        total = total.saturating_add(f.data.len());
        total <= max
    });
    output.files_truncated |= output.files.len() < before;
    output
}
