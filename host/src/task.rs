//! Tasks: what a client submits ([`TaskSpec`]), what the host records of each ([`Task`]), and
//! the lifecycle PENDING -> ASSIGNED -> RUNNING -> FINISHED | FAILED | KILLED | LOST.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::job::JobMember;
use crate::partition::Resources;

/// A task's id: a sequence number, shown as `t-<n>`. Ids grow with submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t-{}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("t-")
            .and_then(|n| n.parse().ok())
            .map(TaskId)
            .ok_or_else(|| format!("{s:?} is not a task id (they look like t-42)"))
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a partition with room.
    Pending,
    /// Placed in a partition; the launch is on its way to the agent.
    Assigned,
    /// The agent runs it.
    Running,
    /// Ended with outcome `success`.
    Finished,
    /// Ended with any other outcome.
    Failed,
    /// Stopped by a kill request.
    Killed,
    /// Its agent was lost and no attempts remain.
    Lost,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Lost,
    ];

    /// The state's place in [`TaskState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost
        )
    }

    /// True while the task holds resources in a partition.
    pub fn holds_resources(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }

    /// The state's name as the CLI shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Assigned => "ASSIGNED",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
            TaskState::Killed => "KILLED",
            TaskState::Lost => "LOST",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown task state {s:?}: expected one of pending, assigned, running, finished, failed, killed, lost")
            })
    }
}

/// The sandbox limits of a task. The memory cap is also what the task reserves in its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Fuel budget.
    pub fuel: u64,
    /// Linear memory cap, and the memory reserved for the task.
    pub memory_bytes: u64,
    /// Wall-clock limit.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Cap on each of stdout and stderr.
    pub max_output_bytes: u64,
    /// Bytes by which the guest may grow files.
    #[serde(default)]
    pub max_disk_bytes: u64,
}

/// When a task is attempted again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Further attempts after the first.
    pub max_retries: u32,
    /// Retry a FAILED attempt too (LOST ones are always retried while attempts remain).
    pub retry_failed: bool,
}

/// What a client submits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A name for people; need not be unique.
    pub name: String,
    /// The task's owner.
    pub tenant: String,
    /// The module to run, by the sha256 of its binary form.
    pub module_sha256: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The guest's entire environment.
    pub env: BTreeMap<String, String>,
    /// The guest's stdin.
    pub stdin: Bytes,
    /// Sandbox limits.
    pub limits: TaskLimits,
    /// Free-form labels, for listing.
    pub labels: BTreeMap<String, String>,
    /// Labels an agent must carry to run the task.
    pub constraints: BTreeMap<String, String>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Give the guest a writable output directory and keep its files.
    pub collect_outputs: bool,
    /// Uploaded inputs the guest sees read-only.
    #[serde(default)]
    pub inputs: Vec<InputMount>,
}

/// An uploaded input, by sha256, and the guest path where a task sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMount {
    /// The input's sha256 (lower-case hex).
    pub sha256: String,
    /// The absolute guest path of the file.
    pub path: String,
}

impl TaskSpec {
    /// About what the task's record takes on disk: its stdin and the strings of its spec, and
    /// room for the rest.
    pub fn stored_bytes(&self) -> u64 {
        let pairs = |map: &BTreeMap<String, String>| {
            map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        };
        let strings = self.name.len()
            + self.tenant.len()
            + self.args.iter().map(String::len).sum::<usize>()
            + pairs(&self.env)
            + pairs(&self.labels)
            + pairs(&self.constraints)
            + self
                .inputs
                .iter()
                .map(|i| i.sha256.len() + i.path.len())
                .sum::<usize>();
        (self.stdin.len() + strings) as u64 + 1024
    }

    /// What the task takes from a partition while it is placed: one slot and its memory cap.
    pub fn resources(&self) -> Resources {
        Resources {
            slots: 1,
            memory_bytes: self.limits.memory_bytes,
        }
    }
}

/// How an attempt ended, by kind: the guest's doing (`success` to `trap`), admission's
/// (`link_error`, `invalid_module`), a kill, or Corral's own failure (`agent_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// `_start` returned or the guest exited 0.
    Success,
    /// The guest exited with a non-zero code.
    Exit,
    /// The fuel budget was spent.
    OutOfFuel,
    /// The guest asked for more memory or table space than its cap.
    MemoryLimit,
    /// The wall-clock limit passed.
    Timeout,
    /// The wasm stack was exhausted.
    StackOverflow,
    /// Any other trap.
    Trap,
    /// The module imports something the sandbox does not provide.
    LinkError,
    /// The module cannot be run.
    InvalidModule,
    /// Stopped by a kill request.
    Killed,
    /// The agent failed to run the attempt (fetching the module, its disk, the sandbox): not
    /// the task's doing, so retried like a LOST attempt.
    AgentError,
    /// Compiling the module went over the compile budget; it never ran.
    CompileLimit,
    /// The guest grew files past its disk quota.
    DiskLimit,
}

