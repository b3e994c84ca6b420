//! The state machine driven directly: every transition of the task lifecycle, retries, kills
//! in every state, reconciliation, and a property test over random sequences of events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::{prop_assert, prop_oneof, proptest, Just, ProptestConfig};
use proptest::strategy::Strategy as Generator;

use super::*;
use crate::partition::Resources;
use crate::task::{RetryPolicy, TaskLimits};
use crate::tenant::TenantChange;

const MIB: u64 = 1 << 20;
const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn spec(memory: u64, retries: u32, retry_failed: bool) -> TaskSpec {
    TaskSpec {
        name: "t".into(),
        tenant: "default".into(),
        module_sha256: SHA.into(),
        args: vec![],
        env: BTreeMap::new(),
        stdin: Bytes::from_static(b"in"),
        limits: TaskLimits {
            fuel: 1000,
            memory_bytes: memory,
            timeout: Duration::from_secs(1),
            max_output_bytes: 1024,
            max_disk_bytes: 256 << 20,
        },
        labels: BTreeMap::new(),
        constraints: BTreeMap::new(),
        retry: RetryPolicy {
            max_retries: retries,
            retry_failed,
        },
        collect_outputs: false,
        inputs: Vec::new(),
    }
}

fn info(id: &str, slots: u32, memory: u64) -> AgentInfo {
    AgentInfo {
        id: id.into(),
        address: String::new(),
        capacity: Resources {
            slots,
            memory_bytes: memory,
        },
        labels: BTreeMap::new(),
        version: "test".into(),
    }
}

fn outcome(kind: OutcomeKind) -> OutcomeRecord {
    OutcomeRecord {
        kind,
        exit_code: 0,
        message: String::new(),
    }
}

fn running() -> StatusReport {
    StatusReport {
        state: Some(TaskState::Running),
        fuel_used: 5,
        ..Default::default()
    }
}

fn ended(kind: OutcomeKind) -> StatusReport {
    StatusReport {
        state: Some(kind.final_state()),
        outcome: Some(outcome(kind)),
        fuel_used: 42,
        peak_memory_bytes: 65536,
        wall_us: 1500,
        output: Some(TaskOutput {
            stdout: Bytes::from_static(b"out"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A state and a clock, with the steps tests take.
struct World {
    state: HostState,
    now: Now,
    sessions: BTreeMap<String, u64>,
}

impl World {
    fn new() -> Self {
        Self::with(&HostConfig::default())
    }

    fn with(config: &HostConfig) -> Self {
        let mut state = HostState::new(config);
        let now = Now {
            instant: Instant::now(),
            ms: 1_000_000,
        };
        state.module_stored(SHA, ModuleFacts::default(), now);
        Self {
            state,
            now,
            sessions: BTreeMap::new(),
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now = self.now.after(by);
    }

    /// Registers and attaches an agent; answers the effects of both.
    fn agent(&mut self, id: &str, slots: u32, memory: u64) -> Effects {
        self.agent_reporting(id, slots, memory, &[], &[])
    }

    fn agent_reporting(
        &mut self,
        id: &str,
        slots: u32,
        memory: u64,
        running: &[Attempt],
        unacked: &[Attempt],
    ) -> Effects {
        let mut fx = Effects::default();
        let session = self
            .state
            .register(info(id, slots, memory), running, unacked, self.now, &mut fx)
            .unwrap();
        self.state.attach(id, session, self.now, &mut fx).unwrap();
        self.sessions.insert(id.into(), session);
        fx
    }

    fn submit(&mut self, spec: TaskSpec) -> TaskId {
        let mut fx = Effects::default();
        self.state.submit(spec, None, self.now, &mut fx).unwrap().0
    }

    fn schedule(&mut self) -> Effects {
        let mut fx = Effects::default();
        self.state.schedule(self.now, &mut fx);
        fx
    }

    fn report(&mut self, agent: &str, id: TaskId, report: StatusReport) -> Effects {
        let attempt = Attempt {
            task_id: id,
            attempt: self.task(id).attempts,
        };
        self.report_on(agent, attempt, report)
    }

    fn report_on(&mut self, agent: &str, attempt: Attempt, report: StatusReport) -> Effects {
        let mut fx = Effects::default();
        let session = self.sessions[agent];
        self.state
            .report(agent, session, attempt, report, self.now, &mut fx);
        fx
    }

    fn kill(&mut self, id: TaskId) -> (Result<Task, HostError>, Effects) {
        let mut fx = Effects::default();
        let result = self.state.kill(id, self.now, &mut fx);
        (result, fx)
    }

    fn task(&self, id: TaskId) -> &Task {
        self.state.get(id).unwrap()
    }

    fn allocated(&self, partition: &str) -> Resources {
        self.state
            .partitions()
            .find(|p| p.id == partition)
            .unwrap()
            .allocated
    }

    /// The state's invariants: allocations are the sums of what placed tasks request and
    /// within capacity; the pending queue is exactly the PENDING tasks.
    fn check(&self) {
        check_invariants(&self.state).unwrap();
    }
}

fn check_invariants(state: &HostState) -> Result<(), String> {
    for p in state.partitions() {
        let held = state
            .tasks()
            .filter(|t| t.state.holds_resources() && t.partition_id.as_deref() == Some(&p.id))
            .fold(Resources::default(), |sum, t| sum.plus(&t.spec.resources()));
        if held != p.allocated {
            return Err(format!(
                "{}: allocated {:?}, tasks hold {held:?}",
                p.id, p.allocated
            ));
        }
        if !p.capacity.covers(&p.allocated) {
            return Err(format!("{}: {:?} over {:?}", p.id, p.allocated, p.capacity));
        }
    }
    let pending: BTreeSet<TaskId> = state.pending().collect();
    let pending_tasks: BTreeSet<TaskId> = state
        .tasks()
        .filter(|t| t.state == TaskState::Pending)
        .map(|t| t.id)
        .collect();
    if pending != pending_tasks {
        return Err(format!(
            "queue {pending:?}, PENDING tasks {pending_tasks:?}"
        ));
    }
    // Each tenant's queue holds its own tasks, and what each tenant holds is what its placed
    // tasks request.
    for (tenant, queue) in state.queues.tenants() {
        // The scheduler's index: each shape once, by its first task, in order.
        let firsts: Vec<TaskId> = queue.groups().map(|(first, _)| first).collect();
        let mut expected: Vec<TaskId> = queue
            .shapes()
            .map(|(_, ids)| ids.first().copied().unwrap())
            .collect();
        expected.sort();
        if firsts != expected
            || queue
                .groups()
                .any(|(first, ids)| ids.first() != Some(&first))
        {
            return Err(format!(
                "{tenant}: shapes by first task {firsts:?}, expected {expected:?}"
            ));
        }
        for (shape, ids) in queue.shapes() {
            if let Some(id) = ids.iter().find(|id| {
                let spec = &state.tasks[id].spec;
                spec.tenant != *tenant || tenants::Shape::of(spec) != *shape
            }) {
                return Err(format!("{id} is queued as tenant {tenant}'s, as {shape:?}"));
            }
        }
    }
    let mut held: HashMap<String, Resources> = HashMap::new();
    for t in state.tasks().filter(|t| t.state.holds_resources()) {
        let sum = held.entry(t.spec.tenant.clone()).or_default();
        *sum = sum.plus(&t.spec.resources());
    }
    if held != state.held {
        return Err(format!("tenants hold {:?}, tasks {held:?}", state.held));
    }
    // The fuel ledger holds each placed task's limit and counts its fuel so far.
    let mut fuel: HashMap<&str, (u64, u64)> = HashMap::new();
    for t in state.tasks().filter(|t| t.state.holds_resources()) {
        let sum = fuel.entry(t.spec.tenant.as_str()).or_default();
        *sum = (sum.0 + t.spec.limits.fuel, sum.1 + t.fuel_used);
    }
    for tenant in state
        .ledger
        .tenants()
        .map(String::as_str)
        .chain(fuel.keys().copied())
    {
        let ledger = (state.ledger.held(tenant), state.ledger.running(tenant));
        let tasks = fuel.get(tenant).copied().unwrap_or_default();
        if ledger != tasks {
            return Err(format!(
                "{tenant}: ledger holds and counts {ledger:?}, tasks {tasks:?}"
            ));
        }
    }
    // Retention's books: every ended task is indexed, and nothing else but keys of tasks
    // not loaded; each module counts the tasks that run it; `key_of` inverts the keys.
    // A job's tasks are indexed once the whole job has ended.
    for t in state.tasks() {
        let indexed = state.ended.iter().any(|(_, id)| *id == t.id);
        let expected = match &t.job {
            Some(m) if state.jobs.contains_key(&m.job) => {
                state.jobs[&m.job].job.state != crate::job::JobState::Running
            }
            _ => t.state.is_terminal(),
        };
        if indexed != expected {
            return Err(format!(
                "{} ({}) indexed as ended: {indexed}",
                t.id, t.state
            ));
        }
        if !state.modules.contains_key(&t.spec.module_sha256) {
            return Err(format!("{}'s module is not listed", t.id));
        }
    }
    for (sha, used) in &state.modules {
        let running = state
            .tasks()
            .filter(|t| &t.spec.module_sha256 == sha)
            .count() as u64;
        if used.tasks != running {
            return Err(format!(
                "module {sha} counts {} tasks, {running} run it",
                used.tasks
            ));
        }
    }
    // Each input counts the kept tasks that mount it; every one mounted is listed.
    for (sha, used) in &state.inputs.by_sha {
        let mounting = state
            .tasks()
            .filter(|t| t.spec.inputs.iter().any(|i| &i.sha256 == sha))
            .count() as u64;
        if used.tasks() != mounting {
            return Err(format!(
                "input {sha} counts {} tasks, {mounting} mount it",
                used.tasks()
            ));
        }
    }
    if let Some(t) = state.tasks().find(|t| {
        t.spec
            .inputs
            .iter()
            .any(|i| !state.inputs.by_sha.contains_key(&i.sha256))
    }) {
        return Err(format!("{}'s input is not listed", t.id));
    }
    // Each job counts its tasks by state, and has ended exactly when they all have, as its
    // rules say.
    for (id, entry) in &state.jobs {
        let mut counts = [0u32; 7];
        let mut kept = 0;
        for t in entry.job.tasks().filter_map(|t| state.tasks.get(&t)) {
            if t.job.as_ref().map(|m| m.job) != Some(*id) {
                return Err(format!("{} is in {id}'s range but not its task", t.id));
            }
            counts[t.state.index()] += 1;
            kept += 1;
        }
        if counts != entry.counts || kept != entry.kept {
            return Err(format!(
                "{id} counts {:?} (kept {}), its tasks {counts:?} (kept {kept})",
                entry.counts, entry.kept
            ));
        }
        let all_ended = entry
            .job
            .tasks()
            .filter_map(|t| state.tasks.get(&t))
            .all(Task::has_ended);
        if kept == entry.job.count {
            let ended: u32 = [
                TaskState::Finished,
                TaskState::Failed,
                TaskState::Killed,
                TaskState::Lost,
            ]
            .map(|s| counts[s.index()])
            .iter()
            .sum();
            let failures = counts[TaskState::Failed.index()] + counts[TaskState::Lost.index()];
            if (entry.ended, entry.failures) != (ended, failures) {
                return Err(format!(
                    "{id} counts {} ended and {} failed, its tasks {ended} and {failures}",
                    entry.ended, entry.failures
                ));
            }
        }
        let running = entry.job.state == crate::job::JobState::Running;
        if kept == entry.job.count && all_ended == running {
            return Err(format!(
                "{id} is {:?}, its tasks all ended: {all_ended}",
                entry.job.state
            ));
        }
        let finished = counts[TaskState::Finished.index()] == entry.job.count;
        if entry.job.state == crate::job::JobState::Finished && !finished {
            return Err(format!("{id} FINISHED with tasks {counts:?}"));
        }
        if kept == entry.job.count
            && finished
            && !running
            && !entry.job.kill_requested
            && entry.job.state != crate::job::JobState::Finished
        {
            return Err(format!(
                "{id} {:?} though every task finished",
                entry.job.state
            ));
        }
    }
    for (key, id) in &state.idempotency {
        if state.key_of.get(id) != Some(key) {
            return Err(format!("key {key:?} of {id} is not in key_of"));
        }
    }
    if state.key_of.len() != state.idempotency.len() {
        return Err("key_of and idempotency differ in size".into());
    }
    for t in state.tasks().filter(|t| t.state.holds_resources()) {
        let partition = t
            .partition_id
            .as_ref()
            .and_then(|id| state.partitions().find(|p| &p.id == id));
        match (partition, &t.agent_id) {
            (Some(p), Some(agent)) if &p.agent_id == agent => {}
            _ => return Err(format!("{} holds resources nowhere", t.id)),
        }
    }
    Ok(())
}

fn launches(fx: &Effects) -> Vec<(String, Attempt)> {
    fx.commands
        .iter()
        .filter_map(|(agent, c)| match c {
            AgentCommand::Launch(a, _) => Some((agent.clone(), a.clone())),
            _ => None,
        })
        .collect()
}

fn states(fx: &Effects, id: TaskId) -> Vec<TaskState> {
    fx.events
        .iter()
        .filter(|t| t.id == id)
        .map(|t| t.state)
        .collect()
}

fn written(fx: &Effects, id: TaskId) -> Option<TaskState> {
    fx.writes.iter().rev().find_map(|w| match w {
        Write::Task(t) if t.id == id => Some(t.state),
        _ => None,
    })
}

fn attempt(id: TaskId, n: u32) -> Attempt {
    Attempt {
        task_id: id,
        attempt: n,
    }
}

#[test]
fn a_task_goes_pending_assigned_running_finished_with_each_step_written_and_told() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let mut fx = Effects::default();
    let (id, existed) = w
        .state
        .submit(spec(64 * MIB, 2, false), None, w.now, &mut fx)
        .unwrap();
    assert!(!existed);
    assert_eq!(written(&fx, id), Some(TaskState::Pending));
    assert_eq!(states(&fx, id), [TaskState::Pending]);
    assert!(fx.events[0].spec.stdin.is_empty(), "events carry no stdin");

    let fx = w.schedule();
    assert_eq!(launches(&fx), [("a1".to_string(), attempt(id, 1))]);
    assert_eq!(written(&fx, id), Some(TaskState::Assigned));
    assert_eq!(w.task(id).partition_id.as_deref(), Some("a1/default"));
    assert_eq!(
        w.allocated("a1/default"),
        Resources {
            slots: 1,
            memory_bytes: 64 * MIB
        }
    );
    w.check();

    let fx = w.report("a1", id, running());
    assert_eq!(written(&fx, id), Some(TaskState::Running));
    assert_eq!(w.task(id).fuel_used, 5);
    // Live figures alone are not written.
    let fx = w.report("a1", id, running());
    assert!(fx.writes.is_empty());
    assert_eq!(states(&fx, id), [TaskState::Running]);

    let fx = w.report("a1", id, ended(OutcomeKind::Success));
    assert_eq!(written(&fx, id), Some(TaskState::Finished));
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::Output(t, o) if *t == id && o.stdout.as_ref() == b"out")));
    assert!(fx
        .commands
        .contains(&("a1".to_string(), AgentCommand::Ack(attempt(id, 1)))));
    let task = w.task(id);
    assert_eq!(
        (task.fuel_used, task.wall_us, task.peak_memory_bytes),
        (42, 1500, 65536)
    );
    assert_eq!(task.finished_at_ms, w.now.ms);
    assert_eq!(w.allocated("a1/default"), Resources::default());
    w.check();
}

#[test]
fn guest_failures_are_final_unless_retry_failed_says_otherwise() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let plain = w.submit(spec(MIB, 2, false));
    let retried = w.submit(spec(MIB, 1, true));
    w.schedule();
    for kind in [OutcomeKind::Trap, OutcomeKind::OutOfFuel] {
        let id = if kind == OutcomeKind::Trap {
            plain
        } else {
            retried
        };
        let fx = w.report("a1", id, ended(kind));
        if id == plain {
            assert_eq!(states(&fx, id), [TaskState::Failed]);
            assert_eq!(w.task(id).reason, "trap");
            assert!(fx.events[0].has_ended(), "a final end has its finish time");
        } else {
            assert_eq!(states(&fx, id), [TaskState::Failed, TaskState::Pending]);
            assert!(
                !fx.events[0].has_ended(),
                "an end that is retried is not the task's"
            );
            assert!(w
                .task(id)
                .reason
                .starts_with("retrying after FAILED: out_of_fuel"));
        }
    }
    // The retry runs as attempt 2, and its failure is final: one retry was allowed.
    let fx = w.schedule();
    assert_eq!(launches(&fx), [("a1".to_string(), attempt(retried, 2))]);
    let fx = w.report("a1", retried, ended(OutcomeKind::OutOfFuel));
    assert_eq!(states(&fx, retried), [TaskState::Failed]);
    assert_eq!(w.task(retried).attempts, 2);
    w.check();
}

#[test]
fn an_agent_error_is_retried_like_a_lost_attempt_and_is_the_outcome_when_retries_run_out() {
    let mut w = World::new();
    w.agent("a1", 1, 1024 * MIB);
    let id = w.submit(spec(MIB, 1, false));
    w.schedule();
    let mut report = ended(OutcomeKind::AgentError);
    report.outcome.as_mut().unwrap().message = "cannot fetch module".into();
    let fx = w.report("a1", id, report.clone());
    assert_eq!(states(&fx, id), [TaskState::Failed, TaskState::Pending]);
    assert!(w
        .task(id)
        .reason
        .contains("agent_error: cannot fetch module"));
    // Retried on the same agent, the only one.
    let fx = w.schedule();
    assert_eq!(launches(&fx), [("a1".to_string(), attempt(id, 2))]);
    let fx = w.report("a1", id, report);
    assert_eq!(states(&fx, id), [TaskState::Failed]);
    let task = w.task(id);
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.outcome.as_ref().unwrap().kind, OutcomeKind::AgentError);
    w.check();
}

