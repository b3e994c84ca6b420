//! The host's state machine: tasks, agents and partitions, and every change to them, as a pure
//! type.
//!
//! [`HostState`] holds what the host knows. Each change is a method that takes the time as an
//! argument ([`Now`]) and records what must happen because of it in an [`Effects`]: the store
//! writes that make it durable, the commands for agents, and the task events for watchers. It
//! does no I/O, reads no clock and never waits, so every transition is unit-tested directly
//! (`tests.rs`). [`ControlPlane`](crate::control::ControlPlane) is the actor around it: it
//! applies a batch of changes under its lock, awaits the batch's writes, and only then sends
//! the commands and events (or, when the writes fail, drops them and reopens the store), so that
//! nothing outside sees a change before it is durable.
//!
//! # Lifecycle
//! ```text
//! submit ─> PENDING ─schedule─> ASSIGNED ─report RUNNING─> RUNNING ─report final─> FINISHED
//!              ^                    │                        │                      FAILED
//!              │                    └────── agent lost, or ──┤                      KILLED
//!              │                            came back         v
//!              └──── retries remain ──── LOST, or FAILED (agent_error, or retry_failed)
//! ```
//! A kill ends a PENDING task at once, asks a placed task's agent to stop it, and ends a placed
//! task at once when its agent is away (the kill is sent when it comes back).
//!
//! # Invariants kept here
//! - A partition's allocation is the sum of the requests of the tasks that hold resources
//!   (ASSIGNED or RUNNING) in it, and never exceeds its capacity: it grows only by the
//!   scheduler's placements ([`HostState::schedule`]) and shrinks only when an attempt ends.
//! - A task is in the pending queue exactly when it is PENDING.
//! - Reports count only from an agent's attached session and for its current attempts; a stale
//!   final report is acknowledged and dropped, a stale running attempt is killed.
//! - Nothing grows without bound ([`HostState::collect`]): a task that ended is kept, with its
//!   output and its idempotency key, for the config's `task_retention`, then removed; a
//!   module no kept task refers to is removed once unused for `module_retention`. Ids of
//!   removed tasks are never given again.

mod access;
mod fuel;
mod inputs;
mod jobs;
mod tenants;
#[cfg(test)]
mod tests;

pub use access::MAX_AUDIT_ENTRIES;
pub use inputs::{unknown_input, InputView, InputsView, MAX_INPUTS_PER_TENANT};
pub use jobs::{JobView, SubmittedJob};
pub use tenants::TenantView;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::allocator::{never_fits, Candidate, Request, Strategy};
use crate::auth::TokenRecord;
use crate::config::HostConfig;
use crate::error::HostError;
use crate::job::JobId;
use crate::partition::{self, Partition, PartitionState, PartitionTemplate};
use crate::registry::{AgentInfo, AgentState, Registry};
use crate::scheduler::{self, Order, PendingTask, TenantQueue};
use crate::store::{Loaded, ModuleFacts, Write};
use crate::task::{
    Attempt, OutcomeKind, OutcomeRecord, Progress, Task, TaskId, TaskOutput, TaskSpec, TaskState,
};
use crate::tenant::TenantSettings;
use tenants::Queues;

/// Most pending tasks considered in one scheduling round.
const MAX_ROUND: usize = 50_000;
/// Most tasks removed by one [`HostState::collect`]: the rest wait for the next, so that no
/// batch grows without bound when many tasks pass their retention at once.
const MAX_COLLECT: usize = 10_000;

/// When a change happens: the monotonic clock, for agent liveness, and wall-clock milliseconds
/// since the Unix epoch, for records.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
}

impl Now {
    /// The time now, from the system's clocks.
    pub fn current() -> Self {
        Self {
            instant: Instant::now(),
            ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }

    /// `by` later.
    pub fn after(self, by: Duration) -> Self {
        Self {
            instant: self.instant + by,
            ms: self
                .ms
                .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX)),
        }
    }
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

/// What a batch of changes requires: written first, then sent.
#[derive(Debug, Default)]
pub struct Effects {
    /// Store writes that make the changes durable, in order.
    pub writes: Vec<Write>,
    /// Commands for agents, by agent id, in order.
    pub commands: Vec<(String, AgentCommand)>,
    /// Tasks as watchers see them after each change (without stdin), in order.
    pub events: Vec<Arc<Task>>,
    /// Tokens made or changed, for the authenticator once durable.
    pub tokens: Vec<TokenRecord>,
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
    /// Wall time, in microseconds.
    pub wall_us: u64,
    /// Calls the sandbox refused and counted rather than logged.
    pub guest_warnings: u64,
    /// The guest's progress.
    pub progress: Option<Progress>,
    /// Captured output (final reports).
    pub output: Option<TaskOutput>,
}

/// Filters for [`HostState::list`].
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
    /// Only this job's tasks.
    pub job: Option<JobId>,
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

/// The parts of the host's config the state machine decides by.
#[derive(Clone, Debug)]
struct Rules {
    strategy: Strategy,
    order: Order,
    tenants: BTreeMap<String, TenantSettings>,
    heartbeat_timeout: Duration,
    templates: Vec<PartitionTemplate>,
    max_output_bytes: u64,
    task_retention_ms: i64,
    module_retention_ms: i64,
    input_retention_ms: i64,
    audit_retention_ms: i64,
    fuel_window_ms: i64,
}

/// A module, and who uses it.
#[derive(Clone, Copy, Debug, Default)]
struct ModuleUse {
    /// Its binary is stored. A module that is not is listed only while kept tasks refer to it
    /// (restored tasks of a module lost with a damaged store): so that their count is right
    /// when it is uploaded again.
    stored: bool,
    /// Kept tasks that run it.
    tasks: u64,
    /// When it was last uploaded, submitted or left by a removed task (ms since the epoch).
    last_used_ms: i64,
    /// Its size and imports (when stored), for tenants' policies.
    facts: ModuleFacts,
}

/// What one [`HostState::collect`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Tasks, with their outputs and idempotency keys.
    pub tasks: usize,
    /// Modules.
    pub modules: usize,
    /// Inputs.
    pub inputs: usize,
    /// Entries of the audit log.
    pub audit: usize,
}

