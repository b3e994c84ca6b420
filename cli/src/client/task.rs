//! `corral task get|kill|output|watch ID`.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use corral_proto::pb;

use super::submit::wait;
use super::{connect, is_terminal, json, rpc, state_name};
use crate::args::{Format, FormatArg, HostArg};
use crate::show;

/// How long `task kill` waits for the task to stop.
const KILL_WAIT: Duration = Duration::from_secs(10);

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
    #[command(flatten)]
    format: FormatArg,
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

pub async fn task(command: TaskCommand) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Get(args) => get(args).await,
        TaskCommand::Kill(args) => kill(args).await,
        TaskCommand::Output(args) => output(args).await,
        TaskCommand::Watch(args) => watch(args).await,
    }
}

async fn get(args: TaskIdArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let task = client
        .get_task(pb::GetTaskRequest { task_id: args.id })
        .await
        .map_err(rpc)?
        .into_inner();
    let shown = json::Task::from(&task);
    match args.format.format {
        Format::Json => show::json(&shown)?,
        Format::Text => show::fields(&shown)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn kill(args: TaskIdArgs) -> anyhow::Result<ExitCode> {
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
        tokio::time::timeout(KILL_WAIT, wait(&mut client, &args.id, false))
            .await
            .map_err(|_| anyhow!("task {} did not stop within 10s of the kill", args.id))??
    };
    match args.format.format {
        Format::Text => show::line(&format!("{} {}", task.id, state_name(task.state)))?,
        Format::Json => show::json(&json::Task::from(&task))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `path` under `dir`, refused when it would leave it.
pub(super) fn inside(dir: &Path, path: &str) -> anyhow::Result<PathBuf> {
    let relative = Path::new(path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        bail!("output file path {path:?} leaves the output directory; not saved");
    }
    Ok(dir.join(relative))
}

async fn output(args: OutputArgs) -> anyhow::Result<ExitCode> {
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
            let path = inside(dir, &file.path)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, &file.data)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    match args.task.format.format {
        Format::Text => {
            show::raw(&output.stdout)?;
            std::io::stderr().write_all(&output.stderr)?;
        }
        Format::Json => show::json(&json::Output::from(&output))?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(args: TaskIdArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let mut stream = client
        .watch_tasks(pb::WatchTasksRequest { task_id: args.id })
        .await
        .map_err(rpc)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(rpc)? {
        let Some(task) = event.task else { continue };
        match args.format.format {
            Format::Json => show::json(&json::Task::from(&task))?,
            Format::Text => {
                let progress = task
                    .progress
                    .as_ref()
                    .map(|p| format!(" progress={}/{}", p.done, p.total))
                    .unwrap_or_default();
                let reason = if task.reason.is_empty() {
                    String::new()
                } else {
                    format!(" reason={:?}", task.reason)
                };
                show::line(&format!(
                    "{} {} agent={} fuel={}{progress}{reason}",
                    task.id,
                    state_name(task.state),
                    show::dash(&task.agent_id),
                    task.fuel_used,
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_files_stay_inside_the_directory() {
        let dir = Path::new("/tmp/out");
        assert_eq!(inside(dir, "a/b.txt").unwrap(), dir.join("a/b.txt"));
        assert!(inside(dir, "../escape").is_err());
        assert!(inside(dir, "a/../../escape").is_err());
        assert!(inside(dir, "/etc/passwd").is_err());
    }
}
