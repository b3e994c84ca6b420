//! Jobs: many tasks made from one spec, the way ML sweeps are run. A job is an **array** (N
//! tasks told their index), a **sweep** (every combination of some parameters' values) or a
//! list of **parameter sets** (one task each). [`JobTasks`] says which; [`task_spec`] makes
//! task `i`'s spec from the job's; [`Job`] is what the host records of the job itself. Its
//! tasks are ordinary tasks that know their job ([`JobMember`]); the state machine counts them
//! by state per job, ends the job when the last one ends, and kills the rest once
//! `max_failures` tasks have failed.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::task::{TaskId, TaskSpec};

/// Most tasks in one job.
pub const MAX_JOB_TASKS: u32 = 100_000;
/// Most parameters of one task.
pub const MAX_PARAMS: usize = 64;
/// Bytes of a parameter's name.
pub const PARAM_NAME_BYTES: usize = 64;
/// Bytes of a parameter's value.
pub const PARAM_VALUE_BYTES: usize = 1024;
/// Bytes of stdin across a job's tasks (each task stores its own copy): data shared by many
/// tasks belongs in a file, not in every task's stdin.
pub const MAX_JOB_STDIN_BYTES: u64 = 64 << 20;
/// Bytes of a job's tasks as stored, together (their args and env once expanded, stdin,
/// parameters, names and labels): what one submit may make the host hold and write.
pub const MAX_JOB_BYTES: u64 = 256 << 20;

/// A job's id: a sequence number of its own, shown as `j-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "j-{}", self.0)
    }
}

impl FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("j-")
            .and_then(|n| n.parse().ok())
            .map(JobId)
            .ok_or_else(|| format!("{s:?} is not a job id (they look like j-42)"))
    }
}

/// A parameter's name and value.
pub type Param = (String, String);

/// Which tasks a job is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobTasks {
    /// Indexes 0 to N-1, without parameters.
    Array(u32),
    /// Every combination of the axes' values, the last axis varying fastest.
    Sweep(Vec<(String, Vec<String>)>),
    /// One task per parameter set.
    Params(Vec<Vec<Param>>),
}

impl JobTasks {
    /// Checks the job's shape, naming the first problem: 1 to [`MAX_JOB_TASKS`] tasks; valid,
    /// distinct parameter names; values within [`PARAM_VALUE_BYTES`]. Answers the task count.
    /// The count is checked first, so that a huge request costs little to refuse.
    pub fn check(&self) -> Result<u32, String> {
        if let JobTasks::Sweep(axes) = self {
            if let Some((name, _)) = axes.iter().find(|(_, values)| values.is_empty()) {
                return Err(format!("sweep parameter {name} has no values"));
            }
        }
        let count = match self {
            JobTasks::Array(n) => u64::from(*n),
            JobTasks::Sweep(axes) => axes
                .iter()
                .fold(1u64, |n, (_, values)| n.saturating_mul(values.len() as u64)),
            JobTasks::Params(rows) => rows.len() as u64,
        };
        if count > u64::from(MAX_JOB_TASKS) {
            return Err(format!(
                "a job of {count} tasks is over the bound of {MAX_JOB_TASKS}"
            ));
        }
        match self {
            JobTasks::Array(_) => {}
            JobTasks::Sweep(axes) => {
                if axes.is_empty() {
                    return Err("a sweep needs at least one parameter".into());
                }
                check_names(axes.iter().map(|(name, _)| name.as_str()))?;
                for (name, values) in axes {
                    if values.is_empty() {
                        return Err(format!("sweep parameter {name} has no values"));
                    }
                    for value in values {
                        check_value(name, value)?;
                    }
                    let distinct: HashSet<&String> = values.iter().collect();
                    if distinct.len() < values.len() {
                        return Err(format!("sweep parameter {name} repeats a value"));
                    }
                }
            }
            JobTasks::Params(rows) => {
                for (line, row) in rows.iter().enumerate() {
                    check_names(row.iter().map(|(name, _)| name.as_str()))
                        .map_err(|e| format!("parameter set {}: {e}", line + 1))?;
                    for (name, value) in row {
                        check_value(name, value)
                            .map_err(|e| format!("parameter set {}: {e}", line + 1))?;
                    }
                }
                // The job's names together, as listed with it, are bounded as one set's.
                check_names(self.names().iter().map(String::as_str))
                    .map_err(|e| format!("the parameter sets together: {e}"))?;
            }
        }
        if count == 0 {
            return Err("a job needs at least one task".into());
        }
        Ok(count as u32)
    }

