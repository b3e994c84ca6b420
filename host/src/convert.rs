//! Conversions between the domain types and `corral.v1` messages. The gRPC api and the store use
//! these (the store keeps records in their protobuf form: one schema for the wire and the disk,
//! compact and able to evolve); nothing else in the host sees protobuf types.

use std::time::Duration;

use bytes::Bytes;
use corral_proto::pb;

use crate::auth::{AuditEntry, TokenRecord};
use crate::config::HostConfig;
use crate::job::{Job, JobId, JobMember, JobState, JobTasks, Param};
use crate::partition::{Partition, PartitionState, Reservation, Resources};
use crate::registry::{AgentInfo, AgentState};
use crate::state::TenantView;
use crate::task::{
    OutcomeKind, OutcomeRecord, OutputFile, Progress, RetryPolicy, Task, TaskId, TaskLimits,
    TaskOutput, TaskSpec, TaskState,
};
use crate::tenant::{FuelBudget, ImportRules, TenantChange, TenantSettings};

/// A task state to its protobuf form.
pub fn state_to_pb(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Finished => pb::TaskState::Finished,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Killed => pb::TaskState::Killed,
        TaskState::Lost => pb::TaskState::Lost,
    }
}

/// A task state from its protobuf number; `None` for unspecified or unknown.
pub fn state_from_pb(state: i32) -> Option<TaskState> {
    match pb::TaskState::try_from(state).ok()? {
        pb::TaskState::Unspecified => None,
        pb::TaskState::Pending => Some(TaskState::Pending),
        pb::TaskState::Assigned => Some(TaskState::Assigned),
        pb::TaskState::Running => Some(TaskState::Running),
        pb::TaskState::Finished => Some(TaskState::Finished),
        pb::TaskState::Failed => Some(TaskState::Failed),
        pb::TaskState::Killed => Some(TaskState::Killed),
        pb::TaskState::Lost => Some(TaskState::Lost),
    }
}

/// The bounds of a task spec's fields, checked at submit: each field alone and, for the lists
/// and maps, all of it together. A spec within them lists, stores and ships in well under the
/// gRPC message cap.
pub mod bounds {
    /// Bytes of the name.
    pub const NAME_BYTES: usize = 256;
    /// Bytes of the tenant.
    pub const TENANT_BYTES: usize = 128;
    /// Bytes of an idempotency key.
    pub const IDEMPOTENCY_KEY_BYTES: usize = 256;
    /// Arguments.
    pub const ARGS: usize = 4096;
    /// Bytes of all arguments together (Linux's `ARG_MAX` is 2 MiB for args and env).
    pub const ARGS_BYTES: usize = 1 << 20;
    /// Environment variables.
    pub const ENV_VARS: usize = 4096;
    /// Bytes of all environment names and values together.
    pub const ENV_BYTES: usize = 1 << 20;
    /// Labels, and constraints, each.
    pub const LABELS: usize = 64;
    /// Bytes of a label's (or a constraint's) key.
    pub const LABEL_KEY_BYTES: usize = 128;
    /// Bytes of a label's (or a constraint's) value.
    pub const LABEL_VALUE_BYTES: usize = 1024;
}

/// `text` for a message: at most 64 characters of it, so that a refusal of a huge value still
/// fits a gRPC header.
pub fn shown(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

/// Checks a name-like field: at most `max` bytes and no control characters (NUL included).
fn check_text(field: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "{field} {} is over the {max}-byte bound",
            shown(text)
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{field} {} contains a control character",
            shown(text)
        ));
    }
    Ok(())
}

/// Checks an idempotency key against [`bounds::IDEMPOTENCY_KEY_BYTES`].
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    check_text("idempotency key", key, bounds::IDEMPOTENCY_KEY_BYTES)
}

