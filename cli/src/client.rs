//! The client commands: `corral submit`, `tasks`, `task get|kill|output|watch`, `agents`,
//! `partitions`. They speak the `corral.v1.Corral` API to the host named by `--host` or
//! `CORRAL_HOST`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use corral_proto::pb;
use corral_proto::pb::corral_client::CorralClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::exit;
use crate::run::{parse_duration, parse_env, parse_size, read_stdin, resolve_env, size};
use crate::serve::parse_label;

/// Where the host is.
#[derive(Args, Debug, Clone)]
pub struct HostArg {
    /// The host's address.
    #[arg(
        long,
        value_name = "URL",
        env = "CORRAL_HOST",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    host: String,
}

/// Output format of listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table (or lines) for people.
    Text,
    /// JSON for programs.
    Json,
}

/// A failure that maps to an exit status other than "corral failed".
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What to print.
    pub message: String,
    /// The exit status.
    pub status: u8,
}

/// Arguments of `corral submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    host: HostArg,
    /// A name for the task (default: the module's file name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The tenant that owns the task.
    #[arg(long, value_name = "TENANT", default_value = "default")]
    tenant: String,
    /// A label on the task (`sweep=lr`); repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Run only on agents with this label; repeatable.
    #[arg(long = "constraint", value_name = "K=V", value_parser = parse_label)]
    constraints: Vec<(String, String)>,
    /// Attempts after the first, when an attempt is LOST (or FAILED, with --retry-failed)
    /// [default: the host's, 2].
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Retry FAILED attempts too.
    #[arg(long)]
    retry_failed: bool,
    /// Submitting again with the same key answers the same task.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Give the task a writable output directory (CORRAL_OUTPUT_DIR) and keep its files.
    #[arg(long)]
    outputs: bool,
    /// Set an environment variable for the guest (`K=V`), or pass one of this process's (`K`).
    #[arg(long = "env", value_name = "K[=V]", value_parser = parse_env)]
    envs: Vec<(String, Option<String>)>,
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
    /// Wait for the task to end, showing its progress; then print its output and exit like
    /// `corral run`.
    #[arg(long)]
    wait: bool,
    /// Output format (with --wait: the task's JSON report).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The module: a .wasm binary or .wat text.
    #[arg(value_name = "MODULE")]
    module: PathBuf,
    /// Arguments passed to the guest.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

/// Arguments of `corral tasks`.
#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    host: HostArg,
    /// Only tasks in this state (pending, assigned, running, finished, failed, killed, lost).
    #[arg(long, value_name = "STATE")]
    state: Option<String>,
    /// Only tasks with this name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Only tasks with this label; repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Only this tenant's tasks.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// At most this many tasks (oldest first); 0 for all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: usize,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// `corral task ...`.
#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Show one task.
    Get(TaskIdArgs),
    /// Kill a task and wait (up to 10s) until it has stopped.
    Kill(TaskIdArgs),
    /// Print a finished task's stdout and stderr; --save writes its output files.
    Output(OutputArgs),
    /// Print each state change of a task until it ends.
    Watch(TaskIdArgs),
}

/// A task id and the usual flags.
#[derive(Args, Debug)]
pub struct TaskIdArgs {
    #[command(flatten)]
    host: HostArg,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The task's id (t-42).
    #[arg(value_name = "ID")]
    id: String,
}

/// Arguments of `corral task output`.
#[derive(Args, Debug)]
pub struct OutputArgs {
    #[command(flatten)]
    task: TaskIdArgs,
    /// Write the task's output files under DIR.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
}

/// Arguments of `corral agents` and `corral partitions`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    host: HostArg,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
}

async fn connect(host: &HostArg) -> anyhow::Result<CorralClient<Channel>> {
    let endpoint = corral_agent::daemon::host_endpoint(&host.host)?;
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow!(
            "cannot reach the Corral host at {}: {} (is `corral host` or `corral dev` running there? set --host or CORRAL_HOST)",
            host.host,
            source_chain(&e)
        )
    })?;
    Ok(CorralClient::new(channel)
        .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(corral_proto::MAX_MESSAGE_BYTES))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A gRPC error as the CLI reports it: the host's message, or why the host was unreachable.
fn rpc(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow!("the host is unreachable: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Unspecified => "UNKNOWN",
        pb::TaskState::Pending => "PENDING",
        pb::TaskState::Assigned => "ASSIGNED",
        pb::TaskState::Running => "RUNNING",
        pb::TaskState::Finished => "FINISHED",
        pb::TaskState::Failed => "FAILED",
        pb::TaskState::Killed => "KILLED",
        pb::TaskState::Lost => "LOST",
    }
}