/// Everything the host knows, and every change to it. See the module documentation.
#[derive(Debug)]
pub struct HostState {
    rules: Rules,
    tasks: BTreeMap<TaskId, Task>,
    /// Jobs, with their tasks counted.
    jobs: BTreeMap<JobId, jobs::JobEntry>,
    /// The last job id given.
    next_job_id: u64,
    /// Jobs restored without any task left, to be removed.
    orphan_jobs: Vec<JobId>,
    /// Jobs restored running, to be settled at the next collection.
    unsettled_jobs: Vec<JobId>,
    /// Keys of jobs not restored, and since when: removed a `task_retention` later.
    orphan_job_keys: Vec<(i64, JobId)>,
    /// Jobs by idempotency key (tenant, key), and the key of each job made with one.
    job_keys: HashMap<(String, String), JobId>,
    job_key_of: HashMap<JobId, (String, String)>,
    /// The PENDING tasks, by tenant.
    queues: Queues,
    /// What each tenant's tasks hold (ASSIGNED or RUNNING); tenants holding nothing absent.
    held: HashMap<String, crate::partition::Resources>,
    /// Tenants' settings set by `corral tenant set`, preferred to the config file's.
    tenant_set: BTreeMap<String, TenantSettings>,
    /// The settings of a tenant named nowhere.
    default_tenant: TenantSettings,
    /// Fuel spent and held, by tenant.
    ledger: fuel::Ledger,
    /// When each tenant was last given a slot, on a clock of placements: tenants of equal
    /// share take turns. Not stored (all start equal after a restart).
    served: HashMap<String, u64>,
    /// The clock of placements.
    placements: u64,
    /// The latest wall-clock time the fuel ledger has seen (ms): its windows never go back
    /// with the system's clock.
    ledger_ms: i64,
    /// The minute of `ledger_ms` when the ledger last moved on.
    ledger_minute: i64,
    idempotency: HashMap<(String, String), TaskId>,
    /// The idempotency key of each task submitted with one.
    key_of: HashMap<TaskId, (String, String)>,
    /// Tasks that ended, by when (ms since the epoch): the oldest are removed first.
    ended: BTreeSet<(i64, TaskId)>,
    registry: Registry,
    partitions: BTreeMap<String, Partition>,
    /// Agents whose session stream is attached, with that session.
    attached: HashMap<String, u64>,
    /// Commands for agents not attached yet (reconciliation kills), sent when they attach.
    queued: HashMap<String, Vec<AgentCommand>>,
    modules: BTreeMap<String, ModuleUse>,
    /// Uploaded inputs, who uploaded them and the tasks that mount them.
    inputs: inputs::Inputs,
    next_id: u64,
    /// Something changed that may let a pending task be placed.
    dirty: bool,
    /// Agents whose partitions are to be carved again once no task holds resources there,
    /// with the carving they wait for.
    stale_carving: BTreeMap<String, Vec<Partition>>,
    /// Every token, by accessor.
    tokens: BTreeMap<String, TokenRecord>,
    /// (sha256, tenant) of each module a tenant uploaded.
    module_owners: HashSet<(String, String)>,
    /// The last audit entry's seq.
    audit_seq: u64,
    /// The audit log's entries kept: (seq, when), oldest first; refused calls apart, so that
    /// a flood of them never pushes out the rest.
    audit_kept: VecDeque<(u64, i64)>,
    /// The same, of `auth.refused` entries.
    refusals_kept: VecDeque<(u64, i64)>,
}

/// A task as clients see it in events and listings: without its stdin bytes.
pub fn public(task: &Task) -> Task {
    let mut task = task.clone();
    task.spec.stdin = Bytes::new();
    task
}

/// What a submit of a module that is not stored (or, for a tenant, not its own) answers.
pub fn unknown_module(sha256: &str) -> HostError {
    HostError::NotFound(format!("no module with sha256 {sha256}: upload it first"))
}

fn unknown_task(id: TaskId) -> HostError {
    HostError::NotFound(format!("no task {id}"))
}

fn request(spec: &TaskSpec) -> Request<'_> {
    Request {
        resources: spec.resources(),
        tenant: &spec.tenant,
        labels: &spec.labels,
        constraints: &spec.constraints,
    }
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

fn attempt_of(task: &Task) -> Attempt {
    Attempt {
        task_id: task.id,
        attempt: task.attempts,
    }
}

impl HostState {
    /// An empty state under `config`.
    pub fn new(config: &HostConfig) -> Self {
        Self {
            rules: Rules {
                strategy: config.strategy,
                order: config.order,
                tenants: config.tenants.clone(),
                heartbeat_timeout: config.heartbeat_timeout,
                templates: config.partitions.clone(),
                max_output_bytes: config.max_output_size.as_u64(),
                task_retention_ms: millis(config.task_retention),
                module_retention_ms: millis(config.module_retention),
                input_retention_ms: millis(config.input_retention),
                audit_retention_ms: millis(config.audit_retention),
                fuel_window_ms: millis(config.fuel_window),
            },
            tasks: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job_id: 0,
            orphan_jobs: Vec::new(),
            unsettled_jobs: Vec::new(),
            orphan_job_keys: Vec::new(),
            job_keys: HashMap::new(),
            job_key_of: HashMap::new(),
            queues: Queues::default(),
            held: HashMap::new(),
            tenant_set: BTreeMap::new(),
            default_tenant: TenantSettings::default(),
            ledger: fuel::Ledger::default(),
            served: HashMap::new(),
            placements: 0,
            ledger_ms: 0,
            ledger_minute: 0,
            idempotency: HashMap::new(),
            key_of: HashMap::new(),
            ended: BTreeSet::new(),
            registry: Registry::default(),
            partitions: BTreeMap::new(),
            attached: HashMap::new(),
            queued: HashMap::new(),
            modules: BTreeMap::new(),
            inputs: inputs::Inputs::default(),
            next_id: 0,
            dirty: false,
            stale_carving: BTreeMap::new(),
            tokens: BTreeMap::new(),
            module_owners: HashSet::new(),
            audit_seq: 0,
            audit_kept: VecDeque::new(),
            refusals_kept: VecDeque::new(),
        }
    }

