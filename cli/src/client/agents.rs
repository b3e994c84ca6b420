//! `corral agents` and `corral partitions`: the cluster's capacity.

use std::process::ExitCode;

use clap::Args;
use corral_proto::pb;

use super::{connect, json, rpc};
use crate::args::{Format, FormatArg, HostArg};
use crate::show;

/// Arguments of `corral agents` and `corral partitions`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

pub async fn agents(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let agents = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .agents;
    let agents: Vec<json::Agent> = agents.iter().map(json::Agent::from).collect();
    match args.format.format {
        Format::Json => show::json(&agents)?,
        Format::Text => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    let labels: Vec<String> =
                        a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        a.id.clone(),
                        a.state.clone(),
                        a.slots.to_string(),
                        show::size(a.memory_bytes),
                        a.running.to_string(),
                        show::dash(&labels.join(",")),
                        show::age(a.last_seen_ms),
                    ]
                })
                .collect();
            show::table(
                &[
                    "ID",
                    "STATE",
                    "SLOTS",
                    "MEMORY",
                    "RUNNING",
                    "LABELS",
                    "LAST_SEEN",
                ],
                &rows,
            )?;
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
    let partitions: Vec<json::Partition> = partitions.iter().map(json::Partition::from).collect();
    match args.format.format {
        Format::Json => show::json(&partitions)?,
        Format::Text => {
            let rows: Vec<Vec<String>> = partitions
                .iter()
                .map(|p| {
                    let mut reserved: Vec<String> =
                        p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    if let Some(tenant) = &p.tenant {
                        reserved.insert(0, format!("tenant={tenant}"));
                    }
                    if p.reserved_for_other {
                        reserved.insert(0, "another tenant".into());
                    }
                    vec![
                        p.id.clone(),
                        p.state.clone(),
                        format!("{}/{}", p.allocated_slots, p.slots),
                        format!(
                            "{}/{}",
                            show::size(p.allocated_memory_bytes),
                            show::size(p.memory_bytes)
                        ),
                        show::dash(&reserved.join(",")),
                    ]
                })
                .collect();
            show::table(&["ID", "STATE", "SLOTS", "MEMORY", "RESERVED"], &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