#[test]
fn a_kill_nobody_asked_for_is_the_agents_failure_and_retried() {
    let mut w = World::new();
    w.agent("a1", 1, 1024 * MIB);
    let id = w.submit(spec(MIB, 1, false));
    w.schedule();
    let fx = w.report("a1", id, ended(OutcomeKind::Killed));
    assert_eq!(states(&fx, id), [TaskState::Failed, TaskState::Pending]);
    assert!(
        w.task(id).reason.contains("no kill was asked"),
        "{}",
        w.task(id).reason
    );
    // The new attempt starts without the last one's outcome.
    w.schedule();
    assert_eq!(w.task(id).attempts, 2);
    assert_eq!(w.task(id).outcome, None);
}

#[test]
fn a_changed_partition_config_reaches_agents_when_they_register_again() {
    let mut w = World::new();
    w.agent("a1", 4, 1024 * MIB);
    let ids: Vec<String> = w.state.partitions().map(|p| p.id.clone()).collect();
    assert_eq!(ids, ["a1/default"]);
    // The host restarts with a template for a reserved partition; the agent is the same.
    let config = HostConfig {
        partitions: vec![crate::partition::PartitionTemplate {
            name: "acme".into(),
            agents: BTreeMap::new(),
            slots: 1,
            memory: bytesize::ByteSize::mib(256),
            tenant: Some("acme".into()),
            labels: BTreeMap::new(),
        }],
        ..HostConfig::default()
    };
    let loaded = Loaded {
        agents: vec![(info("a1", 4, 1024 * MIB), 0)],
        partitions: w.state.partitions().cloned().collect(),
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let mut restarted = HostState::restore(&config, loaded, w.now);
    let mut fx = Effects::default();
    restarted
        .register(info("a1", 4, 1024 * MIB), &[], &[], w.now, &mut fx)
        .unwrap();
    let ids: Vec<String> = restarted.partitions().map(|p| p.id.clone()).collect();
    assert_eq!(ids, ["a1/acme", "a1/default"]);
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::Partitions(a, p) if a == "a1" && p.len() == 2)));
    // Registering again with nothing changed carves nothing.
    let mut fx = Effects::default();
    restarted
        .register(info("a1", 4, 1024 * MIB), &[], &[], w.now, &mut fx)
        .unwrap();
    assert!(!fx.writes.iter().any(|w| matches!(w, Write::Partitions(..))));
    // New labels no template matches carve nothing either, but constraints see them at once.
    let mut labelled = info("a1", 4, 1024 * MIB);
    labelled.labels.insert("zone".into(), "b".into());
    let mut fx = Effects::default();
    restarted
        .register(labelled.clone(), &[], &[], w.now, &mut fx)
        .unwrap();
    assert!(!fx.writes.iter().any(|w| matches!(w, Write::Partitions(..))));
    assert!(restarted
        .partitions()
        .all(|p| p.agent_labels == labelled.labels));
}

#[test]
fn an_agent_back_with_new_capacity_is_carved_again_once_its_tasks_end() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let kept = w.submit(spec(MIB, 0, false));
    w.schedule();
    assert_eq!(w.task(kept).partition_id.as_deref(), Some("a1/default"));
    // The agent restarts with one slot, still running the task: its old partition stays,
    // holding the task, and takes no new task until it is carved again.
    let attempt = attempt_of(w.task(kept));
    let fx = w.agent_reporting("a1", 1, 512 * MIB, &[attempt], &[]);
    assert!(!fx.writes.iter().any(|w| matches!(w, Write::Partitions(..))));
    let old = w.state.partitions().find(|p| p.id == "a1/default").unwrap();
    assert_eq!(old.capacity.slots, 2);
    assert!(old.draining);
    let waiting = w.submit(spec(MIB, 0, false));
    assert!(launches(&w.schedule()).is_empty());
    w.check();
    // Its task ends: the agent is carved from what it offers now, and the waiting task runs.
    let fx = w.report("a1", kept, ended(OutcomeKind::Success));
    let carved = fx.writes.iter().find_map(|w| match w {
        Write::Partitions(a, p) if a == "a1" => Some(p.clone()),
        _ => None,
    });
    let carved = carved.expect("carved again once idle");
    assert_eq!(carved.len(), 1);
    assert_eq!(carved[0].capacity.slots, 1);
    assert_eq!(carved[0].capacity.memory_bytes, 512 * MIB);
    assert!(!carved[0].draining);
    let launched = launches(&w.schedule());
    assert_eq!(launched.len(), 1);
    assert_eq!(launched[0].1.task_id, waiting);
    w.check();
}

#[test]
fn an_agent_resized_and_back_as_it_was_takes_tasks_again_at_once() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let long = w.submit(spec(MIB, 0, false));
    w.schedule();
    let running = [attempt_of(w.task(long))];
    w.agent_reporting("a1", 1, 1024 * MIB, &running, &[]);
    assert!(w.state.partitions().all(|p| p.draining));
    // The resize is undone while the task still runs: its partition is what it was.
    let fx = w.agent_reporting("a1", 2, 1024 * MIB, &running, &[]);
    assert!(!fx.writes.iter().any(|w| matches!(w, Write::Partitions(..))));
    assert!(w.state.partitions().all(|p| !p.draining));
    let next = w.submit(spec(MIB, 0, false));
    assert_eq!(
        launches(&w.schedule()),
        [("a1".to_string(), attempt(next, 1))]
    );
    w.check();
}

#[test]
fn a_task_only_an_agents_coming_carving_can_hold_is_accepted() {
    let mut w = World::new();
    w.agent("a1", 1, 1024 * MIB);
    let busy = w.submit(spec(MIB, 0, false));
    w.schedule();
    let running = [attempt_of(w.task(busy))];
    // a1 comes back with 4 GiB while busy: a 2 GiB task will fit once it is carved again.
    w.agent_reporting("a1", 1, 4096 * MIB, &running, &[]);
    let mut fx = Effects::default();
    let (big, _) = w
        .state
        .submit(spec(2048 * MIB, 0, false), None, w.now, &mut fx)
        .expect("a1's coming carving holds it");
    assert!(launches(&w.schedule()).is_empty());
    w.report("a1", busy, ended(OutcomeKind::Success));
    assert_eq!(
        launches(&w.schedule()),
        [("a1".to_string(), attempt(big, 1))]
    );
    // Nothing could ever hold 8 GiB.
    let mut fx = Effects::default();
    let refused = w
        .state
        .submit(spec(8192 * MIB, 0, false), None, w.now, &mut fx);
    assert!(matches!(refused, Err(HostError::FailedPrecondition(_))));
    w.check();
}

#[test]
fn a_task_stored_outside_its_agents_partitions_keeps_the_agent_closed_until_it_ends() {
    // A store written before partitions waited for their tasks: a1 was carved again under a
    // running task, whose partition is gone.
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let id = w.submit(spec(MIB, 0, false));
    w.schedule();
    w.report("a1", id, running());
    let mut task = w.task(id).clone();
    task.partition_id = Some("a1/gone".into());
    let loaded = Loaded {
        agents: vec![(info("a1", 2, 1024 * MIB), 0)],
        partitions: w.state.partitions().cloned().collect(),
        tasks: vec![task.clone()],
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let mut restored = World {
        state: HostState::restore(&HostConfig::default(), loaded, w.now),
        now: w.now,
        sessions: BTreeMap::new(),
    };
    restored.agent_reporting("a1", 2, 1024 * MIB, &[attempt_of(&task)], &[]);
    assert!(restored.state.partitions().all(|p| p.draining));
    let waiting = restored.submit(spec(MIB, 0, false));
    assert!(launches(&restored.schedule()).is_empty());
    let fx = restored.report("a1", id, ended(OutcomeKind::Success));
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::Partitions(a, _) if a == "a1")));
    assert_eq!(
        launches(&restored.schedule()),
        [("a1".to_string(), attempt(waiting, 1))]
    );
    restored.check();
}

#[test]
fn a_final_report_without_an_outcome_is_the_agents_failure() {
    let mut w = World::new();
    w.agent("a1", 1, 1024 * MIB);
    let id = w.submit(spec(MIB, 0, false));
    w.schedule();
    let report = StatusReport {
        state: Some(TaskState::Failed),
        ..Default::default()
    };
    w.report("a1", id, report);
    let outcome = w.task(id).outcome.clone().unwrap();
    assert_eq!(outcome.kind, OutcomeKind::AgentError);
    assert!(outcome.message.contains("without an outcome"));
}

