//! The agent's protobuf edge: launches become [`RunSpec`]s, [`RunReport`]s become status
//! updates, and output directories become output files.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_proto::pb;

use super::Key;
use crate::sandbox::{DirGrant, GuestEvent, Limits, Outcome, RunControl, RunReport, RunSpec};

/// Where a task's output directory appears to the guest, and the variable that names it.
pub const OUTPUT_DIR_GUEST: &str = "/output";
/// The environment variable that tells the guest where its output directory is.
pub const OUTPUT_DIR_ENV: &str = "CORRAL_OUTPUT_DIR";
/// Most output files kept per task.
pub const MAX_OUTPUT_FILES: usize = 256;

pub fn task_ref(key: &Key) -> pb::TaskRef {
    pb::TaskRef {
        task_id: key.0.clone(),
        attempt: key.1,
    }
}

pub fn key(task: Option<&pb::TaskRef>) -> Option<Key> {
    task.map(|t| (t.task_id.clone(), t.attempt))
}

pub fn status_message(update: pb::StatusUpdate) -> pb::AgentMessage {
    pb::AgentMessage {
        message: Some(pb::agent_message::Message::Status(update)),
    }
}

/// The contract's kind of a sandbox outcome.
pub fn outcome_kind(outcome: &Outcome) -> pb::OutcomeKind {
    match outcome {
        Outcome::Success => pb::OutcomeKind::Success,
        Outcome::Exit { .. } => pb::OutcomeKind::Exit,
        Outcome::OutOfFuel => pb::OutcomeKind::OutOfFuel,
        Outcome::MemoryLimit => pb::OutcomeKind::MemoryLimit,
        Outcome::Timeout => pb::OutcomeKind::Timeout,
        Outcome::StackOverflow => pb::OutcomeKind::StackOverflow,
        Outcome::Trap { .. } => pb::OutcomeKind::Trap,
        Outcome::LinkError { .. } => pb::OutcomeKind::LinkError,
        Outcome::InvalidModule { .. } => pb::OutcomeKind::InvalidModule,
        Outcome::Killed => pb::OutcomeKind::Killed,
        Outcome::CompileLimit { .. } => pb::OutcomeKind::CompileLimit,
        Outcome::DiskLimit => pb::OutcomeKind::DiskLimit,
    }
}

/// A sandbox outcome in the contract's form.
pub fn outcome_to_pb(outcome: &Outcome) -> pb::Outcome {
    pb::Outcome {
        kind: outcome_kind(outcome) as i32,
        exit_code: outcome.exit_code().unwrap_or(0),
        message: outcome.message().unwrap_or_default().into(),
    }
}

/// The task state an attempt that ended with `outcome` reports.
fn final_state(outcome: &Outcome) -> pb::TaskState {
    match outcome {
        Outcome::Success => pb::TaskState::Finished,
        Outcome::Killed => pb::TaskState::Killed,
        _ => pb::TaskState::Failed,
    }
}

/// A final update for an attempt the agent failed to run (the module could not be fetched,
/// its data dir could not be written, the sandbox failed): Corral's failure, `agent_error`,
/// which the host retries like a lost attempt.
pub fn agent_error(task: &pb::TaskRef, message: String) -> pb::StatusUpdate {
    pb::StatusUpdate {
        task: Some(task.clone()),
        state: pb::TaskState::Failed as i32,
        outcome: Some(pb::Outcome {
            kind: pb::OutcomeKind::AgentError as i32,
            exit_code: 0,
            message,
        }),
        output: Some(pb::TaskOutput::default()),
        ..Default::default()
    }
}

/// The sandbox run a launch asks for. The guest's progress calls land in `progress`.
pub fn run_spec(
    spec: &pb::TaskSpec,
    output_dir: Option<&Path>,
    inputs: &[DirGrant],
    control: RunControl,
    progress: Arc<Mutex<Option<(u64, u64)>>>,
) -> RunSpec {
    let defaults = Limits::default();
    let limits = spec.limits.unwrap_or_default();
    let or = |v: u64, d: u64| if v == 0 { d } else { v };
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut dirs = inputs.to_vec();
    if let Some(dir) = output_dir {
        dirs.push(DirGrant::read_write(dir, OUTPUT_DIR_GUEST));
        env.push((OUTPUT_DIR_ENV.into(), OUTPUT_DIR_GUEST.into()));
    }
    let on_event: crate::sandbox::EventSink = Arc::new(move |event: &GuestEvent| {
        if let GuestEvent::Progress(p) = event {
            *progress.lock().unwrap_or_else(PoisonError::into_inner) = Some((p.done, p.total));
        }
    });
    RunSpec {
        program: if spec.name.is_empty() {
            "task".into()
        } else {
            spec.name.clone()
        },
        args: spec.args.clone(),
        env,
        stdin: spec.stdin.clone(),
        stdin_source: None,
        dirs,
        limits: Limits {
            fuel: or(limits.fuel, defaults.fuel),
            memory_bytes: or(limits.memory_bytes, defaults.memory_bytes),
            timeout: Duration::from_millis(or(
                limits.timeout_ms,
                u64::try_from(defaults.timeout.as_millis()).unwrap_or(u64::MAX),
            )),
            max_stdout_bytes: or(limits.max_output_bytes, defaults.max_stdout_bytes),
            max_stderr_bytes: or(limits.max_output_bytes, defaults.max_stderr_bytes),
            max_disk_bytes: or(limits.max_disk_bytes, defaults.max_disk_bytes),
            ..defaults
        },
        on_event: Some(on_event),
        control: Some(control),
    }
}

