//! `corral tasks`: tasks in id order, filtered, as a table or JSON.

use std::process::ExitCode;

use clap::Args;
use corral_proto::pb;

use super::{connect, json, parse_state, rpc, state_name, Failure};
use crate::args::{parse_label, Format, FormatArg, HostArg};
use crate::{exit, show};

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
    /// Only this job's tasks (j-42).
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
    /// At most this many tasks (oldest first); 0 for all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    format: FormatArg,
}

/// Tasks fetched per page.
const PAGE: usize = 1000;

pub async fn tasks(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let state = match &args.state {
        Some(s) => parse_state(s).map_err(|message| Failure {
            message,
            status: exit::USAGE,
        })? as i32,
        None => 0,
    };
    let mut client = connect(&args.host).await?;
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page_size = match args.limit {
            0 => PAGE,
            n => (n - all.len()).min(PAGE),
        };
        let page = client
            .list_tasks(pb::ListTasksRequest {
                state,
                name: args.name.clone().unwrap_or_default(),
                labels: args.labels.iter().cloned().collect(),
                tenant: args.tenant.clone().unwrap_or_default(),
                job_id: args.job.clone().unwrap_or_default(),
                page_size: u32::try_from(page_size).unwrap_or(u32::MAX),
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
    match args.format.format {
        Format::Json => show::json(&all.iter().map(json::Task::from).collect::<Vec<_>>())?,
        Format::Text => {
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|t| {
                    let spec = t.spec.clone().unwrap_or_default();
                    vec![
                        t.id.clone(),
                        show::dash(&spec.name),
                        state_name(t.state).to_string(),
                        show::dash(&t.agent_id),
                        show::dash(&t.partition_id),
                        t.fuel_used.to_string(),
                        show::age(t.created_at_ms),
                    ]
                })
                .collect();
            show::table(
                &["ID", "NAME", "STATE", "AGENT", "PARTITION", "FUEL", "AGE"],
                &rows,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