    /// The names of the job's parameters, in order: a sweep's axes, or every name of the
    /// parameter sets in the order first seen.
    pub fn names(&self) -> Vec<String> {
        match self {
            JobTasks::Array(_) => Vec::new(),
            JobTasks::Sweep(axes) => axes.iter().map(|(name, _)| name.clone()).collect(),
            JobTasks::Params(rows) => {
                let mut seen = HashSet::new();
                let mut names = Vec::new();
                for (name, _) in rows.iter().flatten() {
                    if seen.insert(name.as_str()) {
                        names.push(name.clone());
                    }
                }
                names
            }
        }
    }

    /// The parameters of task `index` (checked: below the count).
    pub fn params_of(&self, index: u32) -> Vec<Param> {
        match self {
            JobTasks::Array(_) => Vec::new(),
            JobTasks::Sweep(axes) => {
                // Mixed radix, the last axis the least significant digit.
                let mut rest = index as usize;
                let mut params = vec![(String::new(), String::new()); axes.len()];
                for (slot, (name, values)) in params.iter_mut().zip(axes).rev() {
                    *slot = (name.clone(), values[rest % values.len()].clone());
                    rest /= values.len();
                }
                params
            }
            JobTasks::Params(rows) => rows[index as usize].clone(),
        }
    }
}