/// The final update for a run that happened.
pub fn final_update(
    task: &pb::TaskRef,
    report: RunReport,
    files: Option<(Vec<pb::OutputFile>, bool)>,
) -> pb::StatusUpdate {
    let (files, files_truncated) = files.unwrap_or_default();
    pb::StatusUpdate {
        task: Some(task.clone()),
        state: final_state(&report.outcome) as i32,
        outcome: Some(outcome_to_pb(&report.outcome)),
        fuel_used: report.fuel_used,
        peak_memory_bytes: report.peak_memory_bytes,
        wall_us: u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX),
        guest_warnings: report.guest_warnings,
        progress: report.progress.map(|p| pb::Progress {
            done: p.done,
            total: p.total,
        }),
        output: Some(pb::TaskOutput {
            stdout: report.stdout.into(),
            stderr: report.stderr.into(),
            stdout_truncated: report.stdout_truncated,
            stderr_truncated: report.stderr_truncated,
            files,
            files_truncated,
        }),
    }
}

/// The regular files under `dir` (paths relative to it, `/`-separated, in name order), kept
/// while they fit in `max_bytes` in all (0: no files) and number at most [`MAX_OUTPUT_FILES`];
/// and whether any were left out. Symlinks are not followed. A directory or file that cannot
/// be read is an error naming it: the agent's disk failed, and the task's result would be
/// incomplete without saying so.
pub fn collect_files(dir: &Path, max_bytes: u64) -> Result<(Vec<pb::OutputFile>, bool), String> {
    let failed = |path: &Path, e: std::io::Error| {
        format!("cannot read the task's output {}: {e}", path.display())
    };
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| failed(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| failed(&d, e))?;
            let kind = entry.file_type().map_err(|e| failed(&entry.path(), e))?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                paths.push(entry.path());
            }
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut truncated = false;
    for path in paths {
        let size = std::fs::metadata(&path).map_or(u64::MAX, |m| m.len());
        if files.len() == MAX_OUTPUT_FILES || total.saturating_add(size) > max_bytes {
            truncated = true;
            continue;
        }
        let data = std::fs::read(&path).map_err(|e| failed(&path, e))?;
        total += data.len() as u64;
        let relative = path.strip_prefix(dir).unwrap_or(&path);
        let name: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        files.push(pb::OutputFile {
            path: name.join("/"),
            data: data.into(),
        });
    }
    Ok((files, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_the_contracts_kind_of_its_name() {
        let outcomes = [
            Outcome::Success,
            Outcome::Exit { code: 3 },
            Outcome::OutOfFuel,
            Outcome::MemoryLimit,
            Outcome::Timeout,
            Outcome::StackOverflow,
            Outcome::Trap {
                message: "t".into(),
            },
            Outcome::LinkError {
                message: "l".into(),
            },
            Outcome::InvalidModule {
                message: "i".into(),
            },
            Outcome::Killed,
        ];
        for outcome in &outcomes {
            let pb = outcome_to_pb(outcome);
            assert_eq!(
                pb::OutcomeKind::try_from(pb.kind).unwrap().as_str_name(),
                format!("OUTCOME_KIND_{}", outcome.kind().to_ascii_uppercase())
            );
            assert_eq!(pb.exit_code, outcome.exit_code().unwrap_or(0));
        }
    }

    #[test]
    fn output_files_are_collected_in_order_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), b"bbbb").unwrap();
        std::fs::write(dir.path().join("a.txt"), b"aa").unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), b"cccccc").unwrap();
        let (files, truncated) = collect_files(dir.path(), 100).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt", "sub/c.txt"]);
        assert!(!truncated);
        assert_eq!(files[2].data.as_ref(), b"cccccc");
        let (files, truncated) = collect_files(dir.path(), 7).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert!(truncated);
    }

    #[test]
    fn an_output_dir_that_cannot_be_read_is_an_error_not_an_empty_result() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let e = collect_files(&gone, 100).unwrap_err();
        assert!(
            e.contains("cannot read the task's output") && e.contains("gone"),
            "{e}"
        );
    }

    #[test]
    fn launches_become_exact_run_specs() {
        let spec = pb::TaskSpec {
            name: "sweep".into(),
            args: vec!["--k".into(), "3".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            limits: Some(pb::Limits {
                fuel: 5,
                memory_bytes: 0,
                timeout_ms: 1500,
                max_output_bytes: 10,
                max_disk_bytes: 4096,
            }),
            ..Default::default()
        };
        let dir = Path::new("/tmp/out");
        let run = run_spec(&spec, Some(dir), &[], RunControl::new(), Arc::default());
        assert_eq!(run.program, "sweep");
        assert_eq!(run.args, ["--k", "3"]);
        assert_eq!(
            run.env,
            [
                ("A".to_string(), "1".to_string()),
                (OUTPUT_DIR_ENV.to_string(), OUTPUT_DIR_GUEST.to_string())
            ]
        );
        assert_eq!(run.dirs, [DirGrant::read_write(dir, OUTPUT_DIR_GUEST)]);
        assert_eq!(run.limits.fuel, 5);
        assert_eq!(run.limits.memory_bytes, Limits::default().memory_bytes);
        assert_eq!(run.limits.timeout, Duration::from_millis(1500));
        assert_eq!(run.limits.max_stdout_bytes, 10);
        assert_eq!(run.limits.max_disk_bytes, 4096);
    }
}
