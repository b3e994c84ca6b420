//! The JSON shapes of Corral's records, built from the contract's messages: what the CLI
//! prints with `-o json` and what the host's HTTP API answers, one serde type per shape, and
//! the names the contract's enums are shown by. Field names are part of Corral's interface;
//! README.md lists them.

// Fields are documented where they are part of the interface, in README.md's lists; only the
// ones whose meaning is not plain from their name say it here too.
#![allow(missing_docs)]

use std::collections::BTreeMap;

use crate::pb;

use serde::Serialize;

/// The contract's name of an enum value without its prefix: `TASK_STATE_PENDING` is
/// `PENDING`.
fn unprefixed<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// A task state's name as the CLI shows it (`PENDING`); `UNKNOWN` for a number this client
/// does not know.
pub fn state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state) {
        Ok(pb::TaskState::Unspecified) | Err(_) => "UNKNOWN",
        Ok(state) => unprefixed(state.as_str_name(), "TASK_STATE_"),
    }
}

/// The task state `--state` names, in any case (`pending`, `RUNNING`).
pub fn parse_state(name: &str) -> Result<pb::TaskState, String> {
    pb::TaskState::from_str_name(&format!("TASK_STATE_{}", name.to_ascii_uppercase()))
        .filter(|s| *s != pb::TaskState::Unspecified)
        .ok_or_else(|| {
            format!(
                "unknown task state {name:?}: expected one of pending, assigned, running, \
                 finished, failed, killed, lost"
            )
        })
}

/// Whether a task in `state` has ended.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::TaskState::try_from(state),
        Ok(pb::TaskState::Finished
            | pb::TaskState::Failed
            | pb::TaskState::Killed
            | pb::TaskState::Lost)
    )
}

/// An outcome kind as JSON and summaries name it: `out_of_fuel`.
pub fn outcome_name(kind: pb::OutcomeKind) -> String {
    unprefixed(kind.as_str_name(), "OUTCOME_KIND_").to_ascii_lowercase()
}

/// An outcome's kind; unspecified for a number this client does not know.
pub fn outcome_kind(outcome: &pb::Outcome) -> pb::OutcomeKind {
    pb::OutcomeKind::try_from(outcome.kind).unwrap_or(pb::OutcomeKind::Unspecified)
}

/// An agent's or a partition's state as the CLI shows it (`active`, `draining`).
pub fn lower_name(name: &str, prefix: &str) -> String {
    match unprefixed(name, prefix) {
        "UNSPECIFIED" => "unknown".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// A task (`tasks`, `task get|kill|watch`, and `submit --wait` with its output).
#[derive(Serialize)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub state: &'static str,
    pub attempts: u32,
    pub agent: String,
    pub partition: String,
    /// The last attempt's outcome kind (`success`, `out_of_fuel`, ...).
    pub outcome: Option<String>,
    /// The guest's exit code, for `success` and `exit`.
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    /// Wall time of the last attempt, in milliseconds (microsecond precision).
    pub wall_ms: f64,
    /// Calls of the last attempt the sandbox refused and counted rather than logged.
    pub guest_warnings: u64,
    pub memory_request_bytes: u64,
    pub created_at_ms: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub reason: String,
    /// `[done, total]`, as the guest last reported it.
    pub progress: Option<[u64; 2]>,
    pub module_sha256: String,
    pub args: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub constraints: BTreeMap<String, String>,
    /// The inputs it mounts, read-only.
    pub inputs: Vec<InputMount>,
    /// The job it belongs to, and its index there.
    pub job_id: Option<String>,
    pub job_index: Option<u32>,
    /// Its job's parameters, in the job's order.
    pub params: Params,
}

/// An input a task mounts: `{"sha256": "...", "path": "/input/iris.csv"}` (also how the HTTP
/// API takes them).
#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputMount {
    pub sha256: String,
    pub path: String,
}