/// Names must be identifiers (`[A-Za-z_][A-Za-z0-9_]*`, so that `CORRAL_PARAM_<NAME>` is a
/// usable variable), not `index`, and distinct even ignoring case (the variable is
/// upper-cased); at most [`MAX_PARAMS`] of them.
fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for name in names {
        let valid = name.len() <= PARAM_NAME_BYTES
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!(
                "parameter name {} is not valid: use letters, digits and _ (not first a \
                 digit), at most {PARAM_NAME_BYTES} bytes",
                crate::convert::shown(name)
            ));
        }
        if name.eq_ignore_ascii_case("index") {
            return Err("parameter name index is taken by the task's index".into());
        }
        if seen.len() == MAX_PARAMS {
            return Err(format!("more than {MAX_PARAMS} parameters"));
        }
        if !seen.insert(name.to_ascii_uppercase()) {
            return Err(format!(
                "parameter {name} is named twice (names ignore case)"
            ));
        }
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > PARAM_VALUE_BYTES {
        return Err(format!(
            "the value of parameter {name} is {} bytes, over the {PARAM_VALUE_BYTES}-byte bound",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of parameter {name} contains a NUL"));
    }
    Ok(())
}

/// The spec of task `index` of job `job` of `count` tasks, made from the job's `template`:
/// `{index}` and `{NAME}` of each parameter replaced in its args (in one pass: a value is
/// never expanded again; any other `{...}` is left as it is), and `CORRAL_JOB_ID`,
/// `CORRAL_TASK_INDEX`, `CORRAL_TASK_COUNT` and `CORRAL_PARAM_<NAME>` set. Refused, with the
/// bytes its args would take, once they pass `max_args` bytes together: expanding stops there.
pub fn task_spec(
    template: &TaskSpec,
    job: JobId,
    index: u32,
    count: u32,
    params: &[Param],
    max_args: usize,
) -> Result<TaskSpec, usize> {
    let mut spec = template.clone();
    let index_text = index.to_string();
    let lookup = |name: &str| -> Option<&str> {
        if name == "index" {
            return Some(&index_text);
        }
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut args = 0usize;
    for arg in &mut spec.args {
        if arg.contains('{') {
            let budget = max_args.saturating_sub(args);
            *arg = substitute(arg, &lookup, budget).ok_or(args.saturating_add(budget) + 1)?;
        }
        args = args.saturating_add(arg.len());
        if args > max_args {
            return Err(args);
        }
    }
    spec.env.insert("CORRAL_JOB_ID".into(), job.to_string());
    spec.env
        .insert("CORRAL_TASK_INDEX".into(), index_text.clone());
    spec.env
        .insert("CORRAL_TASK_COUNT".into(), count.to_string());
    for (name, value) in params {
        spec.env.insert(
            format!("CORRAL_PARAM_{}", name.to_ascii_uppercase()),
            value.clone(),
        );
    }
    Ok(spec)
}

/// `text` with each `{name}` that `lookup` knows replaced by its value. A placeholder is an
/// identifier of at most [`PARAM_NAME_BYTES`] between braces, so each `{` costs at most that
/// many bytes to look past: linear in the text, whatever it holds. `None` once the result
/// passes `budget` bytes: it is never built larger.
fn substitute<'a>(
    text: &str,
    lookup: &impl Fn(&str) -> Option<&'a str>,
    budget: usize,
) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(budget));
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if out.len() > budget {
            return None;
        }
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let len = after
            .bytes()
            .take(PARAM_NAME_BYTES)
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let value = match after.as_bytes().get(len) {
            Some(b'}') => lookup(&after[..len]),
            _ => None,
        };
        match value {
            Some(value) => {
                out.push_str(value);
                rest = &after[len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out.len() <= budget).then_some(out)
}

/// A job as submitted.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// The spec its tasks are made from.
    pub template: TaskSpec,
    /// Which tasks.
    pub tasks: JobTasks,
    /// Failures that kill the rest; 0: no limit.
    pub max_failures: u32,
    /// Submitting again with this key (per tenant) answers the job it first made.
    pub idempotency_key: Option<String>,
    /// The sha256 (hex) of the request, which a retry under the key must match.
    pub sha256: String,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Some task has not ended.
    Running,
    /// Every task FINISHED.
    Finished,
    /// Every task ended, some not FINISHED, or `max_failures` was reached.
    Failed,
    /// Killed on request.
    Killed,
}

impl JobState {
    /// The state's name as the CLI shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "RUNNING",
            JobState::Finished => "FINISHED",
            JobState::Failed => "FAILED",
            JobState::Killed => "KILLED",
        }
    }
}

/// A task's place in its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMember {
    /// The job.
    pub job: JobId,
    /// The task's index, from 0.
    pub index: u32,
    /// Its parameters, in the job's order.
    pub params: Vec<Param>,
}

/// What the host records of a job (its tasks are recorded as tasks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The name its tasks carry.
    pub name: String,
    /// Its owner.
    pub tenant: String,
    /// The module its tasks run.
    pub module_sha256: String,
    /// Tasks in all.
    pub count: u32,
    /// Its first task; the rest follow in index order.
    pub first: TaskId,
    /// Its parameters' names.
    pub param_names: Vec<String>,
    /// Failures that kill the rest and fail the job; 0: no limit.
    pub max_failures: u32,
    /// A kill of the whole job was asked for.
    pub kill_requested: bool,
    /// Where it is.
    pub state: JobState,
    /// Why it ended as it did.
    pub reason: String,
    /// Submission time (ms since the epoch).
    pub created_at_ms: i64,
    /// When its last task ended; 0 before.
    pub finished_at_ms: i64,
    /// The sha256 (hex) of the request that made it, for its idempotency key.
    pub request_sha256: String,
}

impl Job {
    /// The id of task `index`.
    pub fn task(&self, index: u32) -> TaskId {
        TaskId(self.first.0 + u64::from(index))
    }