/// Checks labels or constraints (`field`) against [`bounds`].
fn check_labels(
    field: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    use bounds::{LABELS, LABEL_KEY_BYTES, LABEL_VALUE_BYTES};
    if labels.len() > LABELS {
        return Err(format!(
            "{} {field}, over the bound of {LABELS}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if key.is_empty() {
            return Err(format!("a key of {field} is empty"));
        }
        check_text(&format!("the key of {field}"), key, LABEL_KEY_BYTES)?;
        check_text(
            &format!("the value of {field} {}", shown(key)),
            value,
            LABEL_VALUE_BYTES,
        )?;
    }
    Ok(())
}

/// Checks every bounded field of a submitted spec, naming the first one out of bounds.
fn check_spec(spec: &pb::TaskSpec) -> Result<(), String> {
    check_text("name", &spec.name, bounds::NAME_BYTES)?;
    check_text("tenant", &spec.tenant, bounds::TENANT_BYTES)?;
    if spec.args.len() > bounds::ARGS {
        return Err(format!(
            "{} args, over the bound of {}",
            spec.args.len(),
            bounds::ARGS
        ));
    }
    let args: usize = spec.args.iter().map(String::len).sum();
    if args > bounds::ARGS_BYTES {
        return Err(format!(
            "args are {args} bytes together, over the {}-byte bound",
            bounds::ARGS_BYTES
        ));
    }
    if spec.env.len() > bounds::ENV_VARS {
        return Err(format!(
            "{} env variables, over the bound of {}",
            spec.env.len(),
            bounds::ENV_VARS
        ));
    }
    let env: usize = spec.env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if env > bounds::ENV_BYTES {
        return Err(format!(
            "env is {env} bytes together, over the {}-byte bound",
            bounds::ENV_BYTES
        ));
    }
    check_labels("labels", &spec.labels)?;
    check_labels("constraints", &spec.constraints)
}

/// A submitted spec, with the host's defaults filled in where the client left a zero, and its
/// fields checked.
pub fn spec_from_pb(spec: pb::TaskSpec, defaults: &HostConfig) -> Result<TaskSpec, String> {
    check_spec(&spec)?;
    let limits = spec.limits.unwrap_or_default();
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    let sha = spec.module_sha256.trim().to_ascii_lowercase();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "module_sha256 {} is not a sha256 (64 hex digits)",
            shown(&spec.module_sha256)
        ));
    }
    if spec.stdin.len() as u64 > defaults.max_stdin_size.as_u64() {
        return Err(format!(
            "stdin is {} bytes, over the host's {}-byte cap",
            spec.stdin.len(),
            defaults.max_stdin_size.as_u64()
        ));
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!(
                "environment variable name {} is not valid",
                shown(key)
            ));
        }
    }
    let inputs: Vec<pb::InputMount> = spec
        .inputs
        .into_iter()
        .map(|i| pb::InputMount {
            sha256: i.sha256.trim().to_ascii_lowercase(),
            path: i.path,
        })
        .collect();
    if let Some(problem) = corral_proto::input::mounts_problem(&inputs) {
        return Err(problem);
    }
    let retry = spec.retry.unwrap_or_default();
    Ok(TaskSpec {
        name: spec.name,
        tenant: if spec.tenant.is_empty() {
            "default".into()
        } else {
            spec.tenant
        },
        module_sha256: sha,
        args: spec.args,
        env: spec.env,
        stdin: spec.stdin,
        limits: TaskLimits {
            fuel: or(limits.fuel, defaults.default_fuel),
            memory_bytes: or(limits.memory_bytes, defaults.default_memory.as_u64()),
            timeout: Duration::from_millis(or(
                limits.timeout_ms,
                u64::try_from(defaults.default_timeout.as_millis()).unwrap_or(u64::MAX),
            )),
            max_output_bytes: or(limits.max_output_bytes, defaults.max_output_size.as_u64())
                .min(defaults.max_output_size.as_u64()),
            max_disk_bytes: or(limits.max_disk_bytes, defaults.default_max_disk.as_u64())
                .min(defaults.max_disk_size.as_u64()),
        },
        labels: spec.labels,
        constraints: spec.constraints,
        retry: RetryPolicy {
            max_retries: retry.max_retries.unwrap_or(defaults.default_retries),
            retry_failed: retry.retry_failed,
        },
        collect_outputs: spec.collect_outputs,
        inputs: inputs.into_iter().map(input_from_pb).collect(),
    })
}

fn input_from_pb(i: pb::InputMount) -> crate::task::InputMount {
    crate::task::InputMount {
        sha256: i.sha256,
        path: i.path,
    }
}

/// A stored spec from its protobuf form, as it was accepted: not judged again by today's
/// configuration or bounds (a host whose caps were lowered, or raised, since still starts with
/// every task it acknowledged, and a stored cap is never clamped).
pub fn stored_spec_from_pb(spec: pb::TaskSpec) -> TaskSpec {
    let limits = spec.limits.unwrap_or_default();
    let retry = spec.retry.unwrap_or_default();
    TaskSpec {
        name: spec.name,
        tenant: if spec.tenant.is_empty() {
            "default".into()
        } else {
            spec.tenant
        },
        module_sha256: spec.module_sha256,
        args: spec.args,
        env: spec.env,
        stdin: spec.stdin,
        limits: TaskLimits {
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes,
            timeout: Duration::from_millis(limits.timeout_ms),
            max_output_bytes: limits.max_output_bytes,
            max_disk_bytes: limits.max_disk_bytes,
        },
        labels: spec.labels,
        constraints: spec.constraints,
        retry: RetryPolicy {
            max_retries: retry.max_retries.unwrap_or(0),
            retry_failed: retry.retry_failed,
        },
        collect_outputs: spec.collect_outputs,
        inputs: spec.inputs.into_iter().map(input_from_pb).collect(),
    }
}

/// A spec to its protobuf form; `with_stdin` false leaves stdin out (listings).
pub fn spec_to_pb(spec: &TaskSpec, with_stdin: bool) -> pb::TaskSpec {
    pb::TaskSpec {
        name: spec.name.clone(),
        tenant: spec.tenant.clone(),
        module_sha256: spec.module_sha256.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        stdin: if with_stdin {
            spec.stdin.clone()
        } else {
            Default::default()
        },
        limits: Some(pb::Limits {
            fuel: spec.limits.fuel,
            memory_bytes: spec.limits.memory_bytes,
            timeout_ms: u64::try_from(spec.limits.timeout.as_millis()).unwrap_or(u64::MAX),
            max_output_bytes: spec.limits.max_output_bytes,
            max_disk_bytes: spec.limits.max_disk_bytes,
        }),
        labels: spec.labels.clone(),
        constraints: spec.constraints.clone(),
        retry: Some(pb::RetryPolicy {
            max_retries: Some(spec.retry.max_retries),
            retry_failed: spec.retry.retry_failed,
        }),
        collect_outputs: spec.collect_outputs,
        inputs: spec
            .inputs
            .iter()
            .map(|i| pb::InputMount {
                sha256: i.sha256.clone(),
                path: i.path.clone(),
            })
            .collect(),
    }
}