impl From<&pb::InputMount> for InputMount {
    fn from(i: &pb::InputMount) -> Self {
        InputMount {
            sha256: i.sha256.clone(),
            path: i.path.clone(),
        }
    }
}

impl From<InputMount> for pb::InputMount {
    fn from(i: InputMount) -> Self {
        pb::InputMount {
            sha256: i.sha256,
            path: i.path,
        }
    }
}

/// A stored input (`corral inputs`, `GET /v1/inputs`).
#[derive(Serialize)]
pub struct Input {
    pub sha256: String,
    pub size_bytes: u64,
    /// Kept tasks that mount it.
    pub tasks: u64,
    /// Agents' fetches of it since the host started.
    pub fetches: u64,
    pub last_used_ms: i64,
}

impl From<&pb::InputInfo> for Input {
    fn from(i: &pb::InputInfo) -> Self {
        Input {
            sha256: i.sha256.clone(),
            size_bytes: i.size_bytes,
            tasks: i.tasks,
            fetches: i.fetches,
            last_used_ms: i.last_used_ms,
        }
    }
}

/// A tenant's inputs and its storage (`corral inputs -o json`, `GET /v1/inputs`).
#[derive(Serialize)]
pub struct Inputs {
    pub inputs: Vec<Input>,
    pub used_bytes: u64,
    /// Absent for an admin's listing of every input.
    pub limit_bytes: Option<u64>,
    /// More inputs than were listed (10,000).
    pub truncated: bool,
}

impl From<&pb::ListInputsResponse> for Inputs {
    fn from(r: &pb::ListInputsResponse) -> Self {
        Inputs {
            inputs: r.inputs.iter().map(Input::from).collect(),
            used_bytes: r.used_bytes,
            limit_bytes: r.limit_bytes,
            truncated: r.truncated,
        }
    }
}

/// A task's parameters as one JSON object, in the job's order (`{"lr": "0.05"}`).
pub struct Params(pub Vec<(String, String)>);

impl Serialize for Params {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl From<&[pb::Param]> for Params {
    fn from(params: &[pb::Param]) -> Self {
        Params(
            params
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect(),
        )
    }
}

impl From<&pb::Task> for Task {
    fn from(t: &pb::Task) -> Self {
        let spec = t.spec.clone().unwrap_or_default();
        let kind = t.outcome.as_ref().map(outcome_kind);
        Task {
            id: t.id.clone(),
            name: spec.name,
            tenant: spec.tenant,
            state: state_name(t.state),
            attempts: t.attempts,
            agent: t.agent_id.clone(),
            partition: t.partition_id.clone(),
            outcome: kind.map(outcome_name),
            exit_code: t
                .outcome
                .as_ref()
                .filter(|_| matches!(kind, Some(pb::OutcomeKind::Success | pb::OutcomeKind::Exit)))
                .map(|o| o.exit_code),
            message: t
                .outcome
                .as_ref()
                .map(|o| o.message.clone())
                .filter(|m| !m.is_empty()),
            fuel_used: t.fuel_used,
            peak_memory_bytes: t.peak_memory_bytes,
            wall_ms: t.wall_us as f64 / 1e3,
            guest_warnings: t.guest_warnings,
            memory_request_bytes: t.memory_request_bytes,
            created_at_ms: t.created_at_ms,
            started_at_ms: t.started_at_ms,
            finished_at_ms: t.finished_at_ms,
            reason: t.reason.clone(),
            progress: t.progress.as_ref().map(|p| [p.done, p.total]),
            module_sha256: spec.module_sha256,
            args: spec.args,
            labels: spec.labels,
            constraints: spec.constraints,
            inputs: spec.inputs.iter().map(InputMount::from).collect(),
            job_id: Some(t.job_id.clone()).filter(|j| !j.is_empty()),
            job_index: (!t.job_id.is_empty()).then_some(t.job_index),
            params: Params::from(t.params.as_slice()),
        }
    }
}

/// A task that ended, with its output (`submit --wait -o json`).
#[derive(Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub task: Task,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Paths of the output files kept.
    pub files: Vec<String>,
    /// Some output files were left out by the host's cap.
    pub files_truncated: bool,
}