#[test]
fn a_silent_agents_attempts_are_lost_then_retried_elsewhere_until_retries_run_out() {
    let mut w = World::new();
    w.agent("a1", 1, 1024 * MIB);
    let id = w.submit(spec(MIB, 1, false));
    w.schedule();
    w.report("a1", id, running());
    w.agent("a2", 1, 1024 * MIB);
    // a2 keeps beating; a1 says nothing past the timeout.
    w.tick(Duration::from_secs(10));
    assert!(w.state.heartbeat("a2", w.sessions["a2"], w.now));
    w.tick(Duration::from_secs(6));
    let mut fx = Effects::default();
    assert_eq!(w.state.expire(w.now, &mut fx), ["a1"]);
    assert_eq!(states(&fx, id), [TaskState::Lost, TaskState::Pending]);
    assert!(w.task(id).reason.contains("agent a1 lost"));
    assert_eq!(w.allocated("a1/default"), Resources::default());
    let fx = w.schedule();
    assert_eq!(launches(&fx), [("a2".to_string(), attempt(id, 2))]);
    // a2 goes silent too: the second loss is final, LOST.
    w.tick(Duration::from_secs(16));
    let mut fx = Effects::default();
    assert_eq!(w.state.expire(w.now, &mut fx), ["a2"]);
    assert_eq!(states(&fx, id), [TaskState::Lost]);
    assert_eq!(written(&fx, id), Some(TaskState::Lost));
    assert_ne!(w.task(id).finished_at_ms, 0);
    // A lost agent's session is over.
    assert!(!w.state.heartbeat("a1", w.sessions["a1"], w.now));
    w.check();
}

#[test]
fn an_assigned_attempt_may_finish_or_be_lost_before_any_running_report() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let quick = w.submit(spec(MIB, 0, false));
    let stranded = w.submit(spec(MIB, 0, false));
    w.schedule();
    assert_eq!(w.task(quick).state, TaskState::Assigned);
    assert_eq!(w.task(stranded).state, TaskState::Assigned);
    // A run over before its first RUNNING report: ASSIGNED straight to FINISHED.
    let fx = w.report("a1", quick, ended(OutcomeKind::Success));
    assert_eq!(states(&fx, quick), [TaskState::Finished]);
    assert_eq!(written(&fx, quick), Some(TaskState::Finished));
    assert_ne!(w.task(quick).finished_at_ms, 0);
    // The agent goes silent with the other never started: ASSIGNED to LOST, final without
    // retries, its resources freed.
    w.tick(Duration::from_secs(16));
    let mut fx = Effects::default();
    assert_eq!(w.state.expire(w.now, &mut fx), ["a1"]);
    assert_eq!(states(&fx, stranded), [TaskState::Lost]);
    assert_eq!(written(&fx, stranded), Some(TaskState::Lost));
    assert_eq!(w.allocated("a1/default"), Resources::default());
    w.check();
}

#[test]
fn kill_in_every_state() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let assigned = w.submit(spec(MIB, 0, false));
    let running_id = w.submit(spec(MIB, 0, false));
    w.schedule();
    w.report("a1", running_id, running());
    // Both slots are taken: this one waits.
    let pending = w.submit(spec(MIB, 0, false));
    w.schedule();
    assert_eq!(w.task(pending).state, TaskState::Pending);

    // PENDING: ends at once, nothing for an agent.
    let (task, fx) = w.kill(pending);
    assert_eq!(task.unwrap().state, TaskState::Killed);
    assert!(fx.commands.is_empty());
    assert_eq!(written(&fx, pending), Some(TaskState::Killed));

    // ASSIGNED and RUNNING on an attached agent: the agent is told; KILLED when it reports.
    for id in [assigned, running_id] {
        let before = w.task(id).state;
        let (task, fx) = w.kill(id);
        let task = task.unwrap();
        assert_eq!(task.state, before);
        assert_eq!(task.reason, "kill requested");
        assert_eq!(
            fx.commands,
            [("a1".to_string(), AgentCommand::Kill(attempt(id, 1)))]
        );
        let fx = w.report("a1", id, ended(OutcomeKind::Killed));
        assert_eq!(states(&fx, id), [TaskState::Killed]);
    }
    assert_eq!(w.allocated("a1/default"), Resources::default());

    // Ended: refused, naming the state.
    let (result, fx) = w.kill(pending);
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("already ended (KILLED)"));
    assert!(fx.writes.is_empty());
    let (result, _) = w.kill(TaskId(99));
    assert!(matches!(result, Err(HostError::NotFound(_))));

    // RUNNING on an agent that is away: ends at once; the kill waits for the agent.
    let away = w.submit(spec(MIB, 0, false));
    w.schedule();
    w.report("a1", away, running());
    w.state.detach("a1", w.sessions["a1"]);
    let (task, fx) = w.kill(away);
    assert_eq!(task.unwrap().state, TaskState::Killed);
    assert!(fx.commands.is_empty());
    let fx = w.agent_reporting("a1", 2, 1024 * MIB, &[attempt(away, 1)], &[]);
    assert!(fx
        .commands
        .contains(&("a1".to_string(), AgentCommand::Kill(attempt(away, 1)))));
    w.check();
}

#[test]
fn a_kill_is_remembered_until_the_task_has_stopped() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let lost = w.submit(spec(MIB, 2, false));
    let relaunched = w.submit(spec(MIB, 2, false));
    w.schedule();
    w.report("a1", lost, running());
    w.report("a1", relaunched, running());
    for id in [lost, relaunched] {
        let (task, _) = w.kill(id);
        assert!(task.unwrap().kill_requested);
    }
    // The agent goes away before it stops them, and comes back still running one: the kill
    // goes to it again on attach.
    let old = w.sessions["a1"];
    w.state.detach("a1", old);
    let fx = w.agent_reporting("a1", 2, 1024 * MIB, &[attempt(relaunched, 1)], &[]);
    assert!(fx
        .commands
        .contains(&("a1".to_string(), AgentCommand::Kill(attempt(relaunched, 1)))));
    // The one it forgot is LOST, which for a task asked to die is KILLED, and not retried
    // although retries remain.
    assert_eq!(states(&fx, lost), [TaskState::Killed]);
    assert!(w
        .task(lost)
        .reason
        .starts_with("killed on request (its attempt ended LOST"));
    assert!(launches(&w.schedule()).is_empty());
    // An agent_error after the kill ends it KILLED too; a guest's own ending stays its own.
    let fx = w.report("a1", relaunched, ended(OutcomeKind::AgentError));
    assert_eq!(states(&fx, relaunched), [TaskState::Killed]);
    let finished = w.submit(spec(MIB, 2, true));
    w.schedule();
    let _ = w.kill(finished);
    let fx = w.report("a1", finished, ended(OutcomeKind::Success));
    assert_eq!(
        states(&fx, finished),
        [TaskState::Finished],
        "it finished before the kill landed"
    );
    let trapped = w.submit(spec(MIB, 2, true));
    w.schedule();
    let _ = w.kill(trapped);
    let fx = w.report("a1", trapped, ended(OutcomeKind::Trap));
    assert_eq!(
        states(&fx, trapped),
        [TaskState::Failed],
        "not retried despite retry_failed"
    );
    w.check();
}

#[test]
fn a_registered_agent_takes_no_task_until_it_attaches() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    // It registers again (same capacity, so no new carving) and has not attached yet.
    let mut fx = Effects::default();
    let session = w
        .state
        .register(info("a1", 2, 1024 * MIB), &[], &[], w.now, &mut fx)
        .unwrap();
    let id = w.submit(spec(MIB, 0, false));
    assert!(launches(&w.schedule()).is_empty());
    assert!(w.state.partitions().all(|p| p.draining));
    let mut fx = Effects::default();
    w.state.attach("a1", session, w.now, &mut fx).unwrap();
    w.sessions.insert("a1".into(), session);
    assert_eq!(
        launches(&w.schedule()),
        [("a1".to_string(), attempt(id, 1))]
    );
}

#[test]
fn an_agent_coming_back_is_reconciled_with_what_it_really_runs() {
    let mut w = World::new();
    w.agent("a1", 4, 1024 * MIB);
    let keeps = w.submit(spec(MIB, 2, false));
    let forgotten = w.submit(spec(MIB, 2, false));
    let unacked = w.submit(spec(MIB, 2, false));
    w.schedule();
    for id in [keeps, forgotten, unacked] {
        w.report("a1", id, running());
    }
    let old = w.sessions["a1"];
    let stranger = attempt(TaskId(999), 1);
    let fx = w.agent_reporting(
        "a1",
        4,
        1024 * MIB,
        &[attempt(keeps, 1), stranger.clone()],
        &[attempt(unacked, 1)],
    );
    assert_ne!(
        w.sessions["a1"], old,
        "a new registration opens a new session"
    );
    // Not reported: LOST, queued again, and launched again on attach as attempt 2.
    assert_eq!(
        states(&fx, forgotten),
        [TaskState::Lost, TaskState::Pending]
    );
    assert!(w.task(forgotten).reason.contains("came back without it"));
    // The attempt the host does not know is killed on attach.
    assert!(fx
        .commands
        .contains(&("a1".to_string(), AgentCommand::Kill(stranger))));
    assert_eq!(w.task(keeps).state, TaskState::Running);
    let fx = w.schedule();
    assert_eq!(launches(&fx), [("a1".to_string(), attempt(forgotten, 2))]);
    // The old session's reports count for nothing.
    let mut fx = Effects::default();
    w.state.report(
        "a1",
        old,
        attempt(keeps, 1),
        ended(OutcomeKind::Success),
        w.now,
        &mut fx,
    );
    assert!(fx.writes.is_empty() && fx.commands.is_empty());
    // The kept final report lands on the new session and is acknowledged.
    let fx = w.report("a1", unacked, ended(OutcomeKind::Success));
    assert!(fx
        .commands
        .contains(&("a1".to_string(), AgentCommand::Ack(attempt(unacked, 1)))));
    assert_eq!(w.task(unacked).state, TaskState::Finished);
    // A late report on a superseded attempt: acknowledged (final) or killed (running).
    let fx = w.report_on("a1", attempt(forgotten, 1), ended(OutcomeKind::Success));
    assert_eq!(
        fx.commands,
        [("a1".to_string(), AgentCommand::Ack(attempt(forgotten, 1)))]
    );
    let fx = w.report_on("a1", attempt(forgotten, 1), running());
    assert_eq!(
        fx.commands,
        [("a1".to_string(), AgentCommand::Kill(attempt(forgotten, 1)))]
    );
    assert_eq!(w.task(forgotten).attempts, 2);
    w.check();
}

#[test]
fn launches_of_assigned_attempts_go_again_when_the_agent_attaches_anew() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let id = w.submit(spec(MIB, 2, false));
    w.schedule();
    // The stream drops; the agent registers again saying it holds the attempt. Nothing is
    // lost, and the launch of the ASSIGNED attempt goes again on attach (the old stream may
    // have dropped it; an agent ignores a launch it already has).
    w.state.detach("a1", w.sessions["a1"]);
    let fx = w.agent_reporting("a1", 2, 1024 * MIB, &[attempt(id, 1)], &[]);
    assert_eq!(launches(&fx), [("a1".to_string(), attempt(id, 1))]);
    assert_eq!(w.task(id).state, TaskState::Assigned);
}

#[test]
fn submissions_are_refused_for_missing_modules_and_impossible_sizes_and_keys_answer_once() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let mut fx = Effects::default();
    let mut missing = spec(MIB, 0, false);
    missing.module_sha256 = "1".repeat(64);
    let e = w.state.submit(missing, None, w.now, &mut fx).unwrap_err();
    assert!(e.to_string().contains("upload it first"), "{e}");
    let e = w
        .state
        .submit(spec(4096 * MIB, 0, false), None, w.now, &mut fx)
        .unwrap_err();
    assert!(
        e.to_string().contains("no agent could ever run this task"),
        "{e}"
    );
    assert!(fx.writes.is_empty() && fx.events.is_empty());

    let key = Some("fold-1".to_string());
    let (a, a_existed) = w
        .state
        .submit(spec(MIB, 0, false), key.clone(), w.now, &mut fx)
        .unwrap();
    let (b, b_existed) = w
        .state
        .submit(spec(MIB, 0, false), key.clone(), w.now, &mut fx)
        .unwrap();
    assert_eq!((a, a_existed, b, b_existed), (a, false, a, true));
    let mut other = spec(MIB, 0, false);
    other.tenant = "acme".into();
    let (c, c_existed) = w.state.submit(other, key, w.now, &mut fx).unwrap();
    assert!(c != a && !c_existed, "keys are scoped by tenant");
    assert!(fx.writes.iter().any(
        |w| matches!(w, Write::Idempotency(t, k, id) if t == "default" && k == "fold-1" && *id == a)
    ));
}

#[test]
fn the_scheduler_runs_only_when_something_could_have_changed() {
    let mut w = World::new();
    let id = w.submit(spec(MIB, 0, false));
    // No agent: nothing placed, and the task waits.
    assert!(launches(&w.schedule()).is_empty());
    w.agent("a1", 1, 1024 * MIB);
    assert_eq!(launches(&w.schedule()).len(), 1);
    let second = w.submit(spec(MIB, 0, false));
    assert!(launches(&w.schedule()).is_empty(), "a1's one slot is taken");
    assert!(launches(&w.schedule()).is_empty());
    w.report("a1", id, ended(OutcomeKind::Success));
    assert_eq!(
        launches(&w.schedule()),
        [("a1".to_string(), attempt(second, 1))]
    );
}