    /// Its tasks' ids, in index order.
    pub fn tasks(&self) -> impl Iterator<Item = TaskId> {
        let first = self.first.0;
        (first..first + u64::from(self.count)).map(TaskId)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::task::{RetryPolicy, TaskLimits};

    fn p(name: &str, value: &str) -> Param {
        (name.into(), value.into())
    }

    fn template(args: &[&str]) -> TaskSpec {
        TaskSpec {
            name: "sweep".into(),
            tenant: "default".into(),
            module_sha256: "ab".repeat(32),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::from([("KEEP".into(), "1".into())]),
            stdin: Default::default(),
            limits: TaskLimits {
                fuel: 1,
                memory_bytes: 1,
                timeout: Duration::from_secs(1),
                max_output_bytes: 1,
                max_disk_bytes: 1,
            },
            labels: BTreeMap::new(),
            constraints: BTreeMap::new(),
            retry: RetryPolicy {
                max_retries: 0,
                retry_failed: false,
            },
            collect_outputs: false,
            inputs: Vec::new(),
        }
    }

    #[test]
    fn job_ids_round_trip_and_reject_junk() {
        assert_eq!("j-42".parse::<JobId>(), Ok(JobId(42)));
        assert_eq!(JobId(7).to_string(), "j-7");
        assert!("t-42".parse::<JobId>().is_err());
        assert!("j-".parse::<JobId>().is_err());
    }

    #[test]
    fn a_sweep_is_the_cartesian_product_with_the_last_axis_fastest() {
        let sweep = JobTasks::Sweep(vec![
            ("lr".into(), vec!["0.1".into(), "0.01".into()]),
            ("epochs".into(), vec!["10".into(), "20".into(), "30".into()]),
        ]);
        assert_eq!(sweep.check(), Ok(6));
        assert_eq!(sweep.names(), ["lr", "epochs"]);
        // As itertools.product(["0.1", "0.01"], ["10", "20", "30"]).
        let expected = [
            ("0.1", "10"),
            ("0.1", "20"),
            ("0.1", "30"),
            ("0.01", "10"),
            ("0.01", "20"),
            ("0.01", "30"),
        ];
        for (i, (lr, epochs)) in expected.into_iter().enumerate() {
            assert_eq!(
                sweep.params_of(i as u32),
                [p("lr", lr), p("epochs", epochs)],
                "task {i}"
            );
        }
    }

    #[test]
    fn shapes_out_of_bounds_are_refused_by_name() {
        let refused = |tasks: JobTasks, needle: &str| {
            let e = tasks.check().unwrap_err();
            assert!(e.contains(needle), "{e:?} should name {needle:?}");
        };
        refused(JobTasks::Array(0), "at least one task");
        refused(JobTasks::Array(MAX_JOB_TASKS + 1), "100000");
        assert_eq!(JobTasks::Array(MAX_JOB_TASKS).check(), Ok(MAX_JOB_TASKS));
        // 1,000 x 1,000 is over the bound though each axis is small.
        let thousand: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        refused(
            JobTasks::Sweep(vec![("a".into(), thousand.clone()), ("b".into(), thousand)]),
            "1000000 tasks",
        );
        refused(JobTasks::Sweep(vec![]), "at least one parameter");
        refused(JobTasks::Sweep(vec![("a".into(), vec![])]), "no values");
        refused(
            JobTasks::Sweep(vec![("a".into(), vec!["1".into(), "1".into()])]),
            "repeats",
        );
        for bad in ["1x", "a-b", "", "é", &"n".repeat(65)] {
            refused(
                JobTasks::Sweep(vec![(bad.into(), vec!["1".into()])]),
                "is not valid",
            );
        }
        refused(
            JobTasks::Sweep(vec![("INDEX".into(), vec!["1".into()])]),
            "taken",
        );
        refused(
            JobTasks::Params(vec![vec![p("lr", "1")], vec![p("lr", "1"), p("LR", "2")]]),
            "parameter set 2: parameter LR is named twice",
        );
        refused(
            JobTasks::Params(vec![vec![p("lr", &"9".repeat(PARAM_VALUE_BYTES + 1))]]),
            "1025 bytes",
        );
        refused(JobTasks::Params(vec![]), "at least one task");
        let many: Vec<Param> = (0..=MAX_PARAMS).map(|i| p(&format!("p{i}"), "1")).collect();
        refused(JobTasks::Params(vec![many]), "more than 64");
        // Each set within the bound, but their names together over it.
        let sets: Vec<Vec<Param>> = (0..=MAX_PARAMS)
            .map(|i| vec![p(&format!("p{i}"), "1")])
            .collect();
        refused(
            JobTasks::Params(sets),
            "the parameter sets together: more than 64",
        );
    }

    #[test]
    fn a_placeholder_is_a_short_identifier_so_braces_cost_little() {
        let lookup = |name: &str| (name == "a").then_some("1");
        let substitute = |text: &str, lookup: &dyn Fn(&str) -> Option<&'static str>| {
            substitute(text, &lookup, usize::MAX).unwrap()
        };
        assert_eq!(substitute("{a}{a}{ a}{a-}", &lookup), "11{ a}{a-}");
        // Braces with no placeholder among them come back as they were.
        let braces = "{".repeat(100_000) + "a" + &"}".repeat(3);
        assert_eq!(substitute(&braces, &lookup), "{".repeat(99_999) + "1}}");
        let long = format!("{{{}}}", "a".repeat(PARAM_NAME_BYTES + 1));
        assert_eq!(substitute(&long, &|_| Some("x")), long);
    }