impl OutcomeKind {
    /// Every kind.
    pub const ALL: [OutcomeKind; 13] = [
        OutcomeKind::Success,
        OutcomeKind::Exit,
        OutcomeKind::OutOfFuel,
        OutcomeKind::MemoryLimit,
        OutcomeKind::Timeout,
        OutcomeKind::StackOverflow,
        OutcomeKind::Trap,
        OutcomeKind::LinkError,
        OutcomeKind::InvalidModule,
        OutcomeKind::Killed,
        OutcomeKind::AgentError,
        OutcomeKind::CompileLimit,
        OutcomeKind::DiskLimit,
    ];

    /// The kind's stable name, as in JSON (`out_of_fuel`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Exit => "exit",
            OutcomeKind::OutOfFuel => "out_of_fuel",
            OutcomeKind::MemoryLimit => "memory_limit",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::StackOverflow => "stack_overflow",
            OutcomeKind::Trap => "trap",
            OutcomeKind::LinkError => "link_error",
            OutcomeKind::InvalidModule => "invalid_module",
            OutcomeKind::Killed => "killed",
            OutcomeKind::AgentError => "agent_error",
            OutcomeKind::CompileLimit => "compile_limit",
            OutcomeKind::DiskLimit => "disk_limit",
        }
    }

    /// The task state an attempt that ended so leaves the task in, before any retry.
    pub fn final_state(self) -> TaskState {
        match self {
            OutcomeKind::Success => TaskState::Finished,
            OutcomeKind::Killed => TaskState::Killed,
            _ => TaskState::Failed,
        }
    }

    /// Corral failed, not the task: the attempt is retried like a LOST one.
    pub fn is_corral_failure(self) -> bool {
        self == OutcomeKind::AgentError
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt ended, as its agent reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// Which way it ended.
    pub kind: OutcomeKind,
    /// The guest's exit code (`exit`), else 0.
    pub exit_code: i32,
    /// The trap's, admission's or the agent's message, where there is one.
    pub message: String,
}

impl OutcomeRecord {
    /// The reason a task shows for it: `trap: <message>`, `exit(3)`, `out_of_fuel`.
    pub fn reason(&self) -> String {
        match self.kind {
            _ if !self.message.is_empty() => format!("{}: {}", self.kind, self.message),
            OutcomeKind::Exit => format!("exit({})", self.exit_code),
            kind => kind.to_string(),
        }
    }
}

/// The guest's own progress report: `done` of `total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// Everything the host records of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Its id.
    pub id: TaskId,
    /// What was submitted.
    pub spec: TaskSpec,
    /// Where it is.
    pub state: TaskState,
    /// Attempts started (placements made) so far.
    pub attempts: u32,
    /// The agent of the current or last attempt.
    pub agent_id: Option<String>,
    /// The partition of the current or last attempt.
    pub partition_id: Option<String>,
    /// How the last attempt ended.
    pub outcome: Option<OutcomeRecord>,
    /// Fuel used by the current or last attempt (live while running).
    pub fuel_used: u64,
    /// Peak linear memory of the current or last attempt.
    pub peak_memory_bytes: u64,
    /// Wall time of the current or last attempt, in microseconds.
    pub wall_us: u64,
    /// Calls of the current or last attempt the sandbox refused and counted (WASI sockets).
    pub guest_warnings: u64,
    /// Submission time, milliseconds since the Unix epoch; so are the other times.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// When the current or last attempt started running; 0 before.
    pub started_at_ms: i64,
    /// When the task reached a final state; 0 before.
    pub finished_at_ms: i64,
    /// Why the task is where it is (why it waits, why it was retried).
    pub reason: String,
    /// The guest's last progress report.
    pub progress: Option<Progress>,
    /// A kill was asked for: the task is not retried, and its agent is told again when it
    /// comes back.
    pub kill_requested: bool,
    /// The job it belongs to, if any, and its place there.
    pub job: Option<JobMember>,
}