/// One output file (`task output -o json`).
#[derive(Serialize)]
pub struct File {
    pub path: String,
    pub bytes: usize,
}

/// A task's output (`task output -o json`).
#[derive(Serialize)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub files: Vec<File>,
    pub files_truncated: bool,
}

impl From<&pb::TaskOutput> for Output {
    fn from(o: &pb::TaskOutput) -> Self {
        Output {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
            files: o
                .files
                .iter()
                .map(|f| File {
                    path: f.path.clone(),
                    bytes: f.data.len(),
                })
                .collect(),
            files_truncated: o.files_truncated,
        }
    }
}

/// What `submit -o json` prints without `--wait`.
#[derive(Serialize)]
pub struct Submitted {
    pub task_id: String,
    /// The idempotency key named an existing task.
    pub existed: bool,
}

/// What `submit -o json` prints for a job without `--wait`.
#[derive(Serialize)]
pub struct JobSubmitted {
    pub job_id: String,
    pub task_count: u32,
    /// Its tasks are this one and the ids after it, in index order.
    pub first_task_id: String,
    /// The idempotency key named an existing job.
    pub existed: bool,
}

/// A job's tasks by state.
#[derive(Serialize, Default)]
pub struct JobCounts {
    pub pending: u32,
    pub assigned: u32,
    pub running: u32,
    pub finished: u32,
    pub failed: u32,
    pub killed: u32,
    pub lost: u32,
}

/// A job (`jobs`, `job get|wait|kill`, `submit --wait` of a job).
#[derive(Serialize)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub tenant: String,
    /// RUNNING, FINISHED, FAILED or KILLED.
    pub state: &'static str,
    pub task_count: u32,
    /// Tasks that ended for good.
    pub ended: u32,
    pub counts: JobCounts,
    pub first_task_id: String,
    pub param_names: Vec<String>,
    /// 0: no limit.
    pub max_failures: u32,
    pub kill_requested: bool,
    pub reason: String,
    /// Fuel its ended tasks used.
    pub fuel_used: u64,
    pub module_sha256: String,
    pub created_at_ms: i64,
    pub finished_at_ms: i64,
}

/// A job state's name as the CLI shows it (`RUNNING`); `UNKNOWN` for a number this client
/// does not know.
pub fn job_state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Unspecified) | Err(_) => "UNKNOWN",
        Ok(state) => state
            .as_str_name()
            .strip_prefix("JOB_STATE_")
            .unwrap_or("UNKNOWN"),
    }
}

impl From<&pb::Job> for Job {
    fn from(j: &pb::Job) -> Self {
        let c = j.counts.unwrap_or_default();
        Job {
            id: j.id.clone(),
            name: j.name.clone(),
            tenant: j.tenant.clone(),
            state: job_state_name(j.state),
            task_count: j.task_count,
            ended: c.finished + c.failed + c.killed + c.lost,
            counts: JobCounts {
                pending: c.pending,
                assigned: c.assigned,
                running: c.running,
                finished: c.finished,
                failed: c.failed,
                killed: c.killed,
                lost: c.lost,
            },
            first_task_id: j.first_task_id.clone(),
            param_names: j.param_names.clone(),
            max_failures: j.max_failures,
            kill_requested: j.kill_requested,
            reason: j.reason.clone(),
            fuel_used: j.fuel_used,
            module_sha256: j.module_sha256.clone(),
            created_at_ms: j.created_at_ms,
            finished_at_ms: j.finished_at_ms,
        }
    }
}