/// An outcome kind to its protobuf form.
pub fn outcome_kind_to_pb(kind: OutcomeKind) -> pb::OutcomeKind {
    match kind {
        OutcomeKind::Success => pb::OutcomeKind::Success,
        OutcomeKind::Exit => pb::OutcomeKind::Exit,
        OutcomeKind::OutOfFuel => pb::OutcomeKind::OutOfFuel,
        OutcomeKind::MemoryLimit => pb::OutcomeKind::MemoryLimit,
        OutcomeKind::Timeout => pb::OutcomeKind::Timeout,
        OutcomeKind::StackOverflow => pb::OutcomeKind::StackOverflow,
        OutcomeKind::Trap => pb::OutcomeKind::Trap,
        OutcomeKind::LinkError => pb::OutcomeKind::LinkError,
        OutcomeKind::InvalidModule => pb::OutcomeKind::InvalidModule,
        OutcomeKind::Killed => pb::OutcomeKind::Killed,
        OutcomeKind::AgentError => pb::OutcomeKind::AgentError,
        OutcomeKind::CompileLimit => pb::OutcomeKind::CompileLimit,
        OutcomeKind::DiskLimit => pb::OutcomeKind::DiskLimit,
    }
}

/// An outcome kind from its protobuf number; `None` for unspecified or unknown.
pub fn outcome_kind_from_pb(kind: i32) -> Option<OutcomeKind> {
    Some(match pb::OutcomeKind::try_from(kind).ok()? {
        pb::OutcomeKind::Unspecified => return None,
        pb::OutcomeKind::Success => OutcomeKind::Success,
        pb::OutcomeKind::Exit => OutcomeKind::Exit,
        pb::OutcomeKind::OutOfFuel => OutcomeKind::OutOfFuel,
        pb::OutcomeKind::MemoryLimit => OutcomeKind::MemoryLimit,
        pb::OutcomeKind::Timeout => OutcomeKind::Timeout,
        pb::OutcomeKind::StackOverflow => OutcomeKind::StackOverflow,
        pb::OutcomeKind::Trap => OutcomeKind::Trap,
        pb::OutcomeKind::LinkError => OutcomeKind::LinkError,
        pb::OutcomeKind::InvalidModule => OutcomeKind::InvalidModule,
        pb::OutcomeKind::Killed => OutcomeKind::Killed,
        pb::OutcomeKind::AgentError => OutcomeKind::AgentError,
        pb::OutcomeKind::CompileLimit => OutcomeKind::CompileLimit,
        pb::OutcomeKind::DiskLimit => OutcomeKind::DiskLimit,
    })
}

/// An outcome to its protobuf form.
pub fn outcome_to_pb(outcome: &OutcomeRecord) -> pb::Outcome {
    pb::Outcome {
        kind: outcome_kind_to_pb(outcome.kind) as i32,
        exit_code: outcome.exit_code,
        message: outcome.message.clone(),
    }
}

/// An outcome from its protobuf form. One whose kind is unspecified or unknown (an agent of
/// another version) is Corral's failure, `agent_error`, naming the number.
pub fn outcome_from_pb(outcome: pb::Outcome) -> OutcomeRecord {
    match outcome_kind_from_pb(outcome.kind) {
        Some(kind) => OutcomeRecord {
            kind,
            exit_code: outcome.exit_code,
            message: outcome.message,
        },
        None => OutcomeRecord {
            kind: OutcomeKind::AgentError,
            exit_code: 0,
            message: format!(
                "the agent reported an outcome of unknown kind {} ({})",
                outcome.kind, outcome.message
            ),
        },
    }
}

/// A task to its protobuf form; `with_stdin` false leaves the spec's stdin out.
pub fn task_to_pb(task: &Task, with_stdin: bool) -> pb::Task {
    pb::Task {
        id: task.id.to_string(),
        spec: Some(spec_to_pb(&task.spec, with_stdin)),
        state: state_to_pb(task.state) as i32,
        attempts: task.attempts,
        agent_id: task.agent_id.clone().unwrap_or_default(),
        partition_id: task.partition_id.clone().unwrap_or_default(),
        outcome: task.outcome.as_ref().map(outcome_to_pb),
        fuel_used: task.fuel_used,
        peak_memory_bytes: task.peak_memory_bytes,
        wall_us: task.wall_us,
        created_at_ms: task.created_at_ms,
        updated_at_ms: task.updated_at_ms,
        started_at_ms: task.started_at_ms,
        finished_at_ms: task.finished_at_ms,
        reason: task.reason.clone(),
        progress: task.progress.map(|p| pb::Progress {
            done: p.done,
            total: p.total,
        }),
        stdin_bytes: task.spec.stdin.len() as u64,
        memory_request_bytes: task.spec.limits.memory_bytes,
        kill_requested: task.kill_requested,
        guest_warnings: task.guest_warnings,
        job_id: task
            .job
            .as_ref()
            .map(|m| m.job.to_string())
            .unwrap_or_default(),
        job_index: task.job.as_ref().map_or(0, |m| m.index),
        params: task
            .job
            .as_ref()
            .map(|m| params_to_pb(&m.params))
            .unwrap_or_default(),
    }
}