#[test]
fn a_restored_state_rebuilds_allocations_and_the_queue_from_the_tasks() {
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let mut writes = Vec::new();
    let ids: Vec<TaskId> = (0..3).map(|_| w.submit(spec(MIB, 0, false))).collect();
    writes.extend(w.schedule().writes);
    let loaded = Loaded {
        tasks: w.state.tasks().cloned().collect(),
        agents: vec![(info("a1", 2, 1024 * MIB), 0)],
        partitions: w.state.partitions().cloned().collect(),
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let restored = HostState::restore(&HostConfig::default(), loaded, w.now);
    check_invariants(&restored).unwrap();
    assert_eq!(restored.pending().collect::<Vec<_>>(), [ids[2]]);
    let p = restored.partitions().next().unwrap();
    assert!(
        p.draining,
        "nothing goes to an agent until it attaches again"
    );
    assert_eq!(p.allocated.slots, 2);
    assert!(!writes.is_empty());
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    /// A submit, with an idempotency key `k<n>` when `key` is some, after uploading the
    /// module unless `upload` is false.
    Submit {
        memory: u64,
        retries: u32,
        key: Option<u8>,
        upload: bool,
    },
    /// A job of this many tasks (an array), with this max_failures.
    Job(u32, u32),
    /// A kill of the job this far into the list of jobs.
    KillJob(usize),
    /// The host restarts on what it held.
    Restart,
    Schedule,
    Running(usize),
    End(usize, u8),
    Kill(usize),
    Detach(usize),
    /// An agent comes back, with its capacity changed when the flag is set.
    Return(usize, bool),
    Expire(u64),
}

fn step() -> impl Generator<Value = Step> {
    prop_oneof![
        (
            1u64..600,
            0u32..3,
            proptest::option::of(0u8..4),
            proptest::bool::weighted(0.9)
        )
            .prop_map(|(memory, retries, key, upload)| Step::Submit {
                memory,
                retries,
                key,
                upload
            }),
        (1u32..6, 0u32..3).prop_map(|(n, max)| Step::Job(n, max)),
        Just(Step::Schedule),
        (0usize..64).prop_map(Step::Running),
        (0usize..64, 0u8..5).prop_map(|(t, k)| Step::End(t, k)),
        (0usize..64).prop_map(Step::Kill),
        (0usize..3).prop_map(Step::Detach),
        (0usize..3, proptest::bool::weighted(0.3)).prop_map(|(a, r)| Step::Return(a, r)),
        (0u64..20).prop_map(Step::Expire),
        (0usize..4).prop_map(Step::KillJob),
        Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever happens in whatever order, no partition is over-allocated, allocations are the
    /// sums of the placed tasks' requests, the queue is the PENDING tasks, and retention's
    /// books (ended tasks, modules' users, keys) match the tasks.
    #[test]
    fn random_histories_keep_the_invariants(steps in proptest::collection::vec(step(), 1..120)) {
        // Short retentions, so that liveness ticks remove tasks and modules as histories go.
        let mut w = World::with(&HostConfig {
            task_retention: Duration::from_secs(30),
            module_retention: Duration::from_secs(15),
            ..HostConfig::default()
        });
        let agents = ["a0", "a1", "a2"];
        for (i, a) in agents.iter().enumerate() {
            w.agent(a, 2 + i as u32, 1000 * MIB);
        }
        let mut ids: Vec<TaskId> = Vec::new();
        for step in steps {
            let mut fx = Effects::default();
            match step {
                Step::Submit { memory, retries, key, upload } => {
                    // As `corral submit` does: upload (it may have been removed), then submit;
                    // or submit only, which is refused if the module was removed.
                    if upload {
                        w.state.module_stored(SHA, ModuleFacts::default(), w.now);
                    }
                    let key = key.map(|k| format!("k{k}"));
                    if let Ok((id, false)) = w.state.submit(spec(memory * MIB, retries, false), key, w.now, &mut fx) {
                        ids.push(id);
                    }
                }
                Step::Job(n, max_failures) => {
                    w.state.module_stored(SHA, ModuleFacts::default(), w.now);
                    let tasks = crate::job::JobTasks::Array(n);
                    if let Ok(view) = w.state.submit_job(request(spec(MIB, 1, false), &tasks, max_failures), |_| Ok(()), w.now, &mut fx) {
                        ids.extend(view.view.job.tasks());
                    }
                }
                Step::Schedule => w.state.schedule(w.now, &mut fx),
                Step::Running(i) | Step::End(i, _) | Step::Kill(i) if ids.is_empty() => { let _ = i; }
                // Removed past its retention.
                Step::Running(i) | Step::End(i, _) if w.state.get(ids[i % ids.len()]).is_err() => {}
                Step::Running(i) => {
                    let task = w.task(ids[i % ids.len()]).clone();
                    if let Some(agent) = task.agent_id.clone() {
                        if w.sessions.contains_key(&agent) {
                            w.report(&agent, task.id, running());
                        }
                    }
                }
                Step::End(i, k) => {
                    let task = w.task(ids[i % ids.len()]).clone();
                    let kind = [OutcomeKind::Success, OutcomeKind::Trap, OutcomeKind::Killed, OutcomeKind::AgentError, OutcomeKind::Exit][k as usize];
                    if let Some(agent) = task.agent_id.clone() {
                        w.report(&agent, task.id, ended(kind));
                    }
                }
                Step::Kill(i) => {
                    let _ = w.kill(ids[i % ids.len()]);
                }
                Step::Detach(a) => {
                    let agent = agents[a];
                    w.state.detach(agent, w.sessions[agent]);
                }
                Step::Return(a, resized) => {
                    let agent = agents[a];
                    let running: Vec<Attempt> = w.state.tasks()
                        .filter(|t| t.state.holds_resources() && t.agent_id.as_deref() == Some(agent))
                        .filter(|t| t.id.0 % 2 == 0) // it forgot the odd ones
                        .map(attempt_of)
                        .collect();
                    let slots = if resized { 1 + a as u32 } else { 2 + a as u32 };
                    w.agent_reporting(agent, slots, 1000 * MIB, &running, &[]);
                }
                Step::Expire(secs) => {
                    w.tick(Duration::from_secs(secs));
                    w.state.expire(w.now, &mut fx);
                    w.state.collect(w.now, &mut fx);
                }
                Step::KillJob(i) => {
                    if let Some(&id) = w.state.jobs.keys().nth(i) {
                        let _ = w.state.kill_job(id, None, w.now, &mut fx);
                    }
                }
                Step::Restart => {
                    let state = &w.state;
                    let loaded = Loaded {
                        tasks: state.tasks().cloned().collect(),
                        jobs: state.jobs.values().map(|e| e.job.clone()).collect(),
                        highest_job_id: state.next_job_id,
                        highest_task_id: state.next_id,
                        agents: state.agents().into_iter().map(|a| (a.info, a.last_seen_ms)).collect(),
                        partitions: state.partitions().cloned().collect(),
                        modules: state.modules.iter()
                            .filter(|(_, used)| used.stored)
                            .map(|(sha, used)| (sha.clone(), used.facts))
                            .collect(),
                        idempotency: state.idempotency.iter().map(|(k, id)| (k.clone(), *id)).collect(),
                        ..Default::default()
                    };
                    w.state = HostState::restore(&HostConfig {
                        task_retention: Duration::from_secs(30),
                        module_retention: Duration::from_secs(15),
                        ..HostConfig::default()
                    }, loaded, w.now);
                    w.state.collect(w.now, &mut fx);
                }
            }
            if let Err(e) = check_invariants(&w.state) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

#[test]
fn output_past_the_hosts_cap_is_cut_and_says_so() {
    let file = |path: &str, len: usize| crate::task::OutputFile {
        path: path.into(),
        data: Bytes::from(vec![b'f'; len]),
    };
    let mut output = TaskOutput {
        stdout: Bytes::from(vec![b'o'; 12]),
        stderr: Bytes::from(vec![b'e'; 8]),
        files: vec![file("a", 6), file("b", 5), file("c", 1)],
        ..Default::default()
    };
    cap_output(&mut output, 10);
    assert_eq!(output.stdout.len(), 10);
    assert!(output.stdout_truncated);
    assert_eq!(output.stderr.len(), 8);
    assert!(!output.stderr_truncated);
    // Files are kept in order while they fit in the cap together: "c" would fit beside "a",
    // but comes after "b", which did not.
    let kept: Vec<&str> = output.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(kept, ["a"]);
    assert!(output.files_truncated);

    // Within the cap, nothing changes and nothing is flagged.
    let mut small = TaskOutput {
        stdout: Bytes::from_static(b"out"),
        files: vec![file("a", 3)],
        ..Default::default()
    };
    cap_output(&mut small, 10);
    assert_eq!(small.stdout.len(), 3);
    assert_eq!(small.files.len(), 1);
    assert!(!small.stdout_truncated && !small.stderr_truncated && !small.files_truncated);
}

#[test]
fn an_idempotency_key_answers_its_task_only_for_the_same_spec() {
    let mut w = World::new();
    w.agent("a1", 4, 1 << 30);
    let keyed = |w: &mut World, spec: TaskSpec| {
        let mut fx = Effects::default();
        w.state.submit(spec, Some("fold-1".into()), w.now, &mut fx)
    };
    let (id, existed) = keyed(&mut w, spec(MIB, 0, false)).unwrap();
    assert!(!existed);
    assert_eq!(keyed(&mut w, spec(MIB, 0, false)).unwrap(), (id, true));
    let mut other = spec(MIB, 0, false);
    other.args = vec!["--lr".into(), "0.1".into()];
    match keyed(&mut w, other.clone()) {
        Err(HostError::FailedPrecondition(m)) => {
            assert!(
                m.contains("\"fold-1\"") && m.contains("different spec"),
                "{m}"
            )
        }
        answer => panic!("a different spec under the same key was answered {answer:?}"),
    }
    // Another tenant's key is another key.
    other.tenant = "acme".into();
    assert!(!keyed(&mut w, other.clone()).unwrap().1);
    // A task stored before disk quotas (0) is the same request as one with today's default.
    let mut old = other.clone();
    old.limits.max_disk_bytes = 0;
    let mut fx = Effects::default();
    let (old_id, _) = w
        .state
        .submit(old, Some("fold-9".into()), w.now, &mut fx)
        .unwrap();
    assert_eq!(
        w.state
            .submit(other, Some("fold-9".into()), w.now, &mut fx)
            .unwrap(),
        (old_id, true)
    );
}

#[test]
fn an_ended_task_is_kept_for_its_retention_then_removed_with_its_key_and_then_its_module() {
    let config = HostConfig {
        task_retention: Duration::from_secs(3600),
        module_retention: Duration::from_secs(600),
        ..HostConfig::default()
    };
    let mut w = World::with(&config);
    w.agent("a1", 2, 1024 * MIB);
    let mut fx = Effects::default();
    let (done, _) = w
        .state
        .submit(spec(MIB, 0, false), Some("k".into()), w.now, &mut fx)
        .unwrap();
    let running = w.submit(spec(MIB, 0, false));
    w.schedule();
    w.report("a1", done, ended(OutcomeKind::Success));
    w.report("a1", running, self::running());

    // Kept for the whole retention: nothing is removed a minute before it ends.
    w.tick(Duration::from_secs(3540));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx), Collected::default());
    assert!(fx.writes.is_empty());
    assert_eq!(w.task(done).state, TaskState::Finished);

    // Then the task goes, with its output and key, in one batch of writes.
    w.tick(Duration::from_secs(120));
    let mut fx = Effects::default();
    let collected = w.state.collect(w.now, &mut fx);
    assert_eq!(
        collected,
        Collected {
            tasks: 1,
            modules: 0,
            inputs: 0,
            audit: 0
        }
    );
    // (The fuel ledger lets go of the minute the task was charged in, an hour on.)
    fx.writes.retain(|w| !matches!(w, Write::ForgetFuel(..)));
    assert!(
        matches!(
            fx.writes.as_slice(),
            [Write::ForgetIdempotency(tenant, key), Write::ForgetTask(id)]
                if tenant == "default" && key == "k" && *id == done
        ),
        "{:?}",
        fx.writes
    );
    let gone = w.state.get(done).unwrap_err().to_string();
    assert!(
        gone.contains("task_retention") && gone.contains("1h"),
        "{gone}"
    );
    w.check();

    // A running task is never removed, and keeps its module, however long it runs.
    w.tick(Duration::from_secs(30 * 24 * 3600));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx), Collected::default());
    assert_eq!(w.task(running).state, TaskState::Running);
    assert!(w.state.has_module(SHA));

    // Once it ends, its module is unreferenced: kept for module_retention from then.
    w.report("a1", running, ended(OutcomeKind::Success));
    w.tick(Duration::from_secs(3601));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).tasks, 1);
    assert!(
        w.state.has_module(SHA),
        "used a moment ago, by the task removed"
    );
    w.tick(Duration::from_secs(601));
    let mut fx = Effects::default();
    assert_eq!(
        w.state.collect(w.now, &mut fx),
        Collected {
            tasks: 0,
            modules: 1,
            inputs: 0,
            audit: 0
        }
    );
    fx.writes.retain(|w| !matches!(w, Write::ForgetFuel(..)));
    assert!(matches!(fx.writes.as_slice(), [Write::ForgetModule(sha)] if sha == SHA));
    assert!(!w.state.has_module(SHA));

    // The key names nothing now; ids go on from the highest ever given.
    w.state.module_stored(SHA, ModuleFacts::default(), w.now);
    let mut fx = Effects::default();
    let (again, existed) = w
        .state
        .submit(spec(2 * MIB, 0, false), Some("k".into()), w.now, &mut fx)
        .unwrap();
    assert!(!existed);
    assert!(again.0 > running.0, "{again} reuses an id");
}

