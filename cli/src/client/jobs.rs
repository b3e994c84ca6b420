//! Jobs from the command line: the job flags of `corral submit` (`--array`, `--sweep`,
//! `--params`, `--max-failures`), `corral jobs`, and `corral job get|wait|kill|results J`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use corral_proto::pb;

use super::json::{self, job_state_name, Members};
use super::task::inside;
use super::{connect, rpc, Client, Failure};
use crate::args::{Format, FormatArg, HostArg};
use crate::{exit, show};

/// Largest `--params` file read.
const MAX_PARAMS_FILE: u64 = 64 << 20;
/// How long `job kill` waits for the job to end.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// The longest pause between two looks at a job being waited for.
const POLL_MAX: Duration = Duration::from_millis(500);
/// How long `job wait` rides out a host it cannot reach (restarting, reopening its store)
/// before it gives up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);

/// One `--sweep NAME=V1,V2,...`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep(pub pb::SweepAxis);

fn parse_sweep(text: &str) -> Result<Sweep, String> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=V1,V2,...: no ="))?;
    if name.is_empty() {
        return Err(format!("{text:?} names no parameter"));
    }
    Ok(Sweep(pb::SweepAxis {
        name: name.to_string(),
        values: values.split(',').map(str::to_string).collect(),
    }))
}

/// The flags of `corral submit` that make it submit a job.
#[derive(Args, Debug, Default)]
pub struct JobFlags {
    /// Submit a job of N tasks: task i gets CORRAL_TASK_INDEX=i and CORRAL_TASK_COUNT=N, and
    /// `{index}` in its args replaced by i. Prints the job's id (j-<n>).
    #[arg(long, value_name = "N", conflicts_with_all = ["sweep", "params"])]
    pub array: Option<u32>,
    /// Sweep a parameter over values (repeatable: every combination): `{NAME}` in the args is
    /// replaced and CORRAL_PARAM_<NAME> set, in each task.
    #[arg(long, value_name = "NAME=V1,V2,...", value_parser = parse_sweep, conflicts_with = "params")]
    pub sweep: Vec<Sweep>,
    /// One task per line of this JSON Lines file, each line an object of parameters
    /// (`{"lr": 0.1, "epochs": 10}`).
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// With a job: once K tasks have failed, kill the rest and fail the job.
    #[arg(long, value_name = "K")]
    pub max_failures: Option<u32>,
}

impl JobFlags {
    /// Whether they ask for a job.
    pub fn is_job(&self) -> bool {
        self.array.is_some() || !self.sweep.is_empty() || self.params.is_some()
    }

    /// The job request for `spec`, or a usage error.
    pub fn request(
        self,
        spec: pb::TaskSpec,
        idempotency_key: Option<String>,
    ) -> anyhow::Result<pb::SubmitJobRequest> {
        let params = match &self.params {
            Some(path) => read_params(path)?,
            None => Vec::new(),
        };
        if self.array == Some(0) {
            return Err(usage("--array needs at least 1 task"));
        }
        Ok(pb::SubmitJobRequest {
            spec: Some(spec),
            array: self.array.unwrap_or(0),
            sweep: self.sweep.into_iter().map(|s| s.0).collect(),
            params,
            max_failures: self.max_failures.unwrap_or(0),
            idempotency_key: idempotency_key.unwrap_or_default(),
        })
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure {
        message: message.into(),
        status: exit::USAGE,
    }
    .into()
}

/// A `--params` file: one JSON object per line (blank lines skipped), its values strings,
/// numbers or booleans, kept as their text.
fn read_params(path: &Path) -> anyhow::Result<Vec<pb::ParamSet>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the parameter file {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_PARAMS_FILE + 1),
        &mut text,
    )
    .with_context(|| format!("cannot read the parameter file {}", path.display()))?;
    if text.len() as u64 > MAX_PARAMS_FILE {
        return Err(usage(format!(
            "{} is over {MAX_PARAMS_FILE} bytes",
            path.display()
        )));
    }
    parse_params(&text).map_err(|e| usage(format!("{}: {e}", path.display())))
}