/// Parameters to their protobuf form.
pub fn params_to_pb(params: &[Param]) -> Vec<pb::Param> {
    params
        .iter()
        .map(|(name, value)| pb::Param {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn params_from_pb(params: Vec<pb::Param>) -> Vec<Param> {
    params.into_iter().map(|p| (p.name, p.value)).collect()
}

/// A job's state to its protobuf form.
pub fn job_state_to_pb(state: JobState) -> pb::JobState {
    match state {
        JobState::Running => pb::JobState::Running,
        JobState::Finished => pb::JobState::Finished,
        JobState::Failed => pb::JobState::Failed,
        JobState::Killed => pb::JobState::Killed,
    }
}

/// A job as clients see it: with its tasks counted by state (indexed as [`TaskState::ALL`])
/// and the fuel its ended tasks used.
pub fn job_to_pb(job: &Job, counts: Option<&[u32; 7]>, fuel_used: u64) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        name: job.name.clone(),
        tenant: job.tenant.clone(),
        module_sha256: job.module_sha256.clone(),
        task_count: job.count,
        first_task_id: job.first.to_string(),
        state: job_state_to_pb(job.state) as i32,
        counts: counts.map(|c| pb::JobCounts {
            pending: c[TaskState::Pending.index()],
            assigned: c[TaskState::Assigned.index()],
            running: c[TaskState::Running.index()],
            finished: c[TaskState::Finished.index()],
            failed: c[TaskState::Failed.index()],
            killed: c[TaskState::Killed.index()],
            lost: c[TaskState::Lost.index()],
        }),
        param_names: job.param_names.clone(),
        max_failures: job.max_failures,
        kill_requested: job.kill_requested,
        reason: job.reason.clone(),
        created_at_ms: job.created_at_ms,
        finished_at_ms: job.finished_at_ms,
        fuel_used,
        request_sha256: job.request_sha256.clone(),
    }
}

/// A stored job from its protobuf form.
pub fn job_from_pb(job: pb::Job) -> Result<Job, String> {
    let id: JobId = job.id.parse()?;
    let first: TaskId = job.first_task_id.parse()?;
    let state = match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Running) => JobState::Running,
        Ok(pb::JobState::Finished) => JobState::Finished,
        Ok(pb::JobState::Failed) => JobState::Failed,
        Ok(pb::JobState::Killed) => JobState::Killed,
        _ => return Err(format!("job {id} has no state")),
    };
    if job.task_count == 0 {
        return Err(format!("job {id} has no tasks"));
    }
    Ok(Job {
        id,
        name: job.name,
        tenant: job.tenant,
        module_sha256: job.module_sha256,
        count: job.task_count,
        first,
        param_names: job.param_names,
        max_failures: job.max_failures,
        kill_requested: job.kill_requested,
        state,
        reason: job.reason,
        created_at_ms: job.created_at_ms,
        finished_at_ms: job.finished_at_ms,
        request_sha256: job.request_sha256,
    })
}

/// Which tasks a submitted job asks for: exactly one of an array, a sweep or parameter sets.
/// Their bounds are checked by [`JobTasks::check`].
pub fn job_tasks_from_pb(request: &pb::SubmitJobRequest) -> Result<JobTasks, String> {
    let given = [
        request.array > 0,
        !request.sweep.is_empty(),
        !request.params.is_empty(),
    ];
    match given {
        [true, false, false] => Ok(JobTasks::Array(request.array)),
        [false, true, false] => Ok(JobTasks::Sweep(
            request
                .sweep
                .iter()
                .map(|axis| (axis.name.clone(), axis.values.clone()))
                .collect(),
        )),
        [false, false, true] => Ok(JobTasks::Params(
            request
                .params
                .iter()
                .map(|set| params_from_pb(set.params.clone()))
                .collect(),
        )),
        [false, false, false] => {
            Err("a job needs an array count, a sweep or parameter sets".into())
        }
        _ => Err("give only one of an array count, a sweep and parameter sets".into()),
    }
}

/// A stored task from its protobuf form.
pub fn task_from_pb(task: pb::Task) -> Result<Task, String> {
    let id: TaskId = task.id.parse()?;
    let state = state_from_pb(task.state).ok_or_else(|| format!("task {id} has no state"))?;
    let spec = stored_spec_from_pb(task.spec.unwrap_or_default());
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(Task {
        id,
        spec,
        state,
        attempts: task.attempts,
        agent_id: some(task.agent_id),
        partition_id: some(task.partition_id),
        outcome: task.outcome.map(outcome_from_pb),
        fuel_used: task.fuel_used,
        peak_memory_bytes: task.peak_memory_bytes,
        wall_us: task.wall_us,
        guest_warnings: task.guest_warnings,
        created_at_ms: task.created_at_ms,
        updated_at_ms: task.updated_at_ms,
        started_at_ms: task.started_at_ms,
        finished_at_ms: task.finished_at_ms,
        reason: task.reason,
        progress: task.progress.map(|p| Progress {
            done: p.done,
            total: p.total,
        }),
        kill_requested: task.kill_requested,
        job: match task.job_id.as_str() {
            "" => None,
            job => Some(JobMember {
                job: job.parse()?,
                index: task.job_index,
                params: params_from_pb(task.params),
            }),
        },
    })
}

/// Output to its protobuf form.
pub fn output_to_pb(output: &TaskOutput) -> pb::TaskOutput {
    pb::TaskOutput {
        stdout: output.stdout.clone(),
        stderr: output.stderr.clone(),
        stdout_truncated: output.stdout_truncated,
        stderr_truncated: output.stderr_truncated,
        files: output
            .files
            .iter()
            .map(|f| pb::OutputFile {
                path: f.path.clone(),
                data: f.data.clone(),
            })
            .collect(),
        files_truncated: output.files_truncated,
    }
}