fn is_terminal(state: i32) -> bool {
    matches!(
        pb::TaskState::try_from(state),
        Ok(pb::TaskState::Finished
            | pb::TaskState::Failed
            | pb::TaskState::Killed
            | pb::TaskState::Lost)
    )
}

fn task_json(t: &pb::Task) -> serde_json::Value {
    let spec = t.spec.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "name": spec.name,
        "tenant": spec.tenant,
        "state": state_name(t.state),
        "attempts": t.attempts,
        "agent": t.agent_id,
        "partition": t.partition_id,
        "outcome": t.outcome.as_ref().map(|o| o.kind.clone()),
        "exit_code": t.outcome.as_ref().filter(|o| o.kind == "success" || o.kind == "exit").map(|o| o.exit_code),
        "message": t.outcome.as_ref().map(|o| o.message.clone()).filter(|m| !m.is_empty()),
        "fuel_used": t.fuel_used,
        "peak_memory_bytes": t.peak_memory_bytes,
        "wall_ms": t.wall_ms,
        "memory_request_bytes": t.memory_request_bytes,
        "created_at_ms": t.created_at_ms,
        "started_at_ms": t.started_at_ms,
        "finished_at_ms": t.finished_at_ms,
        "reason": t.reason,
        "progress": t.progress.as_ref().map(|p| [p.done, p.total]),
        "module_sha256": spec.module_sha256,
        "args": spec.args,
        "labels": spec.labels,
        "constraints": spec.constraints,
    })
}