/// One task of a job's gathered results (`job results -o jsonl|json`).
#[derive(Serialize)]
pub struct ResultRow {
    pub index: u32,
    pub task_id: String,
    pub params: Params,
    pub state: &'static str,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub attempts: u32,
    pub fuel_used: u64,
    /// Wall time of the last attempt, in milliseconds.
    pub wall_ms: f64,
    pub peak_memory_bytes: u64,
    /// The task's stdout parsed as JSON when it is one JSON object, else its text; null
    /// before the task has ended.
    pub result: serde_json::Value,
    pub stdout_truncated: bool,
}

/// A task's stdout as a result: the JSON object it is (surrounding whitespace aside), else its
/// text.
pub fn result_of(stdout: &[u8]) -> serde_json::Value {
    // Only what may be an object is parsed.
    let object = stdout
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !object {
        return serde_json::Value::String(String::from_utf8_lossy(stdout).into_owned());
    }
    match serde_json::from_slice::<serde_json::Value>(stdout) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => serde_json::Value::String(String::from_utf8_lossy(stdout).into_owned()),
    }
}

impl ResultRow {
    /// The row of one task and its output (none before it has ended).
    pub fn new(t: &pb::Task, output: Option<&pb::TaskOutput>) -> Self {
        let task = Task::from(t);
        ResultRow {
            index: t.job_index,
            task_id: task.id,
            params: task.params,
            state: task.state,
            outcome: task.outcome,
            exit_code: task.exit_code,
            message: task.message,
            attempts: task.attempts,
            fuel_used: task.fuel_used,
            wall_ms: task.wall_ms,
            peak_memory_bytes: task.peak_memory_bytes,
            result: output.map_or(serde_json::Value::Null, |o| result_of(&o.stdout)),
            stdout_truncated: output.is_some_and(|o| o.stdout_truncated),
        }
    }
}

/// An agent (`agents -o json`).
#[derive(Serialize)]
pub struct Agent {
    pub id: String,
    pub address: String,
    pub state: String,
    pub slots: u32,
    pub memory_bytes: u64,
    pub running: u32,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub last_seen_ms: i64,
}

impl From<&pb::Agent> for Agent {
    fn from(a: &pb::Agent) -> Self {
        let c = a.capacity.unwrap_or_default();
        Agent {
            id: a.id.clone(),
            address: a.address.clone(),
            state: agent_state(a.state),
            slots: c.slots,
            memory_bytes: c.memory_bytes,
            running: a.running_tasks,
            labels: a.labels.clone(),
            version: a.version.clone(),
            last_seen_ms: a.last_seen_ms,
        }
    }
}

/// An agent state's name (`active`).
pub fn agent_state(state: i32) -> String {
    let state = pb::AgentState::try_from(state).unwrap_or(pb::AgentState::Unspecified);
    lower_name(state.as_str_name(), "AGENT_STATE_")
}

/// A partition (`partitions -o json`).
#[derive(Serialize)]
pub struct Partition {
    pub id: String,
    pub agent: String,
    pub name: String,
    pub state: String,
    pub slots: u32,
    pub memory_bytes: u64,
    pub allocated_slots: u32,
    pub allocated_memory_bytes: u64,
    /// The tenant it is reserved for.
    pub tenant: Option<String>,
    /// Reserved for a tenant other than the caller's (never named to a tenant).
    pub reserved_for_other: bool,
    /// The labels it is reserved for.
    pub labels: BTreeMap<String, String>,
}

impl From<&pb::Partition> for Partition {
    fn from(p: &pb::Partition) -> Self {
        let (c, a) = (
            p.capacity.unwrap_or_default(),
            p.allocated.unwrap_or_default(),
        );
        Partition {
            id: p.id.clone(),
            agent: p.agent_id.clone(),
            name: p.name.clone(),
            state: partition_state(p.state),
            slots: c.slots,
            memory_bytes: c.memory_bytes,
            allocated_slots: a.slots,
            allocated_memory_bytes: a.memory_bytes,
            tenant: (!p.tenant.is_empty()).then(|| p.tenant.clone()),
            reserved_for_other: p.reserved_for_other,
            labels: p.labels.clone(),
        }
    }
}