impl Task {
    /// A new PENDING task.
    pub fn new(id: TaskId, spec: TaskSpec, now_ms: i64) -> Self {
        Self {
            id,
            spec,
            state: TaskState::Pending,
            attempts: 0,
            agent_id: None,
            partition_id: None,
            outcome: None,
            fuel_used: 0,
            peak_memory_bytes: 0,
            wall_us: 0,
            guest_warnings: 0,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            started_at_ms: 0,
            finished_at_ms: 0,
            reason: String::new(),
            progress: None,
            kill_requested: false,
            job: None,
        }
    }

    /// Whether the task has ended for good: a final state that no retry follows (an attempt's
    /// end that is retried has no finish time).
    pub fn has_ended(&self) -> bool {
        self.state.is_terminal() && self.finished_at_ms != 0
    }

    /// Whether another attempt may follow the current one, which ended in `state` with the
    /// task's `outcome`: a LOST attempt, or one Corral failed (`agent_error`), is retried while
    /// retries remain; a FAILED one only with `retry_failed`.
    pub fn may_retry_after(&self, state: TaskState) -> bool {
        let retries_used = self.attempts.saturating_sub(1);
        let retryable = match state {
            TaskState::Lost => true,
            TaskState::Failed => {
                self.spec.retry.retry_failed
                    || self
                        .outcome
                        .as_ref()
                        .is_some_and(|o| o.kind.is_corral_failure())
            }
            _ => false,
        };
        retryable && retries_used < self.spec.retry.max_retries
    }
}

/// A file the task left in its output directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Its path under the output directory, `/`-separated.
    pub path: String,
    /// Its bytes.
    pub data: Bytes,
}

/// What a task left behind: captured output and output files, within their caps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// Captured stdout.
    pub stdout: Bytes,
    /// Captured stderr.
    pub stderr: Bytes,
    /// stdout went past its cap.
    pub stdout_truncated: bool,
    /// stderr went past its cap.
    pub stderr_truncated: bool,
    /// Files from the output directory.
    pub files: Vec<OutputFile>,
    /// Some files were left out by the caps.
    pub files_truncated: bool,
}

/// One attempt of one task: the unit agents run and report on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attempt {
    /// The task.
    pub task_id: TaskId,
    /// Its attempt number, from 1.
    pub attempt: u32,
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_and_reject_junk() {
        assert_eq!("t-42".parse::<TaskId>(), Ok(TaskId(42)));
        assert_eq!(TaskId(7).to_string(), "t-7");
        assert!("42".parse::<TaskId>().is_err());
        assert!("t-x".parse::<TaskId>().is_err());
    }

    #[test]
    fn states_parse_case_insensitively() {
        for state in TaskState::ALL {
            assert_eq!(
                state.as_str().to_lowercase().parse::<TaskState>(),
                Ok(state)
            );
        }
        assert!("done".parse::<TaskState>().unwrap_err().contains("done"));
    }

    #[test]
    fn retries_follow_the_policy() {
        let spec = TaskSpec {
            name: String::new(),
            tenant: "default".into(),
            module_sha256: String::new(),
            args: vec![],
            env: BTreeMap::new(),
            stdin: Bytes::new(),
            limits: TaskLimits {
                fuel: 1,
                memory_bytes: 1,
                timeout: Duration::from_secs(1),
                max_output_bytes: 1,
                max_disk_bytes: 256 << 20,
            },
            labels: BTreeMap::new(),
            constraints: BTreeMap::new(),
            retry: RetryPolicy {
                max_retries: 1,
                retry_failed: false,
            },
            collect_outputs: false,
            inputs: Vec::new(),
        };
        let mut task = Task::new(TaskId(1), spec, 0);
        task.attempts = 1;
        assert!(task.may_retry_after(TaskState::Lost));
        assert!(!task.may_retry_after(TaskState::Failed));
        assert!(!task.may_retry_after(TaskState::Killed));
        // Corral's own failure is retried like a lost attempt, whatever retry_failed says.
        task.outcome = Some(OutcomeRecord {
            kind: OutcomeKind::AgentError,
            exit_code: 0,
            message: "cannot fetch module".into(),
        });
        assert!(task.may_retry_after(TaskState::Failed));
        task.outcome = None;
        task.spec.retry.retry_failed = true;
        assert!(task.may_retry_after(TaskState::Failed));
        task.attempts = 2;
        assert!(!task.may_retry_after(TaskState::Lost));
        task.outcome = Some(OutcomeRecord {
            kind: OutcomeKind::AgentError,
            exit_code: 0,
            message: String::new(),
        });
        assert!(!task.may_retry_after(TaskState::Failed), "no retries left");
    }
}