/// Output from its protobuf form.
pub fn output_from_pb(output: pb::TaskOutput) -> TaskOutput {
    TaskOutput {
        stdout: output.stdout,
        stderr: output.stderr,
        stdout_truncated: output.stdout_truncated,
        stderr_truncated: output.stderr_truncated,
        files: output
            .files
            .into_iter()
            .map(|f| OutputFile {
                path: f.path,
                data: f.data,
            })
            .collect(),
        files_truncated: output.files_truncated,
    }
}

/// Capacity to its protobuf form.
pub fn resources_to_pb(r: Resources) -> pb::Capacity {
    pb::Capacity {
        slots: r.slots,
        memory_bytes: r.memory_bytes,
    }
}

/// Capacity from its protobuf form.
pub fn resources_from_pb(c: Option<pb::Capacity>) -> Resources {
    let c = c.unwrap_or_default();
    Resources {
        slots: c.slots,
        memory_bytes: c.memory_bytes,
    }
}

/// An agent to its protobuf form.
pub fn agent_to_pb(
    info: &AgentInfo,
    state: AgentState,
    last_seen_ms: i64,
    running: u32,
) -> pb::Agent {
    pb::Agent {
        id: info.id.clone(),
        address: info.address.clone(),
        capacity: Some(resources_to_pb(info.capacity)),
        labels: info.labels.clone(),
        version: info.version.clone(),
        state: match state {
            AgentState::Active => pb::AgentState::Active,
            AgentState::Disconnected => pb::AgentState::Disconnected,
            AgentState::Lost => pb::AgentState::Lost,
        } as i32,
        last_seen_ms,
        running_tasks: running,
    }
}

/// A stored agent from its protobuf form.
pub fn agent_from_pb(agent: pb::Agent) -> AgentInfo {
    AgentInfo {
        id: agent.id,
        address: agent.address,
        capacity: resources_from_pb(agent.capacity),
        labels: agent.labels,
        version: agent.version,
    }
}

/// A partition to its protobuf form.
pub fn partition_to_pb(p: &Partition) -> pb::Partition {
    pb::Partition {
        id: p.id.clone(),
        agent_id: p.agent_id.clone(),
        name: p.name.clone(),
        capacity: Some(resources_to_pb(p.capacity)),
        allocated: Some(resources_to_pb(p.allocated)),
        state: match p.state() {
            PartitionState::Available => pb::PartitionState::Available,
            PartitionState::Allocated => pb::PartitionState::Allocated,
            PartitionState::Draining => pb::PartitionState::Draining,
        } as i32,
        tenant: p.reservation.tenant.clone().unwrap_or_default(),
        labels: p.reservation.labels.clone(),
        reserved_for_other: false,
    }
}

/// A stored partition from its protobuf form (allocation is recomputed from the tasks, agent
/// labels taken from the agent's record).
pub fn partition_from_pb(p: pb::Partition) -> Partition {
    Partition {
        id: p.id,
        agent_id: p.agent_id,
        name: p.name,
        capacity: resources_from_pb(p.capacity),
        allocated: Resources::default(),
        reservation: Reservation {
            tenant: (!p.tenant.is_empty()).then_some(p.tenant),
            labels: p.labels,
        },
        agent_labels: Default::default(),
        draining: p.state == pb::PartitionState::Draining as i32,
    }
}

/// A time (ms since the epoch) as people read it: RFC 3339, to the second, UTC.
pub fn time_text(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A token as listed: never its digest.
pub fn token_info_to_pb(r: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        accessor: r.accessor.clone(),
        role: r.role.to_pb() as i32,
        tenant: r.tenant.clone(),
        agent_id: r.agent_id.clone(),
        created_at_ms: r.created_ms,
        expires_at_ms: r.expires_ms,
        last_used_ms: r.last_used_ms,
        revoked_at_ms: r.revoked_ms,
        description: r.description.clone(),
        issued_by: r.issued_by.clone(),
    }
}

/// A token as stored.
pub fn token_to_stored_pb(r: &TokenRecord) -> pb::StoredToken {
    pb::StoredToken {
        info: Some(token_info_to_pb(r)),
        digest: Bytes::copy_from_slice(&r.digest),
    }
}

/// A stored token, or why it is not one.
pub fn token_from_stored_pb(stored: pb::StoredToken) -> Result<TokenRecord, String> {
    let info = stored.info.ok_or("a stored token has no info")?;
    let role = corral_proto::token::Role::from_pb(info.role)
        .ok_or_else(|| format!("token {} has no known role ({})", info.accessor, info.role))?;
    let digest: [u8; 32] = stored.digest.as_ref().try_into().map_err(|_| {
        format!(
            "token {} has a digest of {} bytes, not 32",
            info.accessor,
            stored.digest.len()
        )
    })?;
    Ok(TokenRecord {
        accessor: info.accessor,
        role,
        tenant: info.tenant,
        agent_id: info.agent_id,
        digest,
        created_ms: info.created_at_ms,
        expires_ms: info.expires_at_ms,
        last_used_ms: info.last_used_ms,
        revoked_ms: info.revoked_at_ms,
        description: info.description,
        issued_by: info.issued_by,
    })
}