    #[test]
    fn expanding_stops_once_the_args_pass_their_bound() {
        let lookup = |_: &str| Some("0123456789");
        assert_eq!(
            substitute("{a}{a}", &lookup, 20).as_deref(),
            Some("01234567890123456789")
        );
        assert_eq!(substitute("{a}{a}{a}", &lookup, 20), None);
        // A 1 MiB arg of placeholders, each 1 KiB once expanded, is refused at the bound
        // without building the 341 MiB it would take.
        let value = "v".repeat(1024);
        let params = [p("p", &value)];
        let mut huge = template(&[]);
        huge.args = vec!["{p}".repeat(349_525)];
        let over = task_spec(&huge, JobId(1), 0, 1, &params, 1 << 20).unwrap_err();
        assert!(over > 1 << 20 && over < (1 << 20) + 4096, "{over}");
        let mut two = template(&["{p}", "{p}"]);
        two.args[0] = "x".repeat((1 << 20) - 500);
        assert!(task_spec(&two, JobId(1), 0, 1, &params, 1 << 20).is_err());
    }

    #[test]
    fn parameter_sets_name_their_union_in_order_and_keep_their_own() {
        let params = JobTasks::Params(vec![vec![p("b", "1")], vec![p("a", "2"), p("b", "3")]]);
        assert_eq!(params.check(), Ok(2));
        assert_eq!(params.names(), ["b", "a"]);
        assert_eq!(params.params_of(1), [p("a", "2"), p("b", "3")]);
    }

    #[test]
    fn a_tasks_spec_has_its_index_and_parameters_in_args_and_env() {
        let spec = task_spec(
            &template(&[
                "--lr",
                "{lr}",
                "--out=run-{index}-{lr}.json",
                "{unknown}",
                "{",
                "}{index",
                "{{index}}",
            ]),
            JobId(3),
            7,
            12,
            &[p("lr", "{index}")],
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            spec.args,
            [
                "--lr",
                // A value is not expanded again.
                "{index}",
                "--out=run-7-{index}.json",
                "{unknown}",
                "{",
                "}{index",
                "{7}",
            ]
        );
        assert_eq!(spec.env["CORRAL_JOB_ID"], "j-3");
        assert_eq!(spec.env["CORRAL_TASK_INDEX"], "7");
        assert_eq!(spec.env["CORRAL_TASK_COUNT"], "12");
        assert_eq!(spec.env["CORRAL_PARAM_LR"], "{index}");
        assert_eq!(spec.env["KEEP"], "1");
    }
}