#[test]
fn an_upload_or_a_submit_keeps_an_unreferenced_module() {
    let config = HostConfig {
        module_retention: Duration::from_secs(600),
        ..HostConfig::default()
    };
    let mut w = World::with(&config);
    // Uploaded again 9 minutes on: the clock starts again.
    w.tick(Duration::from_secs(540));
    assert!(!w.state.module_stored(SHA, ModuleFacts::default(), w.now));
    w.tick(Duration::from_secs(540));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).modules, 0);
    // A pending task refers to it: kept, however long the task waits.
    let id = w.submit(spec(MIB, 0, false));
    w.tick(Duration::from_secs(7200));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).modules, 0);
    assert_eq!(w.task(id).state, TaskState::Pending);
    // Restored from a store, its use counts again from the start.
    let loaded = Loaded {
        tasks: Vec::new(),
        modules: vec![(SHA.into(), ModuleFacts::default())],
        highest_task_id: id.0,
        ..Default::default()
    };
    let mut restored = HostState::restore(&config, loaded, w.now);
    let mut fx = Effects::default();
    assert_eq!(
        restored
            .collect(w.now.after(Duration::from_secs(599)), &mut fx)
            .modules,
        0
    );
    assert_eq!(
        restored
            .collect(w.now.after(Duration::from_secs(601)), &mut fx)
            .modules,
        1
    );
}

#[test]
fn a_removed_module_uploaded_again_is_written_again_and_counts_its_tasks() {
    let config = HostConfig {
        module_retention: Duration::from_secs(60),
        ..HostConfig::default()
    };
    let mut w = World::with(&config);
    w.tick(Duration::from_secs(61));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).modules, 1);
    // Uploaded again: new, so the actor writes its bytes in the same batch, after the removal.
    assert!(w.state.module_stored(SHA, ModuleFacts::default(), w.now));
    assert!(!w.state.module_stored(SHA, ModuleFacts::default(), w.now));

    // A store that holds a task of a module it lost: listed, not stored, counted.
    let id = w.submit(spec(MIB, 0, false));
    let loaded = Loaded {
        tasks: w.state.tasks().cloned().collect(),
        modules: Vec::new(),
        ..Default::default()
    };
    let mut restored = HostState::restore(&config, loaded, w.now);
    assert!(!restored.has_module(SHA));
    check_invariants(&restored).unwrap();
    assert!(restored.module_stored(SHA, ModuleFacts::default(), w.now));
    let mut fx = Effects::default();
    let later = w.now.after(Duration::from_secs(3600));
    assert_eq!(
        restored.collect(later, &mut fx).modules,
        0,
        "task {id} still runs it"
    );
}

#[test]
fn a_modules_facts_are_kept_and_restored_for_tenants_policies() {
    let config = HostConfig::default();
    let mut w = World::with(&config);
    let mut opens = corral_admission::imports::ImportSet::EMPTY;
    assert!(opens.insert("wasi_snapshot_preview1", "path_open"));
    let facts = ModuleFacts {
        size: 2048,
        imports: opens,
    };
    w.state.module_stored(SHA, facts, w.now);
    let mut fx = Effects::default();
    let change = TenantChange {
        denied_imports: Some(
            crate::tenant::ImportRules::parse(&["wasi_snapshot_preview1::path_*"]).unwrap(),
        ),
        ..TenantChange::default()
    };
    w.state
        .set_tenant("acme", Some(change), w.now, &mut fx)
        .unwrap();
    let refused = |state: &HostState| match state.check_module_policy("acme", SHA) {
        Err(HostError::FailedPrecondition(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(refused(&w.state).contains("path_open"));
    assert!(w.state.check_module_policy("other", SHA).is_ok());
    // The facts come back with the module from the store.
    let loaded = Loaded {
        modules: vec![(SHA.into(), facts)],
        tenants: vec![("acme".into(), w.state.tenant_settings("acme").0.clone())],
        ..Default::default()
    };
    let restored = HostState::restore(&config, loaded, w.now);
    assert!(refused(&restored).contains("path_open"));
}

// ----- tokens, joins and the audit log ----------------------------------------------------

fn credential(agent: &str, join: &str, now: Now) -> crate::auth::TokenRecord {
    let mut minted = crate::auth::mint(corral_proto::token::Role::Agent, "", agent, 0, now.ms, "");
    minted.record.issued_by = join.into();
    minted.record
}

#[test]
fn a_join_takes_only_an_id_no_agent_holds_and_may_be_asked_again_until_first_use() {
    let mut w = World::new();
    let mut fx = Effects::default();
    let never_used = |_: &str| false;
    // A new id: joined, its credential recorded.
    assert_eq!(
        w.state.may_join("a1", "join-1", never_used, w.now).unwrap(),
        None
    );
    let first = credential("a1", "join-1", w.now);
    w.state
        .claim_agent("a1", first.clone(), None, "join-1", w.now, &mut fx);
    // The same join token asks again before the credential was used (its answer was lost):
    // a new one may be given, and the first is retired only then.
    let retire = w.state.may_join("a1", "join-1", never_used, w.now).unwrap();
    assert_eq!(retire.as_deref(), Some(first.accessor.as_str()));
    let live = |w: &World, a: &str| {
        w.state
            .tokens()
            .any(|t| t.accessor == a && t.live(w.now.ms))
    };
    assert!(
        live(&w, &first.accessor),
        "asking alone retired the credential"
    );
    let second = credential("a1", "join-1", w.now);
    w.state
        .claim_agent("a1", second.clone(), retire, "join-1", w.now, &mut fx);
    assert!(!live(&w, &first.accessor) && live(&w, &second.accessor));
    // Once used (seen in calls, or on record), or from another join token, the id is the
    // agent's.
    let used = |t: &str| t == second.accessor;
    let e = w.state.may_join("a1", "join-1", used, w.now).unwrap_err();
    assert!(e.to_string().contains("cannot claim"), "{e}");
    assert!(w.state.may_join("a1", "join-2", never_used, w.now).is_err());
    w.state.credential_used(&second.accessor, w.now, &mut fx);
    assert!(w.state.may_join("a1", "join-1", never_used, w.now).is_err());
    // A revoked credential retires its id.
    w.state
        .revoke_token(&second.accessor, "", w.now, &mut fx)
        .unwrap();
    let e = w
        .state
        .may_join("a1", "join-1", never_used, w.now)
        .unwrap_err();
    assert!(e.to_string().contains("retired"), "{e}");
    // An agent of a host before tokens (no credential) is claimable only while it is away
    // and holds nothing.
    w.agent("old", 2, 1024 * MIB);
    let e = w
        .state
        .may_join("old", "join-1", never_used, w.now)
        .unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    w.state.detach("old", w.sessions["old"]);
    assert_eq!(
        w.state
            .may_join("old", "join-1", never_used, w.now)
            .unwrap(),
        None
    );
}

#[test]
fn refused_calls_never_push_the_rest_of_the_audit_log_out() {
    let mut w = World::new();
    let mut fx = Effects::default();
    w.state
        .audit("task.kill", "admin", "task t-1".into(), 1, w.now, &mut fx);
    for _ in 0..MAX_AUDIT_ENTRIES + 10 {
        w.state
            .audit("auth.refused", "", "unknown".into(), 1, w.now, &mut fx);
    }
    let mut fx = Effects::default();
    let collected = w.state.collect(w.now, &mut fx);
    assert_eq!(collected.audit, 10);
    let forgotten: Vec<u64> = fx
        .writes
        .iter()
        .flat_map(|w| match w {
            Write::ForgetAudit(seqs) => seqs.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert!(!forgotten.contains(&1), "the kill's entry was pushed out");
    assert_eq!(forgotten, (2..12).collect::<Vec<u64>>());
    // Past the retention, everything goes.
    w.tick(HostConfig::default().audit_retention + Duration::from_secs(1));
    let mut removed = 0;
    loop {
        let collected = w.state.collect(w.now, &mut Effects::default()).audit;
        assert!(collected <= MAX_COLLECT, "one tick removed {collected}");
        if collected == 0 {
            break;
        }
        removed += collected;
    }
    assert_eq!(removed, MAX_AUDIT_ENTRIES + 1);
}

// ----- tenants: fair share, limits, guarantees, queue caps, reasons ---------------------------

const GIB: u64 = 1 << 30;

fn spec_of(tenant: &str, memory: u64) -> TaskSpec {
    TaskSpec {
        tenant: tenant.into(),
        ..spec(memory, 0, false)
    }
}

fn holding(w: &World, tenant: &str) -> usize {
    w.state
        .tasks()
        .filter(|t| t.spec.tenant == tenant && t.state.holds_resources())
        .count()
}

fn set(w: &mut World, tenant: &str, change: TenantChange) -> Effects {
    let mut fx = Effects::default();
    w.state
        .set_tenant(tenant, Some(change), w.now, &mut fx)
        .unwrap();
    fx
}

/// The issue's example through the state machine: one agent of 10 slots and 20 GiB; tenant
/// A's tasks take 4 GiB, B's 1 GiB, A's all submitted first. Fair: A 3, B 7; FIFO: A 5.
#[test]
fn tenants_share_an_agent_by_dominant_resource_fairness() {
    for (order, a, b) in [(Order::Fair, 3, 7), (Order::Fifo, 5, 0)] {
        let mut w = World::with(&HostConfig {
            order,
            ..HostConfig::default()
        });
        w.agent("a1", 10, 20 * GIB);
        for _ in 0..20 {
            w.submit(spec_of("A", 4 * GIB));
        }
        for _ in 0..20 {
            w.submit(spec_of("B", GIB));
        }
        w.schedule();
        w.check();
        assert_eq!((holding(&w, "A"), holding(&w, "B")), (a, b), "{order:?}");
        let view = w.state.tenants(Some("B"), w.now).remove(0);
        assert_eq!(view.held.slots, b as u32);
        assert_eq!(view.queued, 20 - b as u64);
    }
}

#[test]
fn a_limit_caps_a_tenant_and_a_guarantee_is_served_first_as_slots_free() {
    let mut w = World::new();
    w.agent("a1", 4, 4 * GIB);
    let mut fx = set(
        &mut w,
        "capped",
        TenantChange {
            limit_slots: Some(Some(1)),
            ..TenantChange::default()
        },
    );
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::Tenant(t, Some(_)) if t == "capped")));
    let capped: Vec<TaskId> = (0..3).map(|_| w.submit(spec_of("capped", MIB))).collect();
    let flood: Vec<TaskId> = (0..10).map(|_| w.submit(spec_of("flood", MIB))).collect();
    w.schedule();
    w.check();
    assert_eq!((holding(&w, "capped"), holding(&w, "flood")), (1, 3));
    let reason = w.state.list(&TaskFilter::default(), None, 100, w.now).0;
    let waiting = reason.iter().find(|t| t.id == capped[1]).unwrap();
    assert!(
        waiting.reason.contains("limit") && waiting.reason.contains("1 slot(s)"),
        "{}",
        waiting.reason
    );

    // A guaranteed tenant arrives with the cluster full: each slot that frees is its own until
    // it holds its guarantee, ahead of the flood with its lower share.
    fx = set(
        &mut w,
        "vip",
        TenantChange {
            guarantee_slots: Some(2),
            ..TenantChange::default()
        },
    );
    drop(fx);
    let vip: Vec<TaskId> = (0..3).map(|_| w.submit(spec_of("vip", MIB))).collect();
    w.schedule();
    assert_eq!(holding(&w, "vip"), 0, "nothing is preempted");
    let placed: Vec<TaskId> = flood
        .iter()
        .copied()
        .filter(|id| w.task(*id).state == TaskState::Assigned)
        .collect();
    for (i, id) in placed.iter().take(2).enumerate() {
        let agent = w.task(*id).agent_id.clone().unwrap();
        w.report(&agent, *id, ended(OutcomeKind::Success));
        w.schedule();
        w.check();
        assert_eq!(holding(&w, "vip"), i + 1);
    }
    // Guarantee held: the next slot goes by share; vip holds 2 of 4, flood none: flood's turn.
    let agent = w.task(placed[2]).agent_id.clone().unwrap();
    w.report(&agent, placed[2], ended(OutcomeKind::Success));
    w.schedule();
    assert_eq!((holding(&w, "vip"), holding(&w, "flood")), (2, 1));
    assert_eq!(w.task(vip[2]).state, TaskState::Pending);
}

#[test]
fn a_tenant_past_its_queue_cap_or_limit_is_refused_at_submit() {
    let mut config = HostConfig::default();
    config.tenants.insert(
        "small".into(),
        crate::tenant::TenantSettings {
            max_queued: 2,
            limit_memory: Some(bytesize::ByteSize::mib(64)),
            ..Default::default()
        },
    );
    let mut w = World::with(&config);
    w.submit(spec_of("small", MIB));
    w.submit(spec_of("small", MIB));
    let mut fx = Effects::default();
    let e = w
        .state
        .submit(spec_of("small", MIB), None, w.now, &mut fx)
        .unwrap_err();
    assert!(matches!(e, HostError::Exhausted(_)), "{e:?}");
    assert!(e.to_string().contains("max_queued 2"), "{e}");
    // Another tenant is not affected.
    w.submit(spec_of("other", MIB));
    // A task bigger than the tenant's whole limit could never run.
    let mut w = World::with(&config);
    let e = w
        .state
        .submit(spec_of("small", 128 * MIB), None, w.now, &mut fx)
        .unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    // Once what was set is forgotten, the config applies again; the view says which.
    assert_eq!(
        w.state.tenants(Some("small"), w.now)[0].source,
        crate::tenant::Source::Config
    );
    set(
        &mut w,
        "small",
        TenantChange {
            limit_memory: Some(None),
            ..TenantChange::default()
        },
    );
    let view = &w.state.tenants(Some("small"), w.now)[0];
    assert_eq!(
        (view.source, view.settings.max_queued),
        (crate::tenant::Source::Set, 2)
    );
    w.submit(spec_of("small", 128 * MIB));
    let mut fx = Effects::default();
    w.state.set_tenant("small", None, w.now, &mut fx).unwrap();
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::Tenant(t, None) if t == "small")));
    assert_eq!(
        w.state.tenants(Some("small"), w.now)[0].source,
        crate::tenant::Source::Config
    );
}

