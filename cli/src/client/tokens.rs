//! `corral token create|list|revoke` and `corral audit`: admin tokens only.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use corral_proto::pb;

use super::{connect, json, rpc};
use crate::args::{parse_duration, Format, FormatArg, HostArg};
use crate::show;

/// A token's role, as `--role` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything, every tenant, tokens and the audit log.
    Admin,
    /// The client API as one tenant (--tenant).
    Tenant,
    /// A join token: registers new agents.
    Agent,
}

/// `corral token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once, alone on the last line of stdout.
    Create(CreateArgs),
    /// List the tokens: ACCESSOR ROLE TENANT/AGENT CREATED EXPIRES LAST_USED STATE (never
    /// secrets).
    List(ListArgs),
    /// Revoke a token at once: its calls are refused and its open streams end.
    Revoke(RevokeArgs),
}

/// Arguments of `corral token create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// What it may do.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// The tenant a tenant token acts for.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// It stops working after this long (`30d`, `12h`) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires: Option<Duration>,
    /// What it is for.
    #[arg(long, value_name = "TEXT", default_value = "")]
    description: String,
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

/// Arguments of `corral token list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

/// Arguments of `corral token revoke`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The token's accessor (`corral token list` shows them).
    accessor: String,
    #[command(flatten)]
    host: HostArg,
}

/// Arguments of `corral audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Entries after this seq [default: from the oldest kept].
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    after: u64,
    /// Most entries shown.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    limit: u32,
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

pub async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => create(args).await,
        TokenCommand::List(args) => list(args).await,
        TokenCommand::Revoke(args) => revoke(args).await,
    }
}

fn time(ms: i64) -> String {
    match ms {
        0 => "-".into(),
        ms => {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            humantime::format_rfc3339_seconds(at).to_string()
        }
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let role = match args.role {
        RoleArg::Admin => pb::Role::Admin,
        RoleArg::Tenant => pb::Role::Tenant,
        RoleArg::Agent => pb::Role::Agent,
    };
    if (role == pb::Role::Tenant) != args.tenant.is_some() {
        return Err(super::Failure {
            message: "--tenant NAME goes with --role tenant, and only with it".into(),
            status: crate::exit::USAGE,
        }
        .into());
    }
    let mut client = connect(&args.host).await?;
    let created = client
        .create_token(pb::CreateTokenRequest {
            role: role as i32,
            tenant: args.tenant.unwrap_or_default(),
            expires_in_ms: args
                .expires
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            description: args.description,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let info = json::Token::from(&created.info.unwrap_or_default());
    match args.format.format {
        Format::Json => show::json(&json::Created {
            info,
            token: created.token,
        })?,
        Format::Text => {
            let whose = info
                .tenant
                .as_ref()
                .map(|t| format!(" for tenant {t}"))
                .unwrap_or_default();
            show::line(&format!(
                "{} token {}{whose}, expires {}; it is shown this once:",
                info.role,
                info.accessor,
                info.expires_ms.map_or("never".into(), time)
            ))?;
            show::line(&created.token)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let tokens = client
        .list_tokens(pb::ListTokensRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .tokens;
    let tokens: Vec<json::Token> = tokens.iter().map(json::Token::from).collect();
    match args.format.format {
        Format::Json => show::json(&tokens)?,
        Format::Text => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let state = match (t.revoked_ms, t.expires_ms) {
                        (Some(_), _) => "revoked",
                        (None, Some(at)) if at <= now => "expired",
                        _ => "active",
                    };
                    vec![
                        t.accessor.clone(),
                        t.role.clone(),
                        show::dash(t.tenant.as_ref().or(t.agent_id.as_ref()).map_or("", |s| s)),
                        time(t.created_ms),
                        time(t.expires_ms.unwrap_or(0)),
                        time(t.last_used_ms.unwrap_or(0)),
                        state.into(),
                        show::dash(&t.description),
                    ]
                })
                .collect();
            show::table(
                &[
                    "ACCESSOR",
                    "ROLE",
                    "TENANT/AGENT",
                    "CREATED",
                    "EXPIRES",
                    "LAST_USED",
                    "STATE",
                    "DESCRIPTION",
                ],
                &rows,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let info = client
        .revoke_token(pb::RevokeTokenRequest {
            accessor: args.accessor,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    show::line(&format!(
        "token {} revoked at {}",
        info.accessor,
        time(info.revoked_at_ms)
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let mut events = Vec::new();
    let mut after = args.after;
    // Paged by the host; a page shorter than asked is the last.
    while events.len() < args.limit as usize {
        let want = (args.limit as usize - events.len()).min(10_000);
        let page = client
            .list_audit(pb::ListAuditRequest {
                after,
                page_size: u32::try_from(want).unwrap_or(u32::MAX),
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .events;
        let done = page.len() < want;
        if let Some(last) = page.last() {
            after = last.seq;
        }
        events.extend(page.iter().map(json::AuditEvent::from));
        if done {
            break;
        }
    }
    match args.format.format {
        Format::Json => show::json(&events)?,
        Format::Text => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        time(e.at_ms),
                        show::dash(&e.accessor),
                        e.action.clone(),
                        e.count.to_string(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            show::table(
                &["SEQ", "TIME", "ACCESSOR", "ACTION", "COUNT", "DETAIL"],
                &rows,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