/// A tenant's settings to their protobuf form (also how they are stored).
pub fn tenant_settings_to_pb(t: &TenantSettings) -> pb::TenantSettings {
    pb::TenantSettings {
        weight: t.weight,
        guarantee_slots: t.guarantee_slots,
        guarantee_memory_bytes: t.guarantee_memory.as_u64(),
        limit_slots: t.limit_slots,
        limit_memory_bytes: t.limit_memory.map(|m| m.as_u64()),
        max_queued: t.max_queued,
        fuel_budget: t.fuel_budget.map(|b| b.fuel),
        fuel_budget_period_ms: t.fuel_budget.map_or(0, |b| {
            u64::try_from(b.period.as_millis()).unwrap_or(u64::MAX)
        }),
        max_task_fuel: t.max_task_fuel,
        max_task_memory_bytes: t.max_task_memory.map(|m| m.as_u64()),
        max_task_timeout_ms: t
            .max_task_timeout
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        max_module_bytes: t.max_module_size.map(|m| m.as_u64()),
        allowed_imports: t.allowed_imports.as_ref().map(|a| pb::ImportPatterns {
            patterns: a.texts(),
        }),
        denied_imports: t.denied_imports.texts(),
        max_input_storage_bytes: Some(t.max_input_storage.as_u64()),
    }
}

/// Tenant settings as stored (check them with [`TenantSettings::validate`]): import patterns
/// are read as [`ImportRules::stored`], never refused, so that one naming a function an
/// earlier Corral provided does not set the tenant's other settings aside.
pub fn tenant_settings_from_pb(tenant: &str, t: pb::TenantSettings) -> TenantSettings {
    TenantSettings {
        weight: t.weight,
        guarantee_slots: t.guarantee_slots,
        guarantee_memory: bytesize::ByteSize::b(t.guarantee_memory_bytes),
        limit_slots: t.limit_slots,
        limit_memory: t.limit_memory_bytes.map(bytesize::ByteSize::b),
        max_queued: t.max_queued,
        fuel_budget: t.fuel_budget.map(|fuel| FuelBudget {
            fuel,
            period: Duration::from_millis(t.fuel_budget_period_ms),
        }),
        max_task_fuel: t.max_task_fuel,
        max_task_memory: t.max_task_memory_bytes.map(bytesize::ByteSize::b),
        max_task_timeout: t.max_task_timeout_ms.map(Duration::from_millis),
        max_module_size: t.max_module_bytes.map(bytesize::ByteSize::b),
        allowed_imports: t
            .allowed_imports
            .map(|a| ImportRules::stored(tenant, &a.patterns)),
        denied_imports: ImportRules::stored(tenant, &t.denied_imports),
        max_input_storage: t
            .max_input_storage_bytes
            .map_or(crate::tenant::DEFAULT_INPUT_STORAGE, bytesize::ByteSize::b),
    }
}

/// A tenant as listed.
pub fn tenant_view_to_pb(v: &TenantView) -> pb::TenantView {
    pb::TenantView {
        tenant: v.tenant.clone(),
        settings: Some(tenant_settings_to_pb(&v.settings)),
        source: v.source.as_str().to_string(),
        held_slots: v.held.slots,
        held_memory_bytes: v.held.memory_bytes,
        queued: v.queued,
        dominant_share: v.dominant_share,
        fuel_used_in_window: v.fuel_used_in_window,
        fuel_window_ms: u64::try_from(v.fuel_window_ms).unwrap_or(0),
        fuel_held: v.fuel_held,
        fuel_left: v.fuel_left,
        fuel_used_total: v.fuel_used_total,
    }
}

/// A `SetTenant` request's change: `None` for a reset.
pub fn tenant_change_from_pb(r: &pb::SetTenantRequest) -> Result<Option<TenantChange>, String> {
    if (r.limit_slots.is_some() && !r.set_limit_slots)
        || (r.limit_memory_bytes.is_some() && !r.set_limit_memory)
        || ((r.fuel_budget.is_some() || r.fuel_budget_period_ms != 0) && !r.set_fuel_budget)
        || (r.max_task_fuel.is_some() && !r.set_max_task_fuel)
        || (r.max_task_memory_bytes.is_some() && !r.set_max_task_memory)
        || (r.max_task_timeout_ms.is_some() && !r.set_max_task_timeout)
        || (r.max_module_bytes.is_some() && !r.set_max_module)
        || (r.allowed_imports.is_some() && !r.set_allowed_imports)
        || (!r.denied_imports.is_empty() && !r.set_denied_imports)
    {
        return Err("a limit or budget is changed only with its set_* flag".into());
    }
    let change = TenantChange {
        weight: r.weight,
        guarantee_slots: r.guarantee_slots,
        guarantee_memory: r.guarantee_memory_bytes,
        limit_slots: r.set_limit_slots.then_some(r.limit_slots),
        limit_memory: r.set_limit_memory.then_some(r.limit_memory_bytes),
        max_queued: r.max_queued,
        fuel_budget: r
            .set_fuel_budget
            .then_some(r.fuel_budget.map(|fuel| FuelBudget {
                fuel,
                period: Duration::from_millis(r.fuel_budget_period_ms),
            })),
        max_task_fuel: r.set_max_task_fuel.then_some(r.max_task_fuel),
        max_task_memory: r.set_max_task_memory.then_some(r.max_task_memory_bytes),
        max_task_timeout: r
            .set_max_task_timeout
            .then_some(r.max_task_timeout_ms.map(Duration::from_millis)),
        max_module_size: r.set_max_module.then_some(r.max_module_bytes),
        allowed_imports: match r.set_allowed_imports {
            true => Some(
                r.allowed_imports
                    .as_ref()
                    .map(|a| ImportRules::parse(&a.patterns))
                    .transpose()?,
            ),
            false => None,
        },
        denied_imports: match r.set_denied_imports {
            true => Some(ImportRules::parse(&r.denied_imports)?),
            false => None,
        },
        max_input_storage: r.max_input_storage_bytes,
    };
    match r.reset {
        true if change != TenantChange::default() => {
            Err("a reset takes no other setting: reset first, then set".into())
        }
        true => Ok(None),
        false if change == TenantChange::default() => Err("nothing to set".into()),
        false => Ok(Some(change)),
    }
}

