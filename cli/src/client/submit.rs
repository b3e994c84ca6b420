//! `corral submit`: upload the module, submit the task, and with `--wait` follow it to its end
//! and exit as `corral run` would.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use corral_proto::pb;

use super::{
    connect, is_terminal, json, outcome_kind, outcome_name, rpc, state_name, Client, Failure,
};
use crate::args::{
    parse_duration, parse_env, parse_label, parse_size, read_stdin, resolve_env, Format, FormatArg,
    HostArg, ModuleArgs,
};
use crate::exit;
use crate::show::{self, ignore_closed_pipe};

/// Arguments of `corral submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    host: HostArg,
    /// A name for the task (default: the module's file name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The tenant that owns the task [default: the token's tenant; for an admin's token,
    /// `default`]. Only an admin's token names another.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// A label on the task (`sweep=lr`); repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Run only on agents with this label; repeatable.
    #[arg(long = "constraint", value_name = "K=V", value_parser = parse_label)]
    constraints: Vec<(String, String)>,
    /// Attempts after the first, when an attempt is LOST, fails on its agent (agent_error), or
    /// FAILED with --retry-failed [default: the host's, 2].
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Retry FAILED attempts too.
    #[arg(long)]
    retry_failed: bool,
    /// Submitting again with the same key (and tenant) answers the same task, or job.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Give the task a writable output directory (CORRAL_OUTPUT_DIR) and keep its files.
    #[arg(long)]
    outputs: bool,
    /// Set an environment variable for the guest (`K=V`), or pass one of this process's (`K`).
    #[arg(long = "env", value_name = "K[=V]", value_parser = parse_env)]
    envs: Vec<(String, Option<String>)>,
    /// Mount this file, read-only, in the task at GUEST_PATH [default: /input/<file name>];
    /// repeatable. Uploaded once to the host (by sha256; not sent again when the host has
    /// it), fetched once by each agent that runs its tasks.
    #[arg(long = "input", value_name = "FILE[::GUEST_PATH]", value_parser = super::inputs::parse_input)]
    inputs: Vec<super::inputs::InputArg>,
    /// Feed this file to the guest's stdin (`-` for this process's stdin).
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Fuel budget [default: the host's, 10,000,000,000].
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Linear memory cap, also what the task reserves on its agent [default: the host's, 512MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Wall-clock timeout [default: the host's, 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Keep at most this much of each of stdout and stderr [default: the host's, 16MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_output: Option<u64>,
    /// Most bytes the task may grow files by in its output directory; past it the task ends
    /// `disk_limit` [default: the host's, 256MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_disk: Option<u64>,
    /// Wait for the task to end, showing its progress; then print its output and exit like
    /// `corral run`.
    #[arg(long)]
    wait: bool,
    /// With --wait: the task's JSON report.
    #[command(flatten)]
    format: FormatArg,
    #[command(flatten)]
    job: super::jobs::JobFlags,
    #[command(flatten)]
    guest: ModuleArgs,
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    if !args.job.is_job() && args.job.max_failures.is_some() {
        return Err(Failure {
            message: "--max-failures is for jobs (--array, --sweep or --params)".into(),
            status: exit::USAGE,
        }
        .into());
    }
    let bytes = std::fs::read(&args.guest.module)
        .with_context(|| format!("cannot read module {}", args.guest.module.display()))?;
    // The host's own cap (`max_stdin_size`) is checked by the host; this is the message's.
    let stdin = read_stdin(
        args.stdin.as_deref(),
        corral_proto::MAX_MESSAGE_BYTES as u64 - (1 << 20),
    )?;
    let env: BTreeMap<String, String> = resolve_env(args.envs)?.into_iter().collect();
    let mut client = connect(&args.host).await?;
    let chunks: Vec<pb::UploadModuleRequest> = bytes
        .chunks(corral_proto::MODULE_CHUNK_BYTES)
        .map(|c| pb::UploadModuleRequest {
            chunk: bytes::Bytes::copy_from_slice(c),
        })
        .collect();
    let uploaded = match client.upload_module(tokio_stream::iter(chunks)).await {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            // The host says which outcome its refusal is, so that this exits as a run would.
            let kind = status
                .metadata()
                .get(corral_proto::OUTCOME_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(pb::OutcomeKind::from_str_name)
                .unwrap_or(pb::OutcomeKind::InvalidModule);
            return Err(Failure {
                message: format!("{}: {}", args.guest.module.display(), status.message()),
                status: exit::status(kind, 0),
            }
            .into());
        }
        Err(status) => return Err(rpc(status)),
    };
    let inputs = super::inputs::upload(&mut client, &args.inputs).await?;
    let name = args.name.unwrap_or_else(|| {
        args.guest
            .module
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let spec = pb::TaskSpec {
        name,
        tenant: args.tenant.unwrap_or_default(),
        module_sha256: uploaded.sha256,
        args: args.guest.args,
        env,
        stdin: stdin.into(),
        limits: Some(pb::Limits {
            fuel: args.fuel.unwrap_or(0),
            memory_bytes: args.memory.unwrap_or(0),
            timeout_ms: args
                .timeout
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            max_output_bytes: args.max_output.unwrap_or(0),
            max_disk_bytes: args.max_disk.unwrap_or(0),
        }),
        labels: args.labels.into_iter().collect(),
        constraints: args.constraints.into_iter().collect(),
        retry: Some(pb::RetryPolicy {
            max_retries: args.retries,
            retry_failed: args.retry_failed,
        }),
        collect_outputs: args.outputs,
        inputs,
    };
    if args.job.is_job() {
        let request = args.job.request(spec, args.idempotency_key)?;
        return super::jobs::submit(&mut client, request, args.wait, args.format.format).await;
    }
    let submitted = client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec),
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let text = args.format.format == Format::Text;
    if !args.wait {
        if text {
            show::line(&submitted.task_id)?;
        } else {
            show::json(&json::Submitted {
                task_id: submitted.task_id,
                existed: submitted.existed,
            })?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let live = text && std::io::stderr().is_terminal();
    let task = wait(&mut client, &submitted.task_id, live).await?;
    finish(&mut client, &task, text).await
}

/// Watches a task until it ends, with a live progress line on stderr when `live`.
pub async fn wait(client: &mut Client, id: &str, live: bool) -> anyhow::Result<pb::Task> {
    let mut stream = client
        .watch_tasks(pb::WatchTasksRequest { task_id: id.into() })
        .await
        .map_err(rpc)?
        .into_inner();
    let bar = live.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut last = None;
    while let Some(event) = stream.message().await.map_err(rpc)? {
        let Some(task) = event.task else { continue };
        if let Some(bar) = &bar {
            let progress = task
                .progress
                .as_ref()
                .map(|p| format!(" progress {}/{}", p.done, p.total))
                .unwrap_or_default();
            bar.set_message(format!(
                "{} {} on {} fuel {}{progress}",
                task.id,
                state_name(task.state),
                show::dash(&task.agent_id),
                task.fuel_used
            ));
        }
        // The host ends the stream when the task has ended; a LOST or FAILED attempt that
        // is retried is followed by PENDING.
        last = Some(task);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    last.filter(|t| is_terminal(t.state))
        .ok_or_else(|| anyhow!("the host ended the watch of {id} before the task ended"))
}

/// Prints an ended task's output and summary (or JSON) and answers `corral run`'s exit status
/// (plus 135 for KILLED and 136 for LOST).
async fn finish(client: &mut Client, task: &pb::Task, text: bool) -> anyhow::Result<ExitCode> {
    let output = client
        .get_task_output(pb::GetTaskOutputRequest {
            task_id: task.id.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let outcome = task.outcome.clone().unwrap_or_default();
    let kind = outcome_kind(&outcome);
    let status = match pb::TaskState::try_from(task.state) {
        Ok(pb::TaskState::Lost) => exit::LOST,
        Ok(pb::TaskState::Killed) => exit::KILLED,
        _ => exit::status(kind, outcome.exit_code),
    };
    if text {
        ignore_closed_pipe(show::raw(&output.stdout))?;
        let mut err = std::io::stderr().lock();
        ignore_closed_pipe(err.write_all(&output.stderr))?;
        let shown_kind = match kind {
            pb::OutcomeKind::Unspecified => "-".to_string(),
            kind => outcome_name(kind),
        };
        let mut line = format!(
            "corral: {} {} {} fuel_used={} peak_memory={} wall={} agent={} attempts={}",
            task.id,
            state_name(task.state),
            shown_kind,
            task.fuel_used,
            show::size(task.peak_memory_bytes),
            show::duration(Duration::from_micros(task.wall_us)),
            show::dash(&task.agent_id),
            task.attempts
        );
        if kind == pb::OutcomeKind::Exit {
            line.push_str(&format!(" exit_code={}", outcome.exit_code));
        }
        for (flag, truncated) in [
            ("stdout_truncated", output.stdout_truncated),
            ("stderr_truncated", output.stderr_truncated),
            ("files_truncated", output.files_truncated),
        ] {
            if truncated {
                line.push_str(&format!(" {flag}=true"));
            }
        }
        if !outcome.message.is_empty() {
            line.push_str(&format!(" message={:?}", outcome.message));
        } else if task.state == pb::TaskState::Lost as i32 {
            line.push_str(&format!(" reason={:?}", task.reason));
        }
        ignore_closed_pipe(writeln!(err, "{line}"))?;
    } else {
        ignore_closed_pipe(show::json(&json::Report {
            task: json::Task::from(task),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            stdout_truncated: output.stdout_truncated,
            stderr_truncated: output.stderr_truncated,
            files: output.files.iter().map(|f| f.path.clone()).collect(),
            files_truncated: output.files_truncated,
        }))?;
    }
    Ok(ExitCode::from(status))
}