fn parse_params(text: &str) -> Result<Vec<pb::ParamSet>, String> {
    let mut sets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Members(fields) = serde_json::from_str(line)
            .map_err(|e| format!("line {}: not a JSON object: {e}", n + 1))?;
        let set = json::param_set(fields).map_err(|e| format!("line {}: {e}", n + 1))?;
        sets.push(set);
    }
    if sets.is_empty() {
        return Err("no parameter sets (one JSON object per line)".into());
    }
    Ok(sets)
}

/// Submits a job; with `wait`, follows it to its end and exits as `job wait` does.
pub async fn submit(
    client: &mut Client,
    request: pb::SubmitJobRequest,
    wait: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let submitted = client.submit_job(request).await.map_err(rpc)?.into_inner();
    if !wait {
        match format {
            Format::Text => show::line(&submitted.job_id)?,
            Format::Json => show::json(&json::JobSubmitted {
                job_id: submitted.job_id,
                task_count: submitted.task_count,
                first_task_id: submitted.first_task_id,
                existed: submitted.existed,
            })?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let live = format == Format::Text && std::io::stderr().is_terminal();
    let job = wait_for(client, &submitted.job_id, live).await?;
    finish(client, &job, format).await
}

/// Arguments of `corral jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Only this tenant's jobs.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// At most this many jobs (oldest first); 0 for all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    format: FormatArg,
}

/// `corral job ...`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Show one job: its tasks counted by state.
    Get(JobIdArgs),
    /// Wait for a job to end, with a progress bar on a terminal; exit 0 when every task
    /// finished, 140 when some did not (summarised), 135 when it was killed.
    Wait(JobIdArgs),
    /// Kill every task of a job that has not ended, and wait (up to 10s) until they stopped.
    Kill(JobIdArgs),
    /// One row per task: index, params, state, outcome, exit code, fuel, wall time, peak
    /// memory and result (its stdout, parsed when it is one JSON object).
    Results(ResultsArgs),
}

/// A job id and the usual flags.
#[derive(Args, Debug)]
pub struct JobIdArgs {
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
    /// The job's id (j-42).
    #[arg(value_name = "ID")]
    id: String,
}

/// How `job results` prints its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header, then a row per task: a column per parameter and per key of the results.
    Csv,
    /// One JSON array.
    Json,
}

/// Arguments of `corral job results`.
#[derive(Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ResultsFormat::Jsonl)]
    format: ResultsFormat,
    /// Also write each task's stdout and stderr to DIR/<index>/stdout and stderr, and its
    /// output files under DIR/<index>/files/.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// The job's id (j-42).
    #[arg(value_name = "ID")]
    id: String,
}

/// Jobs fetched per page.
const PAGE: usize = 1000;