/// An audit entry to its protobuf form (also how it is stored).
pub fn audit_to_pb(e: &AuditEntry) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: e.seq,
        at_ms: e.at_ms,
        accessor: e.accessor.clone(),
        action: e.action.clone(),
        detail: e.detail.clone(),
        count: e.count,
    }
}

/// A stored audit entry.
pub fn audit_from_pb(e: pb::AuditEvent) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        at_ms: e.at_ms,
        accessor: e.accessor,
        action: e.action,
        detail: e.detail,
        count: e.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_module_rules_go_through_the_api_and_the_store_unchanged() {
        let request = pb::SetTenantRequest {
            tenant: "acme".into(),
            set_max_module: true,
            max_module_bytes: Some(4096),
            set_allowed_imports: true,
            allowed_imports: Some(pb::ImportPatterns {
                patterns: vec!["wasi_snapshot_preview1::fd_*".into()],
            }),
            set_denied_imports: true,
            denied_imports: vec!["wasi_snapshot_preview1::fd_readdir".into()],
            ..Default::default()
        };
        let change = tenant_change_from_pb(&request).unwrap().unwrap();
        let settings = change.apply(&TenantSettings::default());
        assert_eq!(settings.max_module_size, Some(bytesize::ByteSize::kib(4)));
        let back = tenant_settings_from_pb("acme", tenant_settings_to_pb(&settings));
        assert_eq!(back, settings);
        // Stored by a Corral that provided a function this one does not: that pattern names
        // nothing (so allows nothing), and the tenant's other settings stand.
        let stored = pb::TenantSettings {
            max_task_fuel: Some(5),
            allowed_imports: Some(pb::ImportPatterns {
                patterns: vec!["wasi_snapshot_preview1::gone".into()],
            }),
            ..tenant_settings_to_pb(&TenantSettings::default())
        };
        let kept = tenant_settings_from_pb("acme", stored);
        assert_eq!(kept.max_task_fuel, Some(5));
        assert_eq!(kept.validate("acme"), Ok(()));
        let mut write = corral_admission::imports::ImportSet::EMPTY;
        write.insert("wasi_snapshot_preview1", "fd_write");
        assert!(kept.check_module("acme", "ab", 100, write).is_err());
        // `set_allowed_imports` without a list allows every import again.
        let all = pb::SetTenantRequest {
            tenant: "acme".into(),
            set_allowed_imports: true,
            ..Default::default()
        };
        let change = tenant_change_from_pb(&all).unwrap().unwrap();
        assert_eq!(change.apply(&settings).allowed_imports, None);
        // A rule without its flag, or a pattern naming nothing provided, is refused.
        let unflagged = pb::SetTenantRequest {
            tenant: "acme".into(),
            denied_imports: vec!["corral::*".into()],
            ..Default::default()
        };
        assert!(tenant_change_from_pb(&unflagged).is_err());
        let misspelt = pb::SetTenantRequest {
            tenant: "acme".into(),
            set_denied_imports: true,
            denied_imports: vec!["wasi_snapshot_preview1::path_opne".into()],
            ..Default::default()
        };
        let e = tenant_change_from_pb(&misspelt).unwrap_err();
        assert!(e.contains("path_opne"), "{e}");
    }

    #[test]
    fn a_stored_task_comes_back_as_accepted_whatever_todays_caps_and_bounds() {
        // Accepted by a host whose caps were raised: 40 MiB of stdin, 1 GiB of output, and
        // 100 labels from before labels were bounded.
        let config = HostConfig {
            max_stdin_size: bytesize::ByteSize::mib(64),
            max_output_size: bytesize::ByteSize::gib(1),
            ..HostConfig::default()
        };
        let spec = spec_from_pb(
            pb::TaskSpec {
                module_sha256: "ab".repeat(32),
                stdin: vec![1u8; 40 << 20].into(),
                limits: Some(pb::Limits {
                    max_output_bytes: 1 << 30,
                    ..Default::default()
                }),
                ..Default::default()
            },
            &config,
        )
        .unwrap();
        let mut task = Task::new(TaskId(7), spec, 1);
        task.spec.labels = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
        let back = task_from_pb(task_to_pb(&task, true)).unwrap();
        assert_eq!(back.spec, task.spec, "a stored spec was judged again");
        assert_eq!(back.spec.limits.max_output_bytes, 1 << 30, "clamped");
    }

    #[test]
    fn every_bounded_field_is_checked_by_name_and_the_refusal_stays_short() {
        let config = HostConfig::default();
        let base = || pb::TaskSpec {
            module_sha256: "ab".repeat(32),
            ..Default::default()
        };
        let big = |n: usize| "x".repeat(n);
        let many = |n: usize| -> std::collections::BTreeMap<String, String> {
            (0..n).map(|i| (format!("k{i}"), "v".into())).collect()
        };
        let cases: Vec<(pb::TaskSpec, &str)> = vec![
            (
                pb::TaskSpec {
                    name: big(257),
                    ..base()
                },
                "name",
            ),
            (
                pb::TaskSpec {
                    tenant: big(129),
                    ..base()
                },
                "tenant",
            ),
            (
                pb::TaskSpec {
                    tenant: "a\0b".into(),
                    ..base()
                },
                "control character",
            ),
            (
                pb::TaskSpec {
                    args: vec![String::new(); 4097],
                    ..base()
                },
                "4097 args",
            ),
            (
                pb::TaskSpec {
                    args: vec![big(80 << 20)],
                    ..base()
                },
                "args are",
            ),
            (
                pb::TaskSpec {
                    env: many(4097),
                    ..base()
                },
                "env variables",
            ),
            (
                pb::TaskSpec {
                    env: [("K".to_string(), big(2 << 20))].into(),
                    ..base()
                },
                "env is",
            ),
            (
                pb::TaskSpec {
                    labels: many(65),
                    ..base()
                },
                "65 labels",
            ),
            (
                pb::TaskSpec {
                    labels: [("team".to_string(), big(60 << 20))].into(),
                    ..base()
                },
                "the value of labels \"team\"",
            ),
            (
                pb::TaskSpec {
                    constraints: many(10_000),
                    ..base()
                },
                "10000 constraints",
            ),
            (
                pb::TaskSpec {
                    constraints: [(big(200), "v".to_string())].into(),
                    ..base()
                },
                "the key of constraints",
            ),
        ];
        for (spec, named) in cases {
            let refusal = spec_from_pb(spec, &config).unwrap_err();
            assert!(refusal.contains(named), "{named}: {refusal}");
            assert!(refusal.len() < 300, "{named}: {} bytes", refusal.len());
        }
        // At the bounds, accepted.
        let full = pb::TaskSpec {
            name: big(256),
            tenant: big(128),
            args: vec![big(256); 4096],
            labels: many(64),
            constraints: many(64),
            ..base()
        };
        spec_from_pb(full, &config).unwrap();
        // A disk quota past the host's ceiling is clamped to it.
        let greedy = pb::TaskSpec {
            limits: Some(pb::Limits {
                max_disk_bytes: u64::MAX,
                ..Default::default()
            }),
            ..base()
        };
        let clamped = spec_from_pb(greedy, &config).unwrap();
        assert_eq!(clamped.limits.max_disk_bytes, config.max_disk_size.as_u64());
        assert!(check_idempotency_key(&big(256)).is_ok());
        assert!(check_idempotency_key(&big(257)).is_err());
        assert!(check_idempotency_key("tenant\0key").is_err());
    }

    #[test]
    fn specs_get_the_hosts_defaults_and_bad_fields_are_named() {
        let config = HostConfig::default();
        let spec = spec_from_pb(
            pb::TaskSpec {
                module_sha256: "AB".repeat(32),
                ..Default::default()
            },
            &config,
        )
        .unwrap();
        assert_eq!(spec.tenant, "default");
        assert_eq!(spec.module_sha256, "ab".repeat(32));
        assert_eq!(spec.limits.memory_bytes, config.default_memory.as_u64());
        assert_eq!(spec.retry.max_retries, config.default_retries);
        let e = spec_from_pb(
            pb::TaskSpec {
                module_sha256: "xyz".into(),
                ..Default::default()
            },
            &config,
        )
        .unwrap_err();
        assert!(e.contains("xyz"), "{e}");
    }

    #[test]
    fn tasks_round_trip_through_protobuf() {
        let config = HostConfig::default();
        let mut spec = spec_from_pb(
            pb::TaskSpec {
                module_sha256: "0".repeat(64),
                stdin: bytes::Bytes::from_static(b"in"),
                retry: Some(pb::RetryPolicy {
                    max_retries: Some(0),
                    retry_failed: true,
                }),
                ..Default::default()
            },
            &config,
        )
        .unwrap();
        spec.labels.insert("k".into(), "v".into());
        let mut task = Task::new(TaskId(9), spec, 1234);
        task.state = TaskState::Failed;
        task.attempts = 1;
        task.agent_id = Some("a1".into());
        task.outcome = Some(OutcomeRecord {
            kind: OutcomeKind::Exit,
            exit_code: 3,
            message: String::new(),
        });
        task.progress = Some(Progress { done: 1, total: 2 });
        task.wall_us = 1_234_567;
        task.kill_requested = true;
        assert_eq!(task_from_pb(task_to_pb(&task, true)).unwrap(), task);
    }

    #[test]
    fn every_outcome_kind_round_trips_and_unknown_ones_are_corrals_failure() {
        for kind in OutcomeKind::ALL {
            let pb = outcome_kind_to_pb(kind);
            assert_eq!(outcome_kind_from_pb(pb as i32), Some(kind));
            // The contract's name is the domain's, prefixed and upper-cased.
            assert_eq!(
                pb.as_str_name(),
                format!("OUTCOME_KIND_{}", kind.as_str().to_ascii_uppercase())
            );
        }
        let unknown = outcome_from_pb(pb::Outcome {
            kind: 99,
            exit_code: 0,
            message: "from the future".into(),
        });
        assert_eq!(unknown.kind, OutcomeKind::AgentError);
        assert!(unknown.message.contains("99"), "{}", unknown.message);
    }
}