fn age(ms: i64) -> String {
    let now = corral_host::control::now_ms();
    let secs = u64::try_from((now - ms).max(0) / 1000).unwrap_or(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Prints rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))?;
    let stdin = read_stdin(args.stdin.as_deref())?;
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
            return Err(Failure {
                message: format!("{}: {}", args.module.display(), status.message()),
                status: exit::INVALID_MODULE,
            }
            .into())
        }
        Err(status) => return Err(rpc(status)),
    };
    let name = args.name.unwrap_or_else(|| {
        args.module
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let spec = pb::TaskSpec {
        name,
        tenant: args.tenant,
        module_sha256: uploaded.sha256,
        args: args.args,
        env,
        stdin: stdin.into(),
        limits: Some(pb::Limits {
            fuel: args.fuel.unwrap_or(0),
            memory_bytes: args.memory.unwrap_or(0),
            timeout_ms: args
                .timeout
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            max_output_bytes: args.max_output.unwrap_or(0),
        }),
        labels: args.labels.into_iter().collect(),
        constraints: args.constraints.into_iter().collect(),
        retry: Some(pb::RetryPolicy {
            max_retries: args.retries,
            retry_failed: args.retry_failed,
        }),
        collect_outputs: args.outputs,
    };
    let submitted = client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec),
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let id = submitted.task_id;
    if !args.wait {
        match args.format {
            Format::Text => println!("{id}"),
            Format::Json => print_json(&json!({"task_id": id, "existed": submitted.existed}))?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let text = args.format == Format::Text;
    let task = wait(&mut client, &id, text && std::io::stderr().is_terminal()).await?;
    finish(&mut client, &task, text).await
}

/// Watches a task until it ends, with a live progress line on stderr when `live`.
async fn wait(
    client: &mut CorralClient<Channel>,
    id: &str,
    live: bool,
) -> anyhow::Result<pb::Task> {
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
                dash(&task.agent_id),
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

/// Prints an ended task's output and summary (or JSON) and answers `corral run`'s exit status.
async fn finish(
    client: &mut CorralClient<Channel>,
    task: &pb::Task,
    text: bool,
) -> anyhow::Result<ExitCode> {
    let output = client
        .get_task_output(pb::GetTaskOutputRequest {
            task_id: task.id.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let outcome = task.outcome.clone().unwrap_or_default();
    let status = match state_name(task.state) {
        "LOST" => exit::LOST,
        "KILLED" => exit::KILLED,
        _ => exit::status_of(&outcome.kind, outcome.exit_code),
    };
    if text {
        std::io::stdout().write_all(&output.stdout)?;
        std::io::stdout().flush()?;
        let mut err = std::io::stderr().lock();
        err.write_all(&output.stderr)?;
        let mut line = format!(
            "corral: {} {} {} fuel_used={} peak_memory={} wall={}ms agent={} attempts={}",
            task.id,
            state_name(task.state),
            dash(&outcome.kind),
            task.fuel_used,
            size(task.peak_memory_bytes),
            task.wall_ms,
            dash(&task.agent_id),
            task.attempts
        );
        if outcome.kind == "exit" {
            line.push_str(&format!(" exit_code={}", outcome.exit_code));
        }
        if !outcome.message.is_empty() {
            line.push_str(&format!(" message={:?}", outcome.message));
        } else if state_name(task.state) == "LOST" {
            line.push_str(&format!(" reason={:?}", task.reason));
        }
        writeln!(err, "{line}")?;
    } else {
        let mut value = task_json(task);
        value["stdout"] = json!(String::from_utf8_lossy(&output.stdout));
        value["stderr"] = json!(String::from_utf8_lossy(&output.stderr));
        value["stdout_truncated"] = json!(output.stdout_truncated);
        value["stderr_truncated"] = json!(output.stderr_truncated);
        value["files"] = json!(output
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect::<Vec<_>>());
        print_json(&value)?;
    }
    Ok(ExitCode::from(status))
}

pub async fn tasks(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let state = match &args.state {
        Some(s) => {
            let state: corral_host::task::TaskState = s.parse().map_err(|e: String| Failure {
                message: e,
                status: exit::USAGE,
            })?;
            corral_host::convert::state_to_pb(state) as i32
        }
        None => 0,
    };
    let mut client = connect(&args.host).await?;
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page_size = match args.limit {
            0 => 1000,
            n => (n - all.len()).min(1000) as u32,
        };
        let page = client
            .list_tasks(pb::ListTasksRequest {
                state,
                name: args.name.clone().unwrap_or_default(),
                labels: args.labels.iter().cloned().collect(),
                tenant: args.tenant.clone().unwrap_or_default(),
                page_size,
                page_token: token,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        all.extend(page.tasks);
        token = page.next_page_token;
        if token.is_empty() || (args.limit > 0 && all.len() >= args.limit) {
            break;
        }
    }
    match args.format {
        Format::Json => print_json(&json!(all.iter().map(task_json).collect::<Vec<_>>()))?,
        Format::Text => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|t| {
                    let spec = t.spec.clone().unwrap_or_default();
                    vec![
                        t.id.clone(),
                        dash(&spec.name),
                        state_name(t.state).to_string(),
                        dash(&t.agent_id),
                        dash(&t.partition_id),
                        t.fuel_used.to_string(),
                        age(t.created_at_ms),
                    ]
                })
                .collect();
            table(
                &["ID", "NAME", "STATE", "AGENT", "PARTITION", "FUEL", "AGE"],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn task(command: TaskCommand) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Get(args) => {
            let mut client = connect(&args.host).await?;
            let task = client
                .get_task(pb::GetTaskRequest { task_id: args.id })
                .await
                .map_err(rpc)?
                .into_inner();
            print_task(&task, args.format)?;
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Kill(args) => {
            let mut client = connect(&args.host).await?;
            let task = client
                .kill_task(pb::KillTaskRequest {
                    task_id: args.id.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let task = if is_terminal(task.state) {
                task
            } else {
                tokio::time::timeout(Duration::from_secs(10), wait(&mut client, &args.id, false))
                    .await
                    .map_err(|_| {
                        anyhow!("task {} did not stop within 10s of the kill", args.id)
                    })??
            };
            match args.format {
                Format::Text => println!("{} {}", task.id, state_name(task.state)),
                Format::Json => print_json(&task_json(&task))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Output(args) => {
            let mut client = connect(&args.task.host).await?;
            let output = client
                .get_task_output(pb::GetTaskOutputRequest {
                    task_id: args.task.id.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if let Some(dir) = &args.save {
                for file in &output.files {
                    let relative = std::path::Path::new(&file.path);
                    if relative.is_absolute()
                        || relative
                            .components()
                            .any(|c| matches!(c, std::path::Component::ParentDir))
                    {
                        bail!(
                            "output file path {:?} leaves the output directory; not saved",
                            file.path
                        );
                    }
                    let path = dir.join(relative);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    std::fs::write(&path, &file.data)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
            match args.task.format {
                Format::Text => {
                    std::io::stdout().write_all(&output.stdout)?;
                    std::io::stderr().write_all(&output.stderr)?;
                }
                Format::Json => print_json(&json!({
                    "stdout": String::from_utf8_lossy(&output.stdout),
                    "stderr": String::from_utf8_lossy(&output.stderr),
                    "stdout_truncated": output.stdout_truncated,
                    "stderr_truncated": output.stderr_truncated,
                    "files": output.files.iter().map(|f| json!({"path": f.path, "bytes": f.data.len()})).collect::<Vec<_>>(),
                    "files_truncated": output.files_truncated,
                }))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Watch(args) => {
            let mut client = connect(&args.host).await?;
            let mut stream = client
                .watch_tasks(pb::WatchTasksRequest { task_id: args.id })
                .await
                .map_err(rpc)?
                .into_inner();
            while let Some(event) = stream.message().await.map_err(rpc)? {
                let Some(task) = event.task else { continue };
                match args.format {
                    Format::Json => print_json(&task_json(&task))?,
                    Format::Text => {
                        let progress = task
                            .progress
                            .as_ref()
                            .map(|p| format!(" progress={}/{}", p.done, p.total))
                            .unwrap_or_default();
                        println!(
                            "{} {} agent={} fuel={}{progress}{}",
                            task.id,
                            state_name(task.state),
                            dash(&task.agent_id),
                            task.fuel_used,
                            if task.reason.is_empty() {
                                String::new()
                            } else {
                                format!(" reason={:?}", task.reason)
                            }
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_task(task: &pb::Task, format: Format) -> anyhow::Result<()> {
    let value = task_json(task);
    match format {
        Format::Json => print_json(&value),
        Format::Text => {
            if let Some(map) = value.as_object() {
                for (key, v) in map {
                    let shown = match v {
                        serde_json::Value::String(s) => dash(s),
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    println!("{key:<20} {shown}");
                }
            }
            Ok(())
        }
    }
}

pub async fn agents(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .agents;
    let state = |s: i32| match pb::AgentState::try_from(s).unwrap_or(pb::AgentState::Unspecified) {
        pb::AgentState::Active => "active",
        pb::AgentState::Disconnected => "disconnected",
        pb::AgentState::Lost => "lost",
        pb::AgentState::Unspecified => "unknown",
    };
    let labels = |l: &BTreeMap<String, String>| {
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match args.format {
        Format::Json => print_json(&json!(agents
            .iter()
            .map(|a| {
                let c = a.capacity.unwrap_or_default();
                json!({"id": a.id, "address": a.address, "state": state(a.state), "slots": c.slots,
                       "memory_bytes": c.memory_bytes, "running": a.running_tasks, "labels": a.labels,
                       "version": a.version, "last_seen_ms": a.last_seen_ms})
            })
            .collect::<Vec<_>>()))?,
        Format::Text => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    let c = a.capacity.unwrap_or_default();
                    vec![
                        a.id.clone(),
                        state(a.state).into(),
                        c.slots.to_string(),
                        size(c.memory_bytes),
                        a.running_tasks.to_string(),
                        dash(&labels(&a.labels)),
                        age(a.last_seen_ms),
                    ]
                })
                .collect();
            table(&["ID", "STATE", "SLOTS", "MEMORY", "RUNNING", "LABELS", "LAST_SEEN"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn partitions(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let partitions = client
        .list_partitions(pb::ListPartitionsRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .partitions;
    let state =
        |s: i32| match pb::PartitionState::try_from(s).unwrap_or(pb::PartitionState::Unspecified) {
            pb::PartitionState::Available => "available",
            pb::PartitionState::Allocated => "allocated",
            pb::PartitionState::Draining => "draining",
            pb::PartitionState::Unspecified => "unknown",
        };
    match args.format {
        Format::Json => print_json(&json!(partitions
            .iter()
            .map(|p| {
                let (c, a) = (
                    p.capacity.unwrap_or_default(),
                    p.allocated.unwrap_or_default(),
                );
                json!({"id": p.id, "agent": p.agent_id, "name": p.name, "state": state(p.state),
                       "slots": c.slots, "memory_bytes": c.memory_bytes,
                       "allocated_slots": a.slots, "allocated_memory_bytes": a.memory_bytes,
                       "tenant": (!p.tenant.is_empty()).then_some(&p.tenant), "labels": p.labels})
            })
            .collect::<Vec<_>>()))?,
        Format::Text => {
            let rows: Vec<Vec<String>> = partitions
                .iter()
                .map(|p| {
                    let (c, a) = (
                        p.capacity.unwrap_or_default(),
                        p.allocated.unwrap_or_default(),
                    );
                    let mut reserved: Vec<String> =
                        p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    if !p.tenant.is_empty() {
                        reserved.insert(0, format!("tenant={}", p.tenant));
                    }
                    vec![
                        p.id.clone(),
                        state(p.state).into(),
                        format!("{}/{}", a.slots, c.slots),
                        format!("{}/{}", size(a.memory_bytes), size(c.memory_bytes)),
                        dash(&reserved.join(",")),
                    ]
                })
                .collect();
            table(&["ID", "STATE", "SLOTS", "MEMORY", "RESERVED"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}