pub async fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page_size = match args.limit {
            0 => PAGE,
            n => (n - all.len()).min(PAGE),
        };
        let page = client
            .list_jobs(pb::ListJobsRequest {
                tenant: args.tenant.clone().unwrap_or_default(),
                page_size: u32::try_from(page_size).unwrap_or(u32::MAX),
                page_token: token,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        all.extend(page.jobs);
        token = page.next_page_token;
        if token.is_empty() || (args.limit > 0 && all.len() >= args.limit) {
            break;
        }
    }
    match args.format.format {
        Format::Json => show::json(&all.iter().map(json::Job::from).collect::<Vec<_>>())?,
        Format::Text => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|j| {
                    let shown = json::Job::from(j);
                    let c = &shown.counts;
                    vec![
                        shown.id.clone(),
                        show::dash(&shown.name),
                        shown.state.to_string(),
                        shown.task_count.to_string(),
                        c.pending.to_string(),
                        (c.assigned + c.running).to_string(),
                        c.finished.to_string(),
                        (c.failed + c.lost).to_string(),
                        c.killed.to_string(),
                        show::age(shown.created_at_ms),
                    ]
                })
                .collect();
            show::table(
                &[
                    "ID", "NAME", "STATE", "TASKS", "PENDING", "RUNNING", "FINISHED", "FAILED",
                    "KILLED", "AGE",
                ],
                &rows,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job(command: JobCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::Get(args) => {
            let mut client = connect(&args.host).await?;
            let job = get(&mut client, &args.id).await?;
            print_job(&job, args.format.format)?;
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Wait(args) => {
            let mut client = connect(&args.host).await?;
            let live = args.format.format == Format::Text && std::io::stderr().is_terminal();
            let job = wait_for(&mut client, &args.id, live).await?;
            finish(&mut client, &job, args.format.format).await
        }
        JobCommand::Kill(args) => {
            let mut client = connect(&args.host).await?;
            let job = client
                .kill_job(pb::KillJobRequest {
                    job_id: args.id.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let job = match running(&job) {
                false => job,
                true => tokio::time::timeout(KILL_WAIT, wait_for(&mut client, &args.id, false))
                    .await
                    .map_err(|_| {
                        anyhow!("job {} did not stop within 10s of the kill", args.id)
                    })??,
            };
            match args.format.format {
                Format::Text => show::line(&format!("{} {}", job.id, job_state_name(job.state)))?,
                Format::Json => show::json(&json::Job::from(&job))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Results(args) => results(args).await,
    }
}

async fn get(client: &mut Client, id: &str) -> anyhow::Result<pb::Job> {
    Ok(client
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .map_err(rpc)?
        .into_inner())
}

fn running(job: &pb::Job) -> bool {
    job.state == pb::JobState::Running as i32
}

fn print_job(job: &pb::Job, format: Format) -> anyhow::Result<()> {
    let shown = json::Job::from(job);
    match format {
        Format::Json => show::json(&shown)?,
        Format::Text => show::fields(&shown)?,
    }
    Ok(())
}

/// Looks at the job until it has ended, more slowly as it goes on (up to [`POLL_MAX`] apart),
/// with a progress bar on stderr when `live`; a host that cannot be reached is waited for, up
/// to [`UNREACHABLE_FOR`].
pub async fn wait_for(client: &mut Client, id: &str, live: bool) -> anyhow::Result<pb::Job> {
    let bar = live.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} ended ({elapsed}) {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(id.to_string());
        bar
    });
    let mut pause = Duration::from_millis(5);
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let job = match client
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
        {
            Ok(job) => {
                unreachable_since = None;
                job.into_inner()
            }
            // A host restarting, or reopening its store, answers again soon: wait for it.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    return Err(rpc(status));
                }
                tokio::time::sleep(POLL_MAX).await;
                continue;
            }
            Err(status) => return Err(rpc(status)),
        };
        if let Some(bar) = &bar {
            let shown = json::Job::from(&job);
            let c = &shown.counts;
            bar.set_length(u64::from(job.task_count));
            bar.set_position(u64::from(shown.ended));
            bar.set_message(format!(
                "{} finished, {} failed, {} running, {} pending",
                c.finished,
                c.failed + c.lost,
                c.assigned + c.running,
                c.pending
            ));
        }
        if !running(&job) {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(job);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Prints an ended job's summary on stderr (or its JSON on stdout) and answers its exit
/// status: 0 when every task finished, [`exit::JOB_FAILED`] when some did not, and
/// [`exit::KILLED`] when it was killed.
async fn finish(client: &mut Client, job: &pb::Job, format: Format) -> anyhow::Result<ExitCode> {
    let status = match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Finished) => 0,
        Ok(pb::JobState::Killed) => exit::KILLED,
        _ => exit::JOB_FAILED,
    };
    if format == Format::Json {
        show::json(&json::Job::from(job))?;
        return Ok(ExitCode::from(status));
    }
    let shown = json::Job::from(job);
    let c = &shown.counts;
    let counts: Vec<String> = [
        ("finished", c.finished),
        ("failed", c.failed),
        ("lost", c.lost),
        ("killed", c.killed),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{n} {name}"))
    .collect();
    let mut text = format!(
        "corral: {} {} {} tasks: {} fuel_used={}",
        job.id,
        shown.state,
        job.task_count,
        counts.join(", "),
        job.fuel_used
    );
    if !job.reason.is_empty() {
        text.push_str(&format!(" reason={:?}", job.reason));
    }
    // The first few that failed, and why.
    if status == exit::JOB_FAILED {
        for state in [pb::TaskState::Failed, pb::TaskState::Lost] {
            let failed = client
                .list_tasks(pb::ListTasksRequest {
                    job_id: job.id.clone(),
                    state: state as i32,
                    page_size: 5,
                    ..Default::default()
                })
                .await
                .map_err(rpc)?
                .into_inner();
            for task in &failed.tasks {
                text.push_str(&format!(
                    "\n  {} (index {}) {}: {}",
                    task.id,
                    task.job_index,
                    super::state_name(task.state),
                    task.reason
                ));
            }
        }
    }
    let mut err = std::io::stderr().lock();
    show::ignore_closed_pipe(writeln!(err, "{text}"))?;
    Ok(ExitCode::from(status))
}

async fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let mut stream = client
        .job_results(pb::JobResultsRequest {
            job_id: args.id.clone(),
            full: args.save.is_some(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut rows = Vec::new();
    let mut params: Vec<String> = Vec::new();
    while let Some(result) = stream.message().await.map_err(rpc)? {
        let Some(task) = result.task else { continue };
        if let (Some(dir), Some(output)) = (&args.save, &result.output) {
            save(dir, task.job_index, output)?;
        }
        for p in &task.params {
            if !params.contains(&p.name) {
                params.push(p.name.clone());
            }
        }
        let row = json::ResultRow::new(&task, result.output.as_ref());
        match args.format {
            ResultsFormat::Jsonl => show::json(&row)?,
            _ => rows.push(row),
        }
    }
    match args.format {
        ResultsFormat::Jsonl => {}
        ResultsFormat::Json => show::json(&rows)?,
        ResultsFormat::Csv => {
            let mut out = Vec::new();
            write_csv(&mut out, &params, &rows)?;
            show::ignore_closed_pipe(show::raw(&out))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes one task's stdout, stderr and output files under `dir/<index>/`.
fn save(dir: &Path, index: u32, output: &pb::TaskOutput) -> anyhow::Result<()> {
    let base = dir.join(index.to_string());
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let path = base.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let files = base.join("files");
    for file in &output.files {
        let path = match inside(&files, &file.path) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("corral: task {index}: {e}");
                continue;
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, &file.data)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The rows as CSV: `index`, `task_id`, a column per parameter (`param.<name>` for one named
/// as a column of the task's own), the task's figures, then a `result.<key>` column per key of
/// the results that are JSON objects (in the order first seen), and `result` for those that
/// are not.
fn write_csv(
    out: &mut impl Write,
    params: &[String],
    rows: &[json::ResultRow],
) -> anyhow::Result<()> {
    let mut keys: Vec<String> = Vec::new();
    let mut text_results = false;
    for row in rows {
        match &row.result {
            serde_json::Value::Object(fields) => {
                for key in fields.keys() {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
            serde_json::Value::Null => {}
            _ => text_results = true,
        }
    }
    const FIGURES: [&str; 6] = [
        "state",
        "outcome",
        "exit_code",
        "fuel_used",
        "wall_ms",
        "peak_memory_bytes",
    ];
    let mut writer = csv::Writer::from_writer(out);
    let mut header: Vec<String> = vec!["index".into(), "task_id".into()];
    // A parameter named as one of the task's own columns is told apart.
    header.extend(params.iter().map(|p| {
        match ["index", "task_id", "result"].contains(&p.as_str()) || FIGURES.contains(&p.as_str())
        {
            true => format!("param.{p}"),
            false => p.clone(),
        }
    }));
    header.extend(FIGURES.map(String::from));
    header.extend(keys.iter().map(|k| format!("result.{k}")));
    if text_results {
        header.push("result".into());
    }
    writer.write_record(&header)?;
    let cell = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    for row in rows {
        let mut record = vec![row.index.to_string(), row.task_id.clone()];
        for name in params {
            let value = row.params.0.iter().find(|(n, _)| n == name);
            record.push(value.map(|(_, v)| v.clone()).unwrap_or_default());
        }
        record.push(row.state.to_string());
        record.push(row.outcome.clone().unwrap_or_default());
        record.push(row.exit_code.map(|c| c.to_string()).unwrap_or_default());
        record.push(row.fuel_used.to_string());
        record.push(row.wall_ms.to_string());
        record.push(row.peak_memory_bytes.to_string());
        let fields = row.result.as_object();
        for key in &keys {
            record.push(cell(fields.and_then(|f| f.get(key))));
        }
        if text_results {
            record.push(match &row.result {
                serde_json::Value::String(s) => s.clone(),
                _ => String::new(),
            });
        }
        writer.write_record(&record)?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse_name_and_values() {
        let s = parse_sweep("lr=0.1,0.01").unwrap();
        assert_eq!(s.0.name, "lr");
        assert_eq!(s.0.values, ["0.1", "0.01"]);
        // A value may hold `=`; only the first splits.
        assert_eq!(parse_sweep("x=a=b").unwrap().0.values, ["a=b"]);
        assert!(parse_sweep("lr").unwrap_err().contains("no ="));
        assert!(parse_sweep("=1,2")
            .unwrap_err()
            .contains("names no parameter"));
    }

    #[test]
    fn parameter_files_are_json_lines_of_scalars_kept_as_text() {
        // In the order written, not sorted.
        let sets =
            parse_params("{\"lr\": 0.05, \"name\": \"a\", \"on\": true}\n\n{\"z\": 1, \"a\": 2}\n")
                .unwrap();
        let shown: Vec<Vec<(String, String)>> = sets
            .iter()
            .map(|s| {
                s.params
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect()
            })
            .collect();
        assert_eq!(
            shown,
            [
                vec![
                    ("lr".to_string(), "0.05".to_string()),
                    ("name".into(), "a".into()),
                    ("on".into(), "true".into())
                ],
                vec![("z".into(), "1".into()), ("a".into(), "2".into())]
            ]
        );
        assert!(parse_params("{\"a\": [1]}").unwrap_err().contains("line 1"));
        assert!(parse_params("{}\nnot json").unwrap_err().contains("line 2"));
        assert!(parse_params("{\"a\": 1, \"a\": 2}")
            .unwrap_err()
            .contains("a is given twice"));
        assert!(parse_params("\n")
            .unwrap_err()
            .contains("no parameter sets"));
    }

    #[test]
    fn csv_has_a_column_per_parameter_and_result_key_and_quotes_what_needs_it() {
        let task = |index: u32, lr: &str| pb::Task {
            id: format!("t-{}", index + 1),
            state: pb::TaskState::Finished as i32,
            job_id: "j-1".into(),
            job_index: index,
            params: vec![pb::Param {
                name: "lr".into(),
                value: lr.into(),
            }],
            ..Default::default()
        };
        let output = |stdout: &str| pb::TaskOutput {
            stdout: bytes::Bytes::from(stdout.to_string()),
            ..Default::default()
        };
        let rows = vec![
            json::ResultRow::new(
                &task(0, "0.1"),
                Some(&output("{\"acc\": 0.9, \"note\": \"a, b\"}\n")),
            ),
            json::ResultRow::new(&task(1, "0.2"), Some(&output("plain \"text\""))),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &["lr".into()], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "index,task_id,lr,state,outcome,exit_code,fuel_used,wall_ms,peak_memory_bytes,\
             result.acc,result.note,result"
        );
        assert_eq!(lines[1], "0,t-1,0.1,FINISHED,,,0,0,0,0.9,\"a, b\",");
        assert_eq!(
            lines[2],
            "1,t-2,0.2,FINISHED,,,0,0,0,,,\"plain \"\"text\"\"\""
        );
    }
}