#[test]
fn a_pending_task_says_why_it_waits_when_read_and_nothing_is_stored_each_round() {
    let mut w = World::new();
    w.agent("a1", 2, 4 * GIB);
    let mut zoned = spec_of("z", MIB);
    zoned.constraints.insert("zone".into(), "x".into());
    let first = w.submit(spec_of("hog", MIB));
    let second = w.submit(spec_of("hog", MIB));
    let third = w.submit(spec_of("hog", MIB));
    let newcomer = w.submit(spec_of("new", MIB));
    let fx = w.schedule();
    // The round wrote only the placements: no reason was stored on a waiting task.
    let written: Vec<TaskId> = fx
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Task(t) => Some(t.id),
            _ => None,
        })
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(written.contains(&first) && written.contains(&newcomer));
    assert_eq!(w.task(third).reason, "", "stored");
    // hog holds 1, new holds 1: equal shares, so hog's next waits for capacity; once new
    // holds nothing and has work, hog's waits for its fair share.
    let read = |w: &World, id: TaskId| {
        w.state
            .list(&TaskFilter::default(), None, 100, w.now)
            .0
            .into_iter()
            .find(|t| t.id == id)
            .unwrap()
            .reason
    };
    assert!(
        read(&w, second).starts_with("waiting for capacity"),
        "{}",
        read(&w, second)
    );
    let another = w.submit(spec_of("new", MIB));
    let agent = "a1".to_string();
    w.report(&agent, newcomer, ended(OutcomeKind::Success));
    // Before the round: a partition has room.
    assert!(
        read(&w, another).contains("has room"),
        "{}",
        read(&w, another)
    );
    w.schedule();
    assert_eq!(
        w.task(another).state,
        TaskState::Assigned,
        "new went before hog's second"
    );
    w.report(&agent, another, ended(OutcomeKind::Success));
    w.submit(spec_of("new", MIB));
    w.submit(spec_of("new2", MIB));
    assert!(read(&w, second).contains("has room"));
    w.schedule();
    // new (share 0, the older task) got the slot; new2 (share 0) waits ahead of hog.
    assert!(
        read(&w, second).starts_with("waiting for its fair share"),
        "{}",
        read(&w, second)
    );
    // The get path explains the same way.
    let mut got = vec![w.task(second).clone()];
    w.state.explain(&mut got, w.now);
    assert!(got[0].reason.starts_with("waiting for its fair share"));
    // A constraint no agent meets (submitted before any agent registered).
    let mut w = World::new();
    let z = w.submit(zoned);
    w.agent("a1", 2, 4 * GIB);
    assert!(read(&w, z).contains("zone=x"), "{}", read(&w, z));
}

fn with_fuel(tenant: &str, fuel: u64) -> TaskSpec {
    let mut spec = spec_of(tenant, MIB);
    spec.limits.fuel = fuel;
    spec
}

/// A host config giving `tenant` a fuel budget of `budget` (`FUEL/PERIOD`).
fn budgeted(tenant: &str, budget: &str) -> HostConfig {
    let mut config = HostConfig::default();
    config.tenants.insert(
        tenant.into(),
        crate::tenant::TenantSettings {
            fuel_budget: Some(budget.parse().unwrap()),
            ..Default::default()
        },
    );
    config
}

fn finish(w: &mut World, id: TaskId, fuel_used: u64) {
    let agent = w.task(id).agent_id.clone().unwrap();
    let mut report = ended(OutcomeKind::Success);
    report.fuel_used = fuel_used;
    w.report(&agent, id, report);
}

#[test]
fn a_fuel_budget_holds_limits_charges_use_and_frees_as_the_window_rolls() {
    let config = budgeted("b", "1000/1h");
    let mut w = World::with(&config);
    w.agent("a1", 10, 4 * GIB);
    // A task whose limit exceeds the whole budget could never start.
    let mut fx = Effects::default();
    let e = w
        .state
        .submit(with_fuel("b", 1001), None, w.now, &mut fx)
        .unwrap_err();
    assert!(e.to_string().contains("whole fuel budget"), "{e}");
    let ids: Vec<TaskId> = (0..4).map(|_| w.submit(with_fuel("b", 400))).collect();
    let other = w.submit(with_fuel("free", 5_000));
    w.schedule();
    w.check();
    let state = |w: &World, i: usize| w.task(ids[i]).state;
    assert_eq!(
        (0..4).map(|i| state(&w, i)).collect::<Vec<_>>(),
        [
            TaskState::Assigned,
            TaskState::Assigned,
            TaskState::Pending,
            TaskState::Pending
        ]
    );
    assert_eq!(
        w.task(other).state,
        TaskState::Assigned,
        "others are not held back"
    );
    let view = &w.state.tenants(Some("b"), w.now)[0];
    assert_eq!((view.fuel_held, view.fuel_left), (800, Some(200)));
    let reason = |w: &World, id: TaskId| {
        let mut t = vec![w.task(id).clone()];
        w.state.explain(&mut t, w.now);
        t.remove(0).reason
    };
    let why = reason(&w, ids[2]);
    assert!(
        why.contains("fuel budget") && why.contains("200 of 1000/1h left"),
        "{why}"
    );
    assert!(why.contains("placed tasks must end first"), "{why}");

    // Running, its fuel so far shows; a report beyond its limit is charged the limit only.
    let agent = w.task(ids[0]).agent_id.clone().unwrap();
    w.report(
        &agent,
        ids[0],
        StatusReport {
            fuel_used: 150,
            ..running()
        },
    );
    assert_eq!(
        w.state.tenants(Some("b"), w.now)[0].fuel_used_in_window,
        150
    );
    let fx = {
        let mut report = ended(OutcomeKind::OutOfFuel);
        report.fuel_used = 9_999;
        w.report(&agent, ids[0], report)
    };
    assert!(fx
        .writes
        .iter()
        .any(|x| matches!(x, Write::Fuel { tenant, fuel: 400, total: 400, .. } if tenant == "b")));
    // 1000 - 400 spent - 400 held: 200 left, still not enough.
    w.schedule();
    assert_eq!(state(&w, 2), TaskState::Pending);
    finish(&mut w, ids[1], 100);
    w.schedule();
    w.check();
    // 1000 - 500 spent: the third starts, leaving 100; the fourth waits for the window.
    assert_eq!(
        (state(&w, 2), state(&w, 3)),
        (TaskState::Assigned, TaskState::Pending)
    );
    finish(&mut w, ids[2], 400);
    w.schedule();
    assert_eq!(state(&w, 3), TaskState::Pending);
    let why = reason(&w, ids[3]);
    assert!(why.contains("the window frees enough by"), "{why}");
    let view = &w.state.tenants(Some("b"), w.now)[0];
    assert_eq!(
        (
            view.fuel_used_in_window,
            view.fuel_used_total,
            view.fuel_left
        ),
        (900, 900, Some(100))
    );

    // The ledger survives a restart.
    let loaded = Loaded {
        agents: vec![(info("a1", 10, 4 * GIB), 0)],
        partitions: w.state.partitions().cloned().collect(),
        modules: vec![(SHA.into(), ModuleFacts::default())],
        tasks: w.state.tasks().cloned().collect(),
        fuel_minutes: w
            .state
            .ledger
            .tenants()
            .flat_map(|t| {
                let t = t.clone();
                w.state.ledger.minutes(&t)
            })
            .collect(),
        fuel_totals: vec![("b".into(), 900), ("free".into(), 0)],
        ..Default::default()
    };
    let restored = HostState::restore(&config, loaded, w.now);
    let view = &restored.tenants(Some("b"), w.now)[0];
    assert_eq!((view.fuel_used_total, view.fuel_left), (900, Some(100)));

    // An hour and a minute on, the window has let go of it all.
    w.tick(Duration::from_secs(3600 + 120));
    // The tick that sees the minute move on lets the round try the budget again.
    let mut fx = Effects::default();
    w.state.collect(w.now, &mut fx);
    w.schedule();
    assert_eq!(state(&w, 3), TaskState::Assigned);
    // The budgeted tenant's minutes are kept for the longest period a budget may have.
    assert!(!fx
        .writes
        .iter()
        .any(|x| matches!(x, Write::ForgetFuel(t, _) if t == "b")));
    w.tick(crate::tenant::MAX_BUDGET_PERIOD);
    let mut fx = Effects::default();
    w.state.collect(w.now, &mut fx);
    assert!(fx
        .writes
        .iter()
        .any(|x| matches!(x, Write::ForgetFuel(t, _) if t == "b")));
    assert_eq!(w.state.tenants(Some("b"), w.now)[0].fuel_used_total, 900);
}

/// An attempt that ends without its final report (its agent lost) is charged its whole limit:
/// the agent may still be running it, and a report it sends later does not count.
#[test]
fn a_lost_attempt_is_charged_its_whole_limit() {
    let config = budgeted("b", "1000/1h");
    let mut w = World::with(&config);
    w.agent("a1", 2, GIB);
    let mut spec = with_fuel("b", 600);
    spec.retry.max_retries = 1;
    let id = w.submit(spec);
    w.schedule();
    w.report(
        "a1",
        id,
        StatusReport {
            fuel_used: 50,
            ..running()
        },
    );
    w.check();
    // The agent goes silent; its attempt is LOST and the task retried.
    w.tick(HostConfig::default().heartbeat_timeout + Duration::from_secs(1));
    let mut fx = Effects::default();
    w.state.expire(w.now, &mut fx);
    w.check();
    assert!(fx
        .writes
        .iter()
        .any(|x| matches!(x, Write::Fuel { tenant, fuel: 600, .. } if tenant == "b")));
    // 1000 - 600 charged: the retry (600) cannot start, though the attempt reported 50.
    w.agent("a2", 2, GIB);
    w.schedule();
    assert_eq!(w.task(id).state, TaskState::Pending);
    let view = &w.state.tenants(Some("b"), w.now)[0];
    assert_eq!(view.fuel_left, Some(400));
}

/// Fuel figures only grow within an attempt: a final report without one (an agent that failed
/// after the guest ran) is charged what the live reports said.
#[test]
fn a_final_report_without_fuel_is_charged_what_live_reports_said() {
    let config = budgeted("b", "1000/1h");
    let mut w = World::with(&config);
    w.agent("a1", 2, GIB);
    let id = w.submit(with_fuel("b", 600));
    w.schedule();
    w.report(
        "a1",
        id,
        StatusReport {
            fuel_used: 150,
            ..running()
        },
    );
    let mut report = ended(OutcomeKind::AgentError);
    report.fuel_used = 0;
    let fx = w.report("a1", id, report);
    w.check();
    assert!(fx
        .writes
        .iter()
        .any(|x| matches!(x, Write::Fuel { tenant, fuel: 150, .. } if tenant == "b")));
}

/// The ledger's clock never goes back: a charge made after the system's clock stepped back
/// lands in the latest minute seen, not an hour earlier, and so stays in the window.
#[test]
fn the_ledgers_clock_does_not_go_back_with_the_systems() {
    let config = budgeted("b", "1000/1h");
    let mut w = World::with(&config);
    w.now.ms = 100 * 3_600_000;
    w.agent("a1", 2, GIB);
    let first = w.submit(with_fuel("b", 100));
    let second = w.submit(with_fuel("b", 100));
    w.schedule();
    finish(&mut w, first, 100);
    // The system's clock steps back two hours; the second task ends then.
    w.now.ms -= 2 * 3_600_000;
    finish(&mut w, second, 100);
    // Back to 59 minutes past the first charge: both charges are still in the window.
    w.now.ms += 2 * 3_600_000 + 59 * 60_000;
    assert_eq!(w.state.fuel_left("b", w.now), 800);
}

// ----- jobs ---------------------------------------------------------------------------------

fn submit_job(w: &mut World, tasks: crate::job::JobTasks, max_failures: u32) -> JobView {
    let mut fx = Effects::default();
    let view = w
        .state
        .submit_job(
            request(spec(MIB, 0, false), &tasks, max_failures),
            |_| Ok(()),
            w.now,
            &mut fx,
        )
        .unwrap()
        .view;
    // One change: the job and every task written together, each task told.
    let jobs = fx
        .writes
        .iter()
        .filter(|w| matches!(w, Write::Job(_)))
        .count();
    let tasks = fx
        .writes
        .iter()
        .filter(|w| matches!(w, Write::Task(_)))
        .count();
    assert_eq!((jobs, tasks), (1, view.job.count as usize));
    assert_eq!(fx.events.len(), view.job.count as usize);
    view
}