    /// The state a store held, as a host starting on it sees it: no agent attached (each has
    /// one heartbeat timeout from `now` to come back), their partitions draining until then,
    /// allocations recomputed from the tasks that hold resources, PENDING tasks queued, and
    /// every module as if used `now` (its last use is not stored).
    pub fn restore(config: &HostConfig, loaded: Loaded, now: Now) -> Self {
        let mut state = Self::new(config);
        state.next_id = loaded.highest_task_id;
        // The ledger's clock goes on from the latest minute it charged, whatever the system's
        // clock says now.
        state.ledger_ms = loaded.fuel_minutes.iter().map(|m| m.1).max().unwrap_or(0);
        state.ledger = fuel::Ledger::restore(loaded.fuel_minutes, loaded.fuel_totals);
        for (info, seen) in loaded.agents {
            state.registry.restore(info, now.instant, seen);
        }
        for mut p in loaded.partitions {
            p.draining = true;
            p.allocated = Default::default();
            if let Some(agent) = state.registry.get(&p.agent_id) {
                p.agent_labels = agent.info.labels.clone();
            }
            state.partitions.insert(p.id.clone(), p);
        }
        for (sha, facts) in loaded.modules {
            let used = ModuleUse {
                stored: true,
                tasks: 0,
                last_used_ms: now.ms,
                facts,
            };
            state.modules.insert(sha, used);
        }
        state.restore_inputs(loaded.inputs, loaded.input_owners, now);
        state.next_job_id = loaded.highest_job_id;
        state.restore_jobs(loaded.jobs, loaded.job_keys, now);
        for task in loaded.tasks {
            state.next_id = state.next_id.max(task.id.0);
            if task.state == TaskState::Pending {
                state.queues.insert(&task.spec, task.id);
            }
            // A job's tasks are kept until its whole job is past its retention.
            let job_ended = state.restore_job_task(&task);
            if let Some(job_ended) = job_ended {
                if job_ended != 0 {
                    state.ended.insert((job_ended, task.id));
                }
            } else if task.state.is_terminal() {
                // A record without its end time (none should be) counts from its last change.
                let ended = match task.finished_at_ms {
                    0 => task.updated_at_ms,
                    ms => ms,
                };
                state.ended.insert((ended, task.id));
            }
            let used = state
                .modules
                .entry(task.spec.module_sha256.clone())
                .or_insert(ModuleUse {
                    stored: false,
                    tasks: 0,
                    last_used_ms: now.ms,
                    facts: ModuleFacts::default(),
                });
            used.tasks += 1;
            state.restore_task_inputs(&task, now);
            if task.state.holds_resources() {
                tenants::hold(&mut state.held, &task.spec.tenant, &task.spec.resources());
                state.ledger.hold(&task.spec.tenant, task.spec.limits.fuel);
                state.ledger.live(&task.spec.tenant, 0, task.fuel_used);
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
        for (key, id) in loaded.idempotency {
            // A key whose task is not loaded (set aside as undecodable) names nothing that
            // will end: it is kept for one retention from this start, then removed. (Its
            // quarantine time is not stored: a host restarted more often than its retention
            // keeps such keys, a few bytes each, until a start lasts that long.)
            if !state.tasks.contains_key(&id) {
                state.ended.insert((now.ms, id));
            }
            state.key_of.insert(id, key.clone());
            state.idempotency.insert(key, id);
        }
        for token in loaded.tokens {
            state.tokens.insert(token.accessor.clone(), token);
        }
        state.module_owners = loaded.module_owners.into_iter().collect();
        state.tenant_set = loaded.tenants.into_iter().collect();
        state.audit_seq = loaded.highest_audit_seq;
        // A damaged entry (no time) counts from this start.
        for (seq, at, refusal) in loaded.audit {
            let kept = match refusal {
                true => &mut state.refusals_kept,
                false => &mut state.audit_kept,
            };
            kept.push_back((seq, at.min(now.ms)));
        }
        state.finish_restoring_jobs();
        state.dirty = !state.queues.is_empty();
        state
    }

    // ----- modules ------------------------------------------------------------------------

    /// Whether a module with this sha256 is stored.
    pub fn has_module(&self, sha256: &str) -> bool {
        self.modules.get(sha256).is_some_and(|used| used.stored)
    }

    /// Records an uploaded module with its facts: used `now`. True when it was not stored,
    /// so that its binary is to be written with this change.
    pub fn module_stored(&mut self, sha256: &str, facts: ModuleFacts, now: Now) -> bool {
        let used = self.modules.entry(sha256.to_string()).or_default();
        let new = !used.stored;
        used.stored = true;
        used.facts = facts;
        used.last_used_ms = used.last_used_ms.max(now.ms);
        new
    }

    /// Refuses module `sha256` (stored) for a task of `tenant` submitted with its own token
    /// when the tenant's policy forbids it: too large, or importing what it may not.
    pub fn check_module_policy(&self, tenant: &str, sha256: &str) -> Result<(), HostError> {
        let facts = match self.modules.get(sha256) {
            Some(used) if used.stored => used.facts,
            _ => return Err(unknown_module(sha256)),
        };
        self.tenant_settings(tenant)
            .0
            .check_module(tenant, sha256, facts.size, facts.imports)
            .map_err(HostError::FailedPrecondition)
    }

    // ----- tasks --------------------------------------------------------------------------

    /// Records a new PENDING task, or answers the task an idempotency key (per tenant) already
    /// names: (id, whether it existed). Refused when its module is not stored, or when no
    /// registered agent could ever hold it.
    pub fn submit(
        &mut self,
        spec: TaskSpec,
        idempotency_key: Option<String>,
        now: Now,
        fx: &mut Effects,
    ) -> Result<(TaskId, bool), HostError> {
        let key = idempotency_key.map(|k| (spec.tenant.clone(), k));
        if let Some(id) = key.as_ref().and_then(|k| self.idempotency.get(k)) {
            // As Stripe's keys: the same key with another request is a client's mistake, not
            // a request to answer with the first task.
            let shown = crate::convert::shown(&key.as_ref().expect("a key").1);
            match self.tasks.get(id) {
                Some(first) if !same_request(&first.spec, &spec) => {
                    return Err(HostError::FailedPrecondition(format!(
                        "idempotency key {shown} was used for task {id} with a different spec; \
                         use a new key for a new task"
                    )))
                }
                Some(_) => return Ok((*id, true)),
                None => {
                    return Err(HostError::FailedPrecondition(format!(
                        "idempotency key {shown} names task {id}, whose record could not be \
                         loaded (see the host's log)"
                    )))
                }
            }
        }
        self.check_could_run(&spec)?;
        self.admit_for_tenant(&spec.tenant, &spec.resources(), spec.limits.fuel, 1)?;
        self.next_id += 1;
        let id = TaskId(self.next_id);
        let used = self
            .modules
            .get_mut(&spec.module_sha256)
            .expect("checked above");
        used.tasks += 1;
        used.last_used_ms = used.last_used_ms.max(now.ms);
        self.inputs_mounted(&spec.tenant, &spec.inputs, 1, now);
        let task = Task::new(id, spec, now.ms);
        if let Some((tenant, key)) = key {
            self.idempotency.insert((tenant.clone(), key.clone()), id);
            self.key_of.insert(id, (tenant.clone(), key.clone()));
            fx.writes.push(Write::Idempotency(tenant, key, id));
        }
        fx.writes.push(Write::Task(task.clone()));
        fx.events.push(Arc::new(public(&task)));
        self.queues.insert(&task.spec, id);
        self.tasks.insert(id, task);
        self.dirty = true;
        Ok((id, false))
    }

    /// Refuses a task whose module is not stored, or that no registered agent could ever hold.
    fn check_could_run(&self, spec: &TaskSpec) -> Result<(), HostError> {
        if !self.has_module(&spec.module_sha256) {
            return Err(unknown_module(&spec.module_sha256));
        }
        let request = request(spec);
        // Usually the first partition could hold it; the reason is worked out only when none
        // could.
        if !self.registry.is_empty()
            && !self
                .lasting_partitions()
                .any(|p| candidate(p).could_ever_hold(&request))
        {
            let candidates: Vec<Candidate<'_>> = self.lasting_partitions().map(candidate).collect();
            if let Some(reason) = never_fits(&candidates, &request) {
                return Err(HostError::FailedPrecondition(format!(
                    "no agent could ever run this task: {reason}"
                )));
            }
        }
        Ok(())
    }

    /// Whether idempotency key `key` of `tenant` names a task.
    pub fn names_task(&self, tenant: &str, key: &str) -> bool {
        self.idempotency
            .contains_key(&(tenant.to_string(), key.to_string()))
    }

    /// One task (with its stdin).
    pub fn get(&self, id: TaskId) -> Result<&Task, HostError> {
        self.tasks.get(&id).ok_or_else(|| self.missing(id))
    }

    /// What a lookup of task `id` that is not here answers.
    fn missing(&self, id: TaskId) -> HostError {
        if id.0 <= self.next_id {
            HostError::NotFound(format!(
                "no task {id}: it ended more than {} ago and was removed (the host's \
                 task_retention)",
                humantime::format_duration(Duration::from_millis(
                    self.rules.task_retention_ms.unsigned_abs()
                ))
            ))
        } else {
            unknown_task(id)
        }
    }

    /// The last agent session handed out.
    pub fn last_session(&self) -> u64 {
        self.registry.last_session()
    }

    /// Hands out agent sessions after `last` (see [`Registry::continue_sessions_after`]).
    pub fn continue_sessions_after(&mut self, last: u64) {
        self.registry.continue_sessions_after(last);
    }

    // ----- retention ----------------------------------------------------------------------

    /// Removes what is past its retention at `now`: tasks that ended more than
    /// `task_retention` ago (at most [`MAX_COLLECT`] at once), with their outputs and
    /// idempotency keys, then modules that no kept task refers to and that were not used for
    /// `module_retention` (as many at most). Called on every liveness tick.
    pub fn collect(&mut self, now: Now, fx: &mut Effects) -> Collected {
        let mut collected = Collected::default();
        let cutoff = now.ms.saturating_sub(self.rules.task_retention_ms);
        let mut popped = 0;
        while let Some(&(ended_ms, id)) = self.ended.first() {
            if ended_ms > cutoff || popped == MAX_COLLECT {
                break;
            }
            self.ended.pop_first();
            popped += 1;
            if let Some(key) = self.key_of.remove(&id) {
                self.idempotency.remove(&key);
                fx.writes.push(Write::ForgetIdempotency(key.0, key.1));
            }
            let Some(task) = self.tasks.remove(&id) else {
                continue;
            };
            self.job_task_removed(&task, fx);
            self.task_inputs_removed(&task, now);
            let sha = &task.spec.module_sha256;
            if let Some(used) = self.modules.get_mut(sha) {
                used.tasks = used.tasks.saturating_sub(1);
                used.last_used_ms = used.last_used_ms.max(now.ms);
                if !used.stored && used.tasks == 0 {
                    self.modules.remove(sha);
                }
            }
            fx.writes.push(Write::ForgetTask(id));
            collected.tasks += 1;
        }
        self.collect_orphan_jobs(now, fx);
        self.settle_restored_jobs(now, fx);
        let cutoff = now.ms.saturating_sub(self.rules.module_retention_ms);
        let unused: Vec<String> = self
            .modules
            .iter()
            .filter(|(_, used)| used.stored && used.tasks == 0 && used.last_used_ms <= cutoff)
            .map(|(sha, _)| sha.clone())
            .take(MAX_COLLECT)
            .collect();
        for sha in unused {
            self.modules.remove(&sha);
            self.module_owners
                .retain(|(owner_sha, _)| *owner_sha != sha);
            fx.writes.push(Write::ForgetModule(sha));
            collected.modules += 1;
        }
        let cutoff = now.ms.saturating_sub(self.rules.input_retention_ms);
        collected.inputs = self.collect_inputs(cutoff, fx);
        collected.audit = self.collect_audit(now, fx);
        // A tenant with nothing placed or waiting has had its turn.
        let (queues, held) = (&self.queues, &self.held);
        self.served
            .retain(|t, _| queues.queued(t) > 0 || held.contains_key(t));
        // The fuel ledger moves by the minute: charges leave windows only as minutes pass.
        let ledger_ms = self.ledger_ms.max(now.ms);
        self.ledger_ms = ledger_ms;
        let minute = ledger_ms.div_euclid(fuel::MINUTE_MS);
        if minute != self.ledger_minute {
            self.ledger_minute = minute;
            // Tasks waiting for a budget may fit once a minute's charges left the window.
            if self
                .queues
                .tenants()
                .any(|(t, _)| self.tenant_settings(t).0.fuel_budget.is_some())
            {
                self.dirty = true;
            }
            // A tenant with a budget keeps the longest period a budget may have, so that a
            // longer period set later counts what was spent; others keep `fuel_window`.
            let window = self.rules.fuel_window_ms;
            let longest =
                i64::try_from(crate::tenant::MAX_BUDGET_PERIOD.as_millis()).unwrap_or(i64::MAX);
            let budgeted: HashSet<String> = self
                .ledger
                .tenants()
                .filter(|t| self.tenant_settings(t).0.fuel_budget.is_some())
                .cloned()
                .collect();
            let keep = |t: &str| match budgeted.contains(t) {
                true => longest.max(window),
                false => window,
            };
            self.ledger.forget(ledger_ms, keep, &mut fx.writes);
        }
        collected
    }

    /// Tasks after `after` (exclusive) in id order that pass `filter`, at most `limit`, without
    /// stdin, a pending one's reason worked out at `now`; and whether more remain.
    pub fn list(
        &self,
        filter: &TaskFilter,
        after: Option<TaskId>,
        limit: usize,
        now: Now,
    ) -> (Vec<Task>, bool) {
        let mut start = after.map_or(0, |a| a.0.saturating_add(1));
        let mut end = u64::MAX;
        if let Some(job) = filter.job {
            // A job's tasks are consecutive ids; another tenant's job lists nothing.
            let Ok(entry) = self.job_entry(job, filter.tenant.as_deref()) else {
                return (Vec::new(), false);
            };
            start = start.max(entry.job.first.0);
            end = entry.job.first.0 + u64::from(entry.job.count);
            if start >= end {
                return (Vec::new(), false);
            }
        }
        let mut out = Vec::new();
        let mut more = false;
        for task in self.tasks.range(TaskId(start)..TaskId(end)).map(|(_, t)| t) {
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
        self.explain(&mut out, now);
        (out, more)
    }

    /// Kills a task: a PENDING one at once; a placed one through its agent (the answer is the
    /// task as it is now, KILLED when the agent reports); a placed one whose agent is away at
    /// once, the kill queued for when the agent comes back.
    pub fn kill(&mut self, id: TaskId, now: Now, fx: &mut Effects) -> Result<Task, HostError> {
        self.kill_for(id, None, now, fx)
    }

    /// [`HostState::kill`], with why, when it is not the caller's request.
    fn kill_for(
        &mut self,
        id: TaskId,
        why: Option<&str>,
        now: Now,
        fx: &mut Effects,
    ) -> Result<Task, HostError> {
        let (asked, ended) = match why {
            None => (
                "kill requested".to_string(),
                "killed on request".to_string(),
            ),
            Some(why) => (format!("kill requested: {why}"), format!("killed: {why}")),
        };
        let task = self.tasks.get(&id).ok_or_else(|| unknown_task(id))?;
        if task.state.is_terminal() {
            return Err(HostError::FailedPrecondition(format!(
                "task {id} already ended ({})",
                task.state
            )));
        }
        let attempt = attempt_of(task);
        let placed_on = task
            .agent_id
            .clone()
            .filter(|_| task.state.holds_resources());
        self.tasks
            .get_mut(&id)
            .expect("looked up above")
            .kill_requested = true;
        match placed_on {
            Some(agent) if self.attached.contains_key(&agent) => {
                fx.commands.push((agent, AgentCommand::Kill(attempt)));
                let task = self.tasks.get_mut(&id).expect("looked up above");
                task.reason = asked;
                task.updated_at_ms = now.ms;
                fx.writes.push(Write::Task(task.clone()));
                let shown = public(task);
                fx.events.push(Arc::new(shown.clone()));
                Ok(shown)
            }
            placed_on => {
                if let Some(agent) = placed_on {
                    self.queued
                        .entry(agent)
                        .or_default()
                        .push(AgentCommand::Kill(attempt));
                }
                // Its agent is away: the attempt may run on there, so no final figure is known.
                let task = self.end(id, TaskState::Killed, &ended, false, now, fx);
                Ok(public(&task))
            }
        }
    }

    // ----- scheduling ---------------------------------------------------------------------

    /// One scheduling round, when something changed since the last that may let a pending
    /// task be placed: plans the pending tasks over the partitions and applies the plan
    /// (ASSIGNED, allocation taken, a launch for each placement's agent).
    pub fn schedule(&mut self, now: Now, fx: &mut Effects) {
        if !std::mem::take(&mut self.dirty) || self.queues.is_empty() {
            return;
        }
        let candidates: Vec<Candidate<'_>> = self.partitions.values().map(candidate).collect();
        // With every slot taken, no plan can place anything: skip the pass over the queue.
        if candidates.iter().all(|c| c.draining || c.free.slots == 0) {
            return;
        }
        // Read lazily: the plan stops once every slot is taken.
        let tasks = &self.tasks;
        let tenants = self
            .queues
            .tenants()
            .map(|(tenant, queue)| TenantQueue {
                tenant,
                share: self.tenant_settings(tenant).0.share(),
                held: self.held_by(tenant),
                fuel_left: self.fuel_left(tenant, now),
                smallest: queue.smallest(),
                served: self.served.get(tenant.as_str()).copied().unwrap_or(0),
                groups: queue.groups().map(|(first, ids)| {
                    (
                        first,
                        ids.iter()
                            .filter_map(|id| tasks.get(id))
                            .map(|t| PendingTask {
                                task_id: t.id,
                                request: request(&t.spec),
                                fuel: t.spec.limits.fuel,
                            }),
                    )
                }),
            })
            .collect();
        let plan = scheduler::plan(
            &candidates,
            tenants,
            self.rules.strategy,
            self.rules.order,
            MAX_ROUND,
        );
        let placements: Vec<(TaskId, String)> = plan
            .placements
            .iter()
            .map(|p| (p.task_id, candidates[p.partition].partition_id.to_string()))
            .collect();
        drop(candidates);
        for (task_id, partition_id) in placements {
            let (Some(p), Some(task)) = (
                self.partitions.get_mut(&partition_id),
                self.tasks.get_mut(&task_id),
            ) else {
                continue;
            };
            p.allocated = p.allocated.plus(&task.spec.resources());
            tenants::hold(&mut self.held, &task.spec.tenant, &task.spec.resources());
            self.ledger.hold(&task.spec.tenant, task.spec.limits.fuel);
            self.placements += 1;
            match self.served.get_mut(&task.spec.tenant) {
                Some(at) => *at = self.placements,
                None => {
                    self.served
                        .insert(task.spec.tenant.clone(), self.placements);
                }
            }
            jobs::moved(&mut self.jobs, task, TaskState::Assigned);
            task.state = TaskState::Assigned;
            task.attempts += 1;
            task.agent_id = Some(p.agent_id.clone());
            task.partition_id = Some(p.id.clone());
            task.reason.clear();
            task.updated_at_ms = now.ms;
            task.fuel_used = 0;
            task.peak_memory_bytes = 0;
            task.guest_warnings = 0;
            task.wall_us = 0;
            task.progress = None;
            // The new attempt has no outcome yet; the last one's is in the task's reason.
            task.outcome = None;
            self.queues.remove(&task.spec, task_id);
            if self.attached.contains_key(&p.agent_id) {
                let launch = AgentCommand::Launch(attempt_of(task), Arc::new(task.spec.clone()));
                fx.commands.push((p.agent_id.clone(), launch));
            }
            fx.events.push(Arc::new(public(task)));
            fx.writes.push(Write::Task(task.clone()));
        }
    }

    // ----- agents -------------------------------------------------------------------------

    /// Registers an agent (or one coming back) and reconciles: attempts placed there that the
    /// agent neither runs nor holds a final report for are LOST; attempts it runs that the host
    /// does not expect there are killed once it attaches. Answers the session.
    pub fn register(
        &mut self,
        info: AgentInfo,
        running: &[Attempt],
        unacknowledged: &[Attempt],
        now: Now,
        fx: &mut Effects,
    ) -> Result<u64, HostError> {
        if let Some(problem) = corral_proto::agent_id_problem(&info.id) {
            return Err(HostError::InvalidArgument(problem));
        }
        if info.capacity.slots == 0 || info.capacity.memory_bytes == 0 {
            return Err(HostError::InvalidArgument(format!(
                "agent {} offers no capacity: it needs at least one slot and some memory",
                info.id
            )));
        }
        let session = self.registry.register(info.clone(), now.instant, now.ms);
        // A new registration replaces any stream of the old session; nothing goes to the
        // agent's partitions until the new one attaches.
        self.attached.remove(&info.id);
        // Its labels (which constraints match) take effect at once; the labels are stored
        // with the agent, not the partitions.
        for p in self
            .partitions
            .values_mut()
            .filter(|p| p.agent_id == info.id)
        {
            p.draining = true;
            p.agent_labels.clone_from(&info.labels);
        }
        fx.writes.push(Write::Agent(info.clone(), now.ms));

        let reported: BTreeSet<&Attempt> = running.iter().chain(unacknowledged).collect();
        let forgotten: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.state.holds_resources() && t.agent_id.as_deref() == Some(&info.id))
            .filter(|t| !reported.contains(&attempt_of(t)))
            .map(|t| t.id)
            .collect();
        for id in forgotten {
            let reason = format!("agent {} came back without it", info.id);
            self.lose(id, &reason, now, fx);
        }
        // Carved (again) when the agent is new, or its capacity or labels or the config's
        // templates (a host restarted with a new config) carve it otherwise now: at once if
        // it holds no task, else once its last task there ends, so that no placed task loses
        // the partition it counts in.
        match self.carving_if_stale(&info) {
            Some(carved) => {
                self.stale_carving.insert(info.id.clone(), carved);
                self.carve_when_idle(&info.id, fx);
            }
            // Back as it was carved (a resize undone): nothing to wait for.
            None => {
                self.stale_carving.remove(&info.id);
            }
        }
        let kills = running
            .iter()
            .filter(|a| !self.expects(&info.id, a))
            .map(|a| AgentCommand::Kill(a.clone()))
            .collect();
        self.queued.insert(info.id.clone(), kills);
        Ok(session)
    }

    /// The partitions the config carves from `info` now, when the agent's are not those, or
    /// some task holds resources on it outside them (a partition missing or over capacity,
    /// as a store written before this rule may hold).
    fn carving_if_stale(&self, info: &AgentInfo) -> Option<Vec<Partition>> {
        let carved = partition::carve(&info.id, info.capacity, &info.labels, &self.rules.templates);
        let shape = |p: &Partition| (p.id.clone(), p.capacity, p.reservation.clone());
        let mut existing: Vec<_> = self
            .partitions
            .values()
            .filter(|p| p.agent_id == info.id)
            .map(shape)
            .collect();
        existing.sort_by(|a, b| a.0.cmp(&b.0));
        let mut fresh: Vec<_> = carved.iter().map(shape).collect();
        fresh.sort_by(|a, b| a.0.cmp(&b.0));
        let outside = || {
            self.tasks.values().any(|t| {
                t.state.holds_resources()
                    && t.agent_id.as_deref() == Some(&info.id)
                    && t.partition_id
                        .as_ref()
                        .and_then(|p| self.partitions.get(p))
                        .is_none_or(|p| !p.capacity.covers(&p.allocated))
            })
        };
        (existing != fresh || outside()).then_some(carved)
    }

    /// Every partition as it will be once waiting carvings are done: what a task could ever
    /// be placed in.
    fn lasting_partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions
            .values()
            .filter(|p| !self.stale_carving.contains_key(&p.agent_id))
            .chain(self.stale_carving.values().flatten())
    }

    /// Carves an agent whose carving is stale, if no task holds resources on it: its
    /// partitions are replaced (and written), draining unless it is attached.
    fn carve_when_idle(&mut self, agent_id: &str, fx: &mut Effects) {
        // Checked first: every task's end comes here, and the scan is for stale agents only.
        if !self.stale_carving.contains_key(agent_id) {
            return;
        }
        let busy = self
            .tasks
            .values()
            .any(|t| t.state.holds_resources() && t.agent_id.as_deref() == Some(agent_id));
        if busy {
            return;
        }
        let Some(mut carved) = self.stale_carving.remove(agent_id) else {
            return;
        };
        let draining = !self.attached.contains_key(agent_id);
        for p in &mut carved {
            p.draining = draining;
        }
        self.partitions.retain(|_, p| p.agent_id != agent_id);
        fx.writes
            .push(Write::Partitions(agent_id.to_string(), carved.clone()));
        self.partitions
            .extend(carved.into_iter().map(|p| (p.id.clone(), p)));
        self.dirty = true;
    }

    /// Whether `attempt` is the current one of a task placed on `agent_id`.
    fn expects(&self, agent_id: &str, attempt: &Attempt) -> bool {
        self.tasks.get(&attempt.task_id).is_some_and(|t| {
            t.state.holds_resources()
                && t.attempts == attempt.attempt
                && t.agent_id.as_deref() == Some(agent_id)
        })
    }

    /// Attaches an agent's session stream: the commands queued for it go out, launches of its
    /// ASSIGNED attempts and kills of attempts a kill was asked for go again (the old stream
    /// may have dropped them; the agent ignores a launch it already has), and its partitions
    /// take tasks.
    pub fn attach(
        &mut self,
        agent_id: &str,
        session: u64,
        now: Now,
        fx: &mut Effects,
    ) -> Result<(), HostError> {
        if !self.registry.heard(agent_id, session, now.instant, now.ms) {
            return Err(HostError::FailedPrecondition(format!(
                "agent {agent_id} session {session} is not current: register again"
            )));
        }
        for command in self.queued.remove(agent_id).unwrap_or_default() {
            fx.commands.push((agent_id.to_string(), command));
        }
        for task in self.tasks.values() {
            if !task.state.holds_resources() || task.agent_id.as_deref() != Some(agent_id) {
                continue;
            }
            let command = if task.kill_requested {
                // The kill may not have reached it before its stream went down.
                AgentCommand::Kill(attempt_of(task))
            } else if task.state == TaskState::Assigned {
                AgentCommand::Launch(attempt_of(task), Arc::new(task.spec.clone()))
            } else {
                continue;
            };
            fx.commands.push((agent_id.to_string(), command));
        }
        self.attached.insert(agent_id.to_string(), session);
        // Partitions waiting to be carved again take no new tasks, so that they empty.
        let stale = self.stale_carving.contains_key(agent_id);
        for p in self
            .partitions
            .values_mut()
            .filter(|p| p.agent_id == agent_id)
        {
            p.draining = stale;
        }
        self.dirty = true;
        Ok(())
    }

    /// Records a heartbeat. False when the session is not current (the agent must register).
    pub fn heartbeat(&mut self, agent_id: &str, session: u64, now: Now) -> bool {
        self.registry.heard(agent_id, session, now.instant, now.ms)
    }

    /// The agent's stream of `session` ended: its partitions take no new tasks, and it is lost
    /// unless it comes back within the heartbeat timeout.
    pub fn detach(&mut self, agent_id: &str, session: u64) {
        if self.attached.get(agent_id) == Some(&session) {
            self.attached.remove(agent_id);
        }
        if self.registry.disconnected(agent_id, session) {
            for p in self
                .partitions
                .values_mut()
                .filter(|p| p.agent_id == agent_id)
            {
                p.draining = true;
            }
        }
    }

    /// Declares agents silent past the heartbeat timeout lost, and their attempts LOST.
    /// Answers the agents lost.
    pub fn expire(&mut self, now: Now, fx: &mut Effects) -> Vec<String> {
        let lost = self
            .registry
            .expire(now.instant, self.rules.heartbeat_timeout);
        for agent in &lost {
            self.attached.remove(agent);
            for p in self
                .partitions
                .values_mut()
                .filter(|p| p.agent_id == *agent)
            {
                p.draining = true;
            }
            let held: Vec<TaskId> = self
                .tasks
                .values()
                .filter(|t| t.state.holds_resources() && t.agent_id.as_deref() == Some(agent))
                .map(|t| t.id)
                .collect();
            for id in held {
                self.lose(id, &format!("agent {agent} lost"), now, fx);
            }
        }
        lost
    }

    /// The session `agent_id` is attached with, if it is.
    pub fn attached_session(&self, agent_id: &str) -> Option<u64> {
        self.attached.get(agent_id).copied()
    }

    /// Applies an agent's report on one attempt. Reports from a session that is not attached
    /// are ignored. A report on an attempt the host no longer expects there is acknowledged
    /// (final) or killed (running). A RUNNING report moves an ASSIGNED task to RUNNING (a
    /// durable change) and otherwise updates its live figures (fuel so far, progress), which
    /// are not written. A final report ends the attempt: the task, its output and an Ack.
    pub fn report(
        &mut self,
        agent_id: &str,
        session: u64,
        attempt: Attempt,
        report: StatusReport,
        now: Now,
        fx: &mut Effects,
    ) {
        let Some(reported) = report.state else { return };
        if self.attached.get(agent_id) != Some(&session) {
            return;
        }
        self.registry.heard(agent_id, session, now.instant, now.ms);
        if !self.expects(agent_id, &attempt) {
            let command = if reported.is_terminal() {
                AgentCommand::Ack(attempt)
            } else {
                AgentCommand::Kill(attempt)
            };
            fx.commands.push((agent_id.to_string(), command));
            return;
        }
        let task = self
            .tasks
            .get_mut(&attempt.task_id)
            .expect("an expected attempt's task exists");
        // An attempt's fuel only grows: a report without the figure (an agent that failed
        // after the guest ran) does not take back what earlier reports said.
        let fuel_used = task.fuel_used.max(report.fuel_used);
        self.ledger
            .live(&task.spec.tenant, task.fuel_used, fuel_used);
        task.fuel_used = fuel_used;
        task.peak_memory_bytes = task.peak_memory_bytes.max(report.peak_memory_bytes);
        task.wall_us = report.wall_us;
        if report.progress.is_some() {
            task.progress = report.progress;
        }
        task.updated_at_ms = now.ms;
        if !reported.is_terminal() {
            if task.state == TaskState::Assigned {
                jobs::moved(&mut self.jobs, task, TaskState::Running);
                task.state = TaskState::Running;
                task.started_at_ms = now.ms;
                task.reason.clear();
                fx.writes.push(Write::Task(task.clone()));
            }
            fx.events.push(Arc::new(public(task)));
            return;
        }
        let outcome = match report.outcome {
            // Only a kill the host asked for ends an attempt KILLED; an agent that stopped one
            // on its own (shutting down) failed to run it.
            Some(o) if o.kind == OutcomeKind::Killed && !task.kill_requested => OutcomeRecord {
                kind: OutcomeKind::AgentError,
                exit_code: 0,
                message: format!("agent {agent_id} stopped the attempt though no kill was asked"),
            },
            Some(o) => o,
            None => OutcomeRecord {
                kind: OutcomeKind::AgentError,
                exit_code: 0,
                message: format!("agent {agent_id} reported the attempt ended without an outcome"),
            },
        };
        task.peak_memory_bytes = report.peak_memory_bytes;
        task.guest_warnings = report.guest_warnings;
        let reason = outcome.reason();
        let ended = outcome.kind.final_state();
        task.outcome = Some(outcome);
        let task = self.end(attempt.task_id, ended, &reason, true, now, fx);
        let mut output = report.output.unwrap_or_default();
        cap_output(&mut output, self.rules.max_output_bytes);
        fx.writes.push(Write::Output(task.id, output));
        fx.commands
            .push((agent_id.to_string(), AgentCommand::Ack(attempt)));
    }

    // ----- views --------------------------------------------------------------------------

    /// Every agent, by id.
    pub fn agents(&self) -> Vec<AgentView> {
        let mut running: HashMap<&str, u32> = HashMap::new();
        for task in self.tasks.values().filter(|t| t.state.holds_resources()) {
            if let Some(agent) = &task.agent_id {
                *running.entry(agent.as_str()).or_default() += 1;
            }
        }
        self.registry
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
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.partitions.values()
    }

    /// Tasks in the pending queues, tenant by tenant (in no particular order within one).
    pub fn pending(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.queues.ids()
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    // ----- internals ----------------------------------------------------------------------

    /// Ends the task's current attempt in `ended`: frees what it held, and queues it again when
    /// its retry policy allows. Writes the task, tells watchers (the state it ended in, then
    /// PENDING when retried), and answers it as it now is. `reported`: the attempt's agent sent
    /// its final report (its figures are final); otherwise the agent may still be running it.
    fn end(
        &mut self,
        id: TaskId,
        ended: TaskState,
        reason: &str,
        reported: bool,
        now: Now,
        fx: &mut Effects,
    ) -> Task {
        let task = self.tasks.get_mut(&id).expect("ending a known task");
        // A task a kill was asked for is never run again: an attempt lost, or failed by
        // Corral, ends it KILLED. One that finished or failed on its own before the kill
        // landed keeps that ending.
        let corral_failed = task
            .outcome
            .as_ref()
            .is_some_and(|o| o.kind.is_corral_failure());
        let (ended, reason) = if task.kill_requested
            && (ended == TaskState::Lost || (ended == TaskState::Failed && corral_failed))
        {
            (
                TaskState::Killed,
                format!("killed on request (its attempt ended {ended}: {reason})"),
            )
        } else {
            (ended, reason.to_string())
        };
        if task.state.holds_resources() {
            if let Some(p) = task
                .partition_id
                .as_ref()
                .and_then(|p| self.partitions.get_mut(p))
            {
                p.allocated = p.allocated.minus(&task.spec.resources());
            }
            tenants::release(&mut self.held, &task.spec.tenant, &task.spec.resources());
            // What the attempt spent is charged to its tenant, never more than its limit: its
            // final figure; or, when it ended without one (its agent lost or away), its whole
            // limit, since the agent may run it on to that limit and its report would not
            // count then. So no budget is ever passed, whatever agents do.
            let limit = task.spec.limits.fuel;
            let charged = if reported { task.fuel_used } else { limit };
            self.ledger.end(
                &task.spec.tenant,
                limit,
                task.fuel_used,
                charged,
                self.ledger_ms.max(now.ms),
                &mut fx.writes,
            );
            self.ledger_ms = self.ledger_ms.max(now.ms);
            self.dirty = true;
        }
        self.queues.remove(&task.spec, id);
        jobs::moved(&mut self.jobs, task, ended);
        task.state = ended;
        task.updated_at_ms = now.ms;
        let retry = !task.kill_requested && task.may_retry_after(ended);
        if !retry {
            task.finished_at_ms = now.ms;
            // A job's tasks are kept until the whole job is past its retention (a task of a
            // job not restored is kept on its own).
            if task
                .job
                .as_ref()
                .is_none_or(|m| !self.jobs.contains_key(&m.job))
            {
                self.ended.insert((now.ms, id));
            }
        }
        task.reason = reason.clone();
        fx.events.push(Arc::new(public(task)));
        if retry {
            jobs::moved(&mut self.jobs, task, TaskState::Pending);
            task.state = TaskState::Pending;
            task.reason = format!("retrying after {}: {reason}", ended.as_str());
            fx.events.push(Arc::new(public(task)));
            self.queues.insert(&task.spec, id);
            self.dirty = true;
        }
        let ended = task.clone();
        fx.writes.push(Write::Task(ended.clone()));
        if let Some(agent) = &ended.agent_id {
            self.carve_when_idle(agent, fx);
        }
        if !retry {
            if let Some(member) = &ended.job {
                self.job_task_ended(member.job, &ended, now, fx);
            }
        }
        ended
    }

    /// The current attempt of `id` is LOST (its agent vanished or forgot it).
    /// Callers list the attempts to lose first and lose them one by one, and ending one may
    /// end others (a job past its max_failures kills the rest): an attempt that ended since
    /// it was listed is not lost again.
    fn lose(&mut self, id: TaskId, reason: &str, now: Now, fx: &mut Effects) {
        if !self
            .tasks
            .get(&id)
            .is_some_and(|t| t.state.holds_resources())
        {
            return;
        }
        self.end(id, TaskState::Lost, reason, false, now, fx);
    }
}

/// `d` in milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Keeps output within the host's cap: files are kept in order while they fit in `max` bytes
/// in all; stdout and stderr were capped by the agent and are capped again here.
pub fn cap_output(output: &mut TaskOutput, max: u64) {
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
}

/// Whether a submit under an idempotency key asks for the task the key first made: the same
/// spec, where a disk quota of 0 (a task stored before quotas existed) matches any.
fn same_request(first: &TaskSpec, again: &TaskSpec) -> bool {
    let mut first = first.clone();
    if first.limits.max_disk_bytes == 0 {
        first.limits.max_disk_bytes = again.limits.max_disk_bytes;
    }
    first == *again
}