/// A partition state's name (`available`).
pub fn partition_state(state: i32) -> String {
    let state = pb::PartitionState::try_from(state).unwrap_or(pb::PartitionState::Unspecified);
    lower_name(state.as_str_name(), "PARTITION_STATE_")
}

/// A token (`token list -o json`): never its secret.
#[derive(Serialize)]
pub struct Token {
    pub accessor: String,
    pub role: String,
    pub tenant: Option<String>,
    pub agent_id: Option<String>,
    pub description: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl From<&pb::TokenInfo> for Token {
    fn from(t: &pb::TokenInfo) -> Self {
        let some = |ms: i64| (ms != 0).then_some(ms);
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Token {
            accessor: t.accessor.clone(),
            role: crate::token::Role::from_pb(t.role)
                .map_or("unknown", crate::token::Role::name)
                .to_string(),
            tenant: text(&t.tenant),
            agent_id: text(&t.agent_id),
            description: t.description.clone(),
            created_ms: t.created_at_ms,
            expires_ms: some(t.expires_at_ms),
            last_used_ms: some(t.last_used_ms),
            revoked_ms: some(t.revoked_at_ms),
        }
    }
}

/// A token just made (`token create -o json`): the only time its secret is shown.
#[derive(Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub info: Token,
    pub token: String,
}

/// An entry of the audit log (`audit -o json`).
#[derive(Serialize)]
pub struct AuditEvent {
    pub seq: u64,
    pub at_ms: i64,
    pub accessor: String,
    pub action: String,
    pub detail: String,
    pub count: u64,
}

impl From<&pb::AuditEvent> for AuditEvent {
    fn from(e: &pb::AuditEvent) -> Self {
        AuditEvent {
            seq: e.seq,
            at_ms: e.at_ms,
            accessor: e.accessor.clone(),
            action: e.action.clone(),
            detail: e.detail.clone(),
            count: e.count,
        }
    }
}

/// A JSON object's members in the order written (serde_json's own map sorts them), a name
/// given twice refused: parameters, whose order is the job's.
pub struct Members(pub Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members: Vec<(String, serde_json::Value)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if members.len() == MAX_MEMBERS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_MEMBERS} parameters"
                        )));
                    }
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!("{name} is given twice")));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Most members of a [`Members`]: a task's parameters (the host's bound, which it checks
/// again).
pub const MAX_MEMBERS: usize = 64;

/// A parameter's value as a job takes it: a string as it is, a number or a boolean as its
/// JSON text.
pub fn param_value(name: &str, value: serde_json::Value) -> Result<String, String> {
    match value {
        serde_json::Value::String(s) => Ok(s),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Ok(v.to_string()),
        other => Err(format!(
            "parameter {name} is {other}: give a string, number or boolean"
        )),
    }
}

/// One task's parameters from a JSON object's members, in order.
pub fn param_set(members: Vec<(String, serde_json::Value)>) -> Result<pb::ParamSet, String> {
    let params = members
        .into_iter()
        .map(|(name, value)| {
            let value = param_value(&name, value)?;
            Ok(pb::Param { name, value })
        })
        .collect::<Result<_, String>>()?;
    Ok(pb::ParamSet { params })
}

#[cfg(test)]
mod tests {
    use super::result_of;

    #[test]
    fn a_result_keeps_the_numbers_the_task_printed_to_the_last_digit() {
        // Each the shortest text of its f64; a parse one ulp off prints another.
        for text in [
            r#"{"test_accuracy":0.9666666666666667}"#,
            r#"{"loss":0.10687178804583446,"x":1e-300,"y":2.2250738585072014e-308}"#,
        ] {
            assert_eq!(result_of(text.as_bytes()).to_string(), text);
        }
        assert_eq!(result_of(b"not json"), serde_json::json!("not json"));
    }
}