fn job_counts(w: &World, id: crate::job::JobId) -> [u32; 7] {
    w.state.job(id, None).unwrap().counts
}

#[test]
fn a_jobs_tasks_are_made_queued_counted_and_end_the_job_when_all_have() {
    use crate::job::{JobState, JobTasks};
    let mut w = World::new();
    let sweep = JobTasks::Sweep(vec![
        ("lr".into(), vec!["0.1".into(), "0.2".into()]),
        ("seed".into(), vec!["1".into(), "2".into()]),
    ]);
    let mut template = spec(MIB, 0, false);
    template.args = vec!["--lr={lr}".into(), "{index}".into()];
    let mut fx = Effects::default();
    let view = w
        .state
        .submit_job(request(template, &sweep, 0), |_| Ok(()), w.now, &mut fx)
        .unwrap()
        .view;
    let job = view.job.clone();
    assert_eq!(job.id.to_string(), "j-1");
    assert_eq!(job.count, 4);
    assert_eq!(job.param_names, ["lr", "seed"]);
    let ids: Vec<TaskId> = job.tasks().collect();
    assert_eq!(ids, [TaskId(1), TaskId(2), TaskId(3), TaskId(4)]);
    let third = w.task(ids[2]);
    assert_eq!(third.spec.args, ["--lr=0.2", "2"]);
    assert_eq!(third.spec.env["CORRAL_PARAM_SEED"], "1");
    assert_eq!(
        third.job,
        Some(crate::job::JobMember {
            job: job.id,
            index: 2,
            params: vec![("lr".into(), "0.2".into()), ("seed".into(), "1".into())],
        })
    );
    // A task submitted after takes the next id; the next job, the next job id.
    assert_eq!(w.submit(spec(MIB, 0, false)), TaskId(5));
    assert_eq!(job_counts(&w, job.id)[TaskState::Pending.index()], 4);

    w.agent("a1", 4, 1024 * MIB);
    w.schedule();
    assert_eq!(job_counts(&w, job.id)[TaskState::Assigned.index()], 4);
    w.report("a1", ids[0], running());
    assert_eq!(job_counts(&w, job.id)[TaskState::Running.index()], 1);
    for &id in &ids[..3] {
        w.report("a1", id, ended(OutcomeKind::Success));
    }
    w.check();
    assert_eq!(
        w.state.job(job.id, None).unwrap().job.state,
        JobState::Running
    );
    let fx = w.report("a1", ids[3], ended(OutcomeKind::Success));
    let view = w.state.job(job.id, None).unwrap();
    assert_eq!(view.job.state, JobState::Finished);
    assert_eq!(view.counts[TaskState::Finished.index()], 4);
    assert_eq!(view.fuel_used, 4 * 42);
    assert_eq!(view.job.finished_at_ms, w.now.ms);
    assert!(
        fx.writes
            .iter()
            .any(|w| matches!(w, Write::Job(j) if j.state == JobState::Finished)),
        "the job's end is written with its last task's"
    );
    w.check();
}

#[test]
fn a_job_counts_its_tasks_against_the_tenants_queue_cap_and_checks_its_shape() {
    use crate::job::{JobTasks, MAX_JOB_BYTES};
    let mut w = World::new();
    let mut fx = Effects::default();
    let mut refuse = |w: &mut World, template: TaskSpec, tasks: JobTasks| {
        let e = w
            .state
            .submit_job(request(template, &tasks, 0), |_| Ok(()), w.now, &mut fx)
            .unwrap_err();
        assert!(fx.writes.is_empty() && fx.events.is_empty(), "{e}");
        e
    };
    let e = refuse(&mut w, spec(MIB, 0, false), JobTasks::Array(0));
    assert!(matches!(e, HostError::InvalidArgument(_)), "{e}");
    // Stdin is stored by every task: a job's in all is bounded.
    let mut fat = spec(MIB, 0, false);
    fat.stdin = Bytes::from(vec![0; 1 << 20]);
    let e = refuse(&mut w, fat, JobTasks::Array(65));
    assert!(e.to_string().contains("as a file"), "{e}");
    // An arg made long by its parameters is refused.
    let mut long = spec(MIB, 0, false);
    long.args = vec!["{p}".repeat(2000)];
    let params = JobTasks::Params(vec![vec![("p".into(), "x".repeat(1000))]]);
    let e = refuse(&mut w, long, params);
    assert!(e.to_string().contains("task 0 of the job"), "{e}");
    // A small request that would expand to gigabytes is refused once its tasks pass the
    // job's bound, long before they are all made.
    let mut big = spec(MIB, 0, false);
    big.args = vec!["{a}".repeat(1000)];
    let sweep = JobTasks::Sweep(vec![
        ("a".into(), vec!["x".repeat(1024)]),
        ("b".into(), (0..100_000).map(|i| i.to_string()).collect()),
    ]);
    let e = refuse(&mut w, big, sweep);
    assert!(e.to_string().contains(&MAX_JOB_BYTES.to_string()), "{e}");
    let at: u32 = e
        .to_string()
        .split("at task ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at < 1000, "refused after {at} tasks: {e}");
    // No room on disk for what the tasks take: refused, nothing changed.
    let e = w
        .state
        .submit_job(
            request(spec(MIB, 0, false), &JobTasks::Array(3), 0),
            |bytes| {
                assert!(bytes >= 3 * 1024, "{bytes}");
                Err(HostError::Exhausted("no room".into()))
            },
            w.now,
            &mut fx,
        )
        .unwrap_err();
    assert!(matches!(e, HostError::Exhausted(_)), "{e}");
    assert!(fx.writes.is_empty() && w.state.tasks().next().is_none());

    set(
        &mut w,
        "default",
        TenantChange {
            max_queued: Some(10),
            ..Default::default()
        },
    );
    w.submit(spec(MIB, 0, false));
    let e = w
        .state
        .submit_job(
            request(spec(MIB, 0, false), &JobTasks::Array(10), 0),
            |_| Ok(()),
            w.now,
            &mut fx,
        )
        .unwrap_err();
    assert!(matches!(e, HostError::Exhausted(_)), "{e}");
    assert!(e.to_string().contains("a job of 10 would pass"), "{e}");
    assert!(fx.writes.is_empty() && fx.events.is_empty());
    submit_job(&mut w, JobTasks::Array(9), 0);
    w.check();
}

#[test]
fn max_failures_kills_the_rest_and_fails_the_job() {
    use crate::job::{JobState, JobTasks};
    let mut w = World::new();
    w.agent("a1", 3, 1024 * MIB);
    let view = submit_job(&mut w, JobTasks::Array(6), 2);
    let ids: Vec<TaskId> = view.job.tasks().collect();
    w.schedule();
    w.report("a1", ids[0], ended(OutcomeKind::Trap));
    assert_eq!(
        w.state.job(view.job.id, None).unwrap().job.state,
        JobState::Running
    );
    let fx = w.report("a1", ids[1], ended(OutcomeKind::Exit));
    // The pending ones end at once; the one running is asked to stop.
    for &id in &ids[3..] {
        assert_eq!(w.task(id).state, TaskState::Killed);
        assert!(
            w.task(id).reason.contains("max_failures (2)"),
            "{}",
            w.task(id).reason
        );
    }
    assert!(fx
        .commands
        .iter()
        .any(|(_, c)| matches!(c, AgentCommand::Kill(a) if a.task_id == ids[2])));
    assert_eq!(
        w.state.job(view.job.id, None).unwrap().job.state,
        JobState::Running
    );
    w.report("a1", ids[2], ended(OutcomeKind::Killed));
    let job = w.state.job(view.job.id, None).unwrap();
    assert_eq!(job.job.state, JobState::Failed);
    assert!(
        job.job.reason.contains("2 of its tasks failed"),
        "{}",
        job.job.reason
    );
    assert_eq!(job.counts[TaskState::Killed.index()], 4);
    w.check();
}

#[test]
fn a_killed_job_kills_its_unended_tasks_and_ends_killed() {
    use crate::job::{JobState, JobTasks};
    let mut w = World::new();
    w.agent("a1", 1, 1024 * MIB);
    let view = submit_job(&mut w, JobTasks::Array(3), 0);
    let ids: Vec<TaskId> = view.job.tasks().collect();
    w.schedule();
    w.report("a1", ids[0], ended(OutcomeKind::Success));
    w.schedule();
    let mut fx = Effects::default();
    let killed = w
        .state
        .kill_job(view.job.id, Some("other"), w.now, &mut fx)
        .unwrap_err();
    assert!(
        matches!(killed, HostError::NotFound(_)),
        "another tenant's job is not there"
    );
    let killed = w.state.kill_job(view.job.id, None, w.now, &mut fx).unwrap();
    assert_eq!(
        killed.job.state,
        JobState::Running,
        "its running task has not stopped yet"
    );
    assert_eq!(w.task(ids[2]).state, TaskState::Killed);
    w.report("a1", ids[1], ended(OutcomeKind::Killed));
    let job = w.state.job(view.job.id, None).unwrap();
    assert_eq!(job.job.state, JobState::Killed);
    assert_eq!(job.counts[TaskState::Finished.index()], 1);
    let again = w
        .state
        .kill_job(view.job.id, None, w.now, &mut fx)
        .unwrap_err();
    assert!(again.to_string().contains("already ended"), "{again}");
    w.check();
}

#[test]
fn a_jobs_tasks_are_kept_together_and_restored_with_their_counts() {
    use crate::job::{JobState, JobTasks};
    let config = HostConfig {
        task_retention: Duration::from_secs(60),
        ..HostConfig::default()
    };
    let mut w = World::with(&config);
    w.agent("a1", 1, 1024 * MIB);
    let view = submit_job(&mut w, JobTasks::Array(2), 0);
    let ids: Vec<TaskId> = view.job.tasks().collect();
    w.schedule();
    w.report("a1", ids[0], ended(OutcomeKind::Trap));
    // Long past the first task's retention, its job still runs: it is kept.
    w.tick(Duration::from_secs(600));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).tasks, 0);

    // Restored mid-job: counts and the job's books come back from the tasks.
    let loaded = Loaded {
        tasks: w.state.tasks().cloned().collect(),
        jobs: vec![w.state.job(view.job.id, None).unwrap().job],
        highest_job_id: 1,
        agents: vec![(info("a1", 1, 1024 * MIB), 0)],
        partitions: w.state.partitions().cloned().collect(),
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let mut restored = HostState::restore(&config, loaded, w.now);
    check_invariants(&restored).unwrap();
    assert_eq!(
        restored.job(view.job.id, None).unwrap(),
        w.state.job(view.job.id, None).unwrap()
    );
    let mut fx = Effects::default();
    let next = restored
        .submit_job(
            request(spec(MIB, 0, false), &JobTasks::Array(1), 0),
            |_| Ok(()),
            w.now,
            &mut fx,
        )
        .unwrap();
    assert_eq!(
        next.view.job.id.to_string(),
        "j-2",
        "job ids are not given twice"
    );

    w.schedule();
    w.report("a1", ids[1], ended(OutcomeKind::Success));
    assert_eq!(
        w.state.job(view.job.id, None).unwrap().job.state,
        JobState::Failed
    );
    w.tick(Duration::from_secs(59));
    assert_eq!(w.state.collect(w.now, &mut fx).tasks, 0);
    w.tick(Duration::from_secs(2));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).tasks, 2);
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::ForgetJob(id) if *id == view.job.id)));
    let gone = w.state.job(view.job.id, None).unwrap_err().to_string();
    assert!(gone.contains("task_retention"), "{gone}");
    w.check();
}

#[test]
fn a_failed_fast_job_stays_failed_and_its_reason_is_written() {
    use crate::job::{JobState, JobTasks};
    let mut w = World::new();
    w.agent("a1", 2, 1024 * MIB);
    let view = submit_job(&mut w, JobTasks::Array(4), 1);
    let ids: Vec<TaskId> = view.job.tasks().collect();
    w.schedule();
    let fx = w.report("a1", ids[0], ended(OutcomeKind::Trap));
    assert!(
        fx.writes
            .iter()
            .any(|w| matches!(w, Write::Job(j) if j.reason.contains("max_failures"))),
        "the reason is stored when the job fails fast"
    );
    // A kill asked now does not turn a failed job into a killed one.
    let mut fx = Effects::default();
    w.state.kill_job(view.job.id, None, w.now, &mut fx).unwrap();
    w.report("a1", ids[1], ended(OutcomeKind::Killed));
    let job = w.state.job(view.job.id, None).unwrap();
    assert_eq!(job.job.state, JobState::Failed);
    assert!(
        job.job.reason.contains("max_failures"),
        "{}",
        job.job.reason
    );
    w.check();
}

#[test]
fn listing_a_jobs_tasks_past_its_end_or_as_another_tenant_lists_nothing() {
    use crate::job::JobTasks;
    let mut w = World::new();
    let view = submit_job(&mut w, JobTasks::Array(3), 0);
    let filter = |tenant: Option<&str>| TaskFilter {
        job: Some(view.job.id),
        tenant: tenant.map(String::from),
        ..Default::default()
    };
    let (all, more) = w.state.list(&filter(None), None, 10, w.now);
    assert_eq!((all.len(), more), (3, false));
    let (page, more) = w.state.list(&filter(None), None, 2, w.now);
    assert_eq!((page.len(), more), (2, true));
    for after in [TaskId(3), TaskId(u64::MAX - 1), TaskId(u64::MAX)] {
        let (rest, _) = w.state.list(&filter(None), Some(after), 10, w.now);
        assert!(rest.is_empty(), "after {after}");
    }
    let (theirs, _) = w.state.list(&filter(Some("other")), None, 10, w.now);
    assert!(theirs.is_empty());
    let paged = w
        .state
        .job_tasks(view.job.id, None, Some(TaskId(u64::MAX)), 10)
        .unwrap();
    assert_eq!(paged, (Vec::new(), false));
    assert!(w
        .state
        .job_tasks(view.job.id, Some("other"), None, 10)
        .is_err());
}

#[test]
fn a_job_restored_with_its_tasks_ended_or_missing_ends_at_the_next_collection() {
    use crate::job::{JobState, JobTasks};
    let mut w = World::new();
    w.agent("a1", 4, 1024 * MIB);
    let view = submit_job(&mut w, JobTasks::Array(3), 0);
    let ids: Vec<TaskId> = view.job.tasks().collect();
    w.schedule();
    w.report("a1", ids[0], ended(OutcomeKind::Success));
    w.report("a1", ids[1], ended(OutcomeKind::Success));
    // The third task's record was set aside as undecodable; the job's record says RUNNING.
    let running_job = {
        let mut job = w.state.job(view.job.id, None).unwrap().job;
        job.state = JobState::Running;
        job
    };
    let loaded = |w: &World, tasks: Vec<Task>, jobs: Vec<crate::job::Job>| Loaded {
        tasks,
        jobs,
        highest_job_id: 1,
        agents: vec![(info("a1", 4, 1024 * MIB), 0)],
        partitions: w.state.partitions().cloned().collect(),
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let kept: Vec<Task> = w
        .state
        .tasks()
        .filter(|t| t.id != ids[2])
        .cloned()
        .collect();
    let mut restored = HostState::restore(
        &HostConfig::default(),
        loaded(&w, kept.clone(), vec![running_job.clone()]),
        w.now,
    );
    let mut fx = Effects::default();
    restored.collect(w.now, &mut fx);
    let job = restored.job(view.job.id, None).unwrap();
    assert_eq!(job.job.state, JobState::Failed);
    assert!(
        job.job.reason.contains("1 not restored"),
        "{}",
        job.job.reason
    );
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::Job(j) if j.state == JobState::Failed)));
    check_invariants(&restored).unwrap();

    // Its job's record set aside instead: its tasks are kept on their own, and go.
    let config = HostConfig {
        task_retention: Duration::from_secs(60),
        ..HostConfig::default()
    };
    let mut orphans = HostState::restore(&config, loaded(&w, kept, vec![]), w.now);
    let mut fx = Effects::default();
    let later = w.now.after(Duration::from_secs(61));
    assert_eq!(orphans.collect(later, &mut fx).tasks, 2);
}

fn request(
    template: TaskSpec,
    tasks: &crate::job::JobTasks,
    max_failures: u32,
) -> crate::job::JobRequest {
    crate::job::JobRequest {
        template,
        tasks: tasks.clone(),
        max_failures,
        idempotency_key: None,
        sha256: String::new(),
    }
}

#[test]
fn a_jobs_idempotency_key_answers_it_for_the_same_request_only_and_goes_with_it() {
    use crate::job::JobTasks;
    let config = HostConfig {
        task_retention: Duration::from_secs(60),
        ..HostConfig::default()
    };
    let mut w = World::with(&config);
    w.agent("a1", 2, 1024 * MIB);
    let keyed = |sha: &str| crate::job::JobRequest {
        idempotency_key: Some("k".into()),
        sha256: sha.into(),
        ..request(spec(MIB, 0, false), &JobTasks::Array(2), 0)
    };
    let mut fx = Effects::default();
    let first = w
        .state
        .submit_job(keyed("aa"), |_| Ok(()), w.now, &mut fx)
        .unwrap();
    assert!(!first.existed);
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::JobKey(t, k, id) if t == "default" && k == "k" && *id == first.view.job.id)));
    let mut fx = Effects::default();
    let again = w
        .state
        .submit_job(
            keyed("aa"),
            |_| panic!("a retry needs no room"),
            w.now,
            &mut fx,
        )
        .unwrap();
    assert!(again.existed);
    assert_eq!(again.view.job.id, first.view.job.id);
    assert!(fx.writes.is_empty() && fx.events.is_empty());
    let e = w
        .state
        .submit_job(keyed("bb"), |_| Ok(()), w.now, &mut fx)
        .unwrap_err();
    assert!(e.to_string().contains("with a different request"), "{e}");

    // The key is restored with its job, and goes with it past the retention.
    let loaded = Loaded {
        tasks: w.state.tasks().cloned().collect(),
        jobs: vec![first.view.job.clone()],
        job_keys: vec![(("default".into(), "k".into()), first.view.job.id)],
        highest_job_id: 1,
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let restored = HostState::restore(&config, loaded, w.now);
    assert!(restored.names_job("default", "k"));
    let ids: Vec<TaskId> = first.view.job.tasks().collect();
    w.schedule();
    for id in ids {
        w.report("a1", id, ended(OutcomeKind::Success));
    }
    w.tick(Duration::from_secs(61));
    let mut fx = Effects::default();
    w.state.collect(w.now, &mut fx);
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::ForgetJobKey(t, k) if t == "default" && k == "k")));
    assert!(!w.state.names_job("default", "k"));
    w.check();
}

#[test]
fn the_key_of_a_job_not_restored_is_kept_a_retention_and_refuses_meanwhile() {
    use crate::job::{JobId, JobTasks};
    let config = HostConfig {
        task_retention: Duration::from_secs(60),
        ..HostConfig::default()
    };
    let now = Now {
        instant: Instant::now(),
        ms: 1_000_000,
    };
    let loaded = Loaded {
        job_keys: vec![(("default".into(), "k".into()), JobId(4))],
        highest_job_id: 4,
        modules: vec![(SHA.into(), ModuleFacts::default())],
        ..Default::default()
    };
    let mut state = HostState::restore(&config, loaded, now);
    let mut fx = Effects::default();
    state.collect(now, &mut fx);
    let retry = crate::job::JobRequest {
        idempotency_key: Some("k".into()),
        ..request(spec(MIB, 0, false), &JobTasks::Array(1), 0)
    };
    let e = state
        .submit_job(retry.clone(), |_| Ok(()), now, &mut fx)
        .unwrap_err();
    assert!(e.to_string().contains("could not be loaded"), "{e}");
    let later = now.after(Duration::from_secs(61));
    let mut fx = Effects::default();
    state.collect(later, &mut fx);
    assert!(fx
        .writes
        .iter()
        .any(|w| matches!(w, Write::ForgetJobKey(t, k) if t == "default" && k == "k")));
    let made = state.submit_job(retry, |_| Ok(()), later, &mut fx).unwrap();
    assert_eq!(made.view.job.id, JobId(5));
}

#[test]
fn inputs_count_against_their_uploaders_storage_and_go_once_unused() {
    use crate::task::InputMount;
    let config = HostConfig {
        input_retention: Duration::from_secs(600),
        task_retention: Duration::from_secs(60),
        ..HostConfig::default()
    };
    let mut w = World::with(&config);
    let (big, small) = ("b".repeat(64), "c".repeat(64));
    let limit = crate::tenant::DEFAULT_INPUT_STORAGE.as_u64();
    let mut fx = Effects::default();
    // acme uploads most of its limit; one byte more does not fit, what it has always does,
    // and a small input takes 4 KiB.
    assert_eq!(
        w.state
            .input_uploaded(&big, limit - 4096, Some("acme"), w.now, &mut fx)
            .unwrap(),
        (true, false)
    );
    assert!(matches!(fx.writes.as_slice(), [Write::InputOwner(s, t)] if *s == big && t == "acme"));
    let over = w.state.input_room(Some("acme"), None, 4097).unwrap_err();
    assert!(
        matches!(&over, HostError::Exhausted(m) if m.contains("storage limit")),
        "{over}"
    );
    assert_eq!(
        w.state.input_room(Some("acme"), Some(&big), limit).unwrap(),
        Some(limit - 4096),
        "what it has is answered with its size"
    );
    assert_eq!(w.state.input_room(Some("acme"), None, 10).unwrap(), None);
    // The same bytes from another tenant are stored once and charged to it too; an admin's
    // uploads count against no tenant.
    let mut fx = Effects::default();
    assert_eq!(
        w.state
            .input_uploaded(&big, limit - 4096, Some("zeta"), w.now, &mut fx)
            .unwrap(),
        (false, false)
    );
    assert_eq!(w.state.input_storage("zeta"), limit - 4096);
    assert_eq!(
        w.state
            .input_uploaded(&small, 5, None, w.now, &mut fx)
            .unwrap(),
        (true, false)
    );
    // A tenant mounts only what it uploaded; an admin anything stored.
    let mount = |sha: &str| InputMount {
        sha256: sha.to_string(),
        path: "/input/x".into(),
    };
    assert!(w.state.check_inputs(&[mount(&big)], Some("acme")).is_ok());
    let theirs = w.state.check_inputs(&[mount(&small)], Some("acme"));
    assert!(matches!(theirs, Err(HostError::NotFound(_))));
    assert!(w.state.check_inputs(&[mount(&small)], None).is_ok());
    assert_eq!(w.state.list_inputs(Some("acme")).inputs.len(), 1);
    assert_eq!(w.state.list_inputs(None).inputs.len(), 2);

    // A task mounting `big` keeps it, and only the agent it is placed on may fetch it.
    w.agent("a1", 4, 4 * GIB);
    let mut task = spec(MIB, 0, false);
    task.tenant = "acme".into();
    task.inputs = vec![mount(&big)];
    let id = w.submit(task);
    assert!(w.state.input_fetch("a1", &big).is_none(), "not placed yet");
    w.schedule();
    assert!(w.state.input_fetch("a1", &big).is_some());
    assert!(w.state.input_fetch("a2", &big).is_none());
    assert!(w.state.input_fetch("a1", &small).is_none());
    assert_eq!(w.state.input(&big, None, w.now).unwrap().fetches, 1);
    // A tenant is shown its own use of the bytes, never another's.
    let theirs = w.state.input(&big, Some("zeta"), w.now).unwrap();
    assert_eq!((theirs.tasks, theirs.fetches), (0, 0));
    assert_eq!(w.state.input(&big, Some("acme"), w.now).unwrap().tasks, 1);
    w.tick(Duration::from_secs(7200));
    let mut fx = Effects::default();
    assert_eq!(
        w.state.collect(w.now, &mut fx).inputs,
        1,
        "only the unmounted one goes"
    );
    assert!(matches!(fx.writes.as_slice(), [.., Write::ForgetInput(s)] if *s == small));
    // Once its task ends and is removed, `big` is kept input_retention from then, then goes
    // with its owners.
    w.report("a1", id, ended(OutcomeKind::Success));
    w.tick(Duration::from_secs(61));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).tasks, 1);
    assert!(w.state.may_use_input(&big, Some("acme")));
    w.tick(Duration::from_secs(601));
    let mut fx = Effects::default();
    assert_eq!(w.state.collect(w.now, &mut fx).inputs, 1);
    assert!(!w.state.may_use_input(&big, None));
    assert_eq!(w.state.input_storage("acme"), 0);
    assert_eq!(w.state.input_storage("zeta"), 0);
    w.check();
}

#[test]
fn a_damaged_input_is_forgotten_so_that_its_next_upload_stores_it_again() {
    use crate::task::InputMount;
    let mut w = World::new();
    let sha = "d".repeat(64);
    let mut fx = Effects::default();
    w.state
        .input_uploaded(&sha, 100, Some("acme"), w.now, &mut fx)
        .unwrap();
    let mut task = spec(MIB, 0, false);
    task.tenant = "acme".into();
    task.inputs = vec![InputMount {
        sha256: sha.clone(),
        path: "/input/x".into(),
    }];
    w.submit(task.clone());
    let first = w.state.inputs.by_sha[&sha].generation;
    let mut fx = Effects::default();
    w.state.input_damaged(&sha, first, &mut fx);
    assert!(matches!(fx.writes.as_slice(), [Write::ForgetInput(s)] if *s == sha));
    assert!(!w.state.may_use_input(&sha, Some("acme")));
    assert!(w.state.check_inputs(&task.inputs, Some("acme")).is_err());
    assert_eq!(
        w.state.input_room(Some("acme"), Some(&sha), 100).unwrap(),
        None
    );
    let mut fx = Effects::default();
    assert_eq!(
        w.state
            .input_uploaded(&sha, 100, Some("acme"), w.now, &mut fx)
            .unwrap(),
        (true, false),
        "stored again, as new"
    );
    // A late report of the first copy's damage (a fetch that read it) leaves the new one.
    let mut fx = Effects::default();
    w.state.input_damaged(&sha, first, &mut fx);
    assert!(fx.writes.is_empty());
    assert!(w.state.may_use_input(&sha, Some("acme")));
    w.check();
}
