//! `corral tenant set|reset|list`: tenants' weights, guarantees, limits and usage.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use corral_proto::pb;
use serde::Serialize;

use super::{connect, rpc};
use crate::args::{parse_size, Format, FormatArg, HostArg};
use crate::show;

/// `corral tenant ...`.
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Change a tenant's settings (admin): the flags given; the rest are kept. Stored, effective
    /// at once, and preferred to the config file's for that tenant.
    Set(Box<SetArgs>),
    /// Forget what `tenant set` stored for a tenant (admin): the config file's settings, or
    /// the defaults, apply again.
    Reset(ResetArgs),
    /// List tenants: settings, where they come from, what each holds and has waiting, and the
    /// fuel it spent in its window and has left of its budget (a tenant token sees its own
    /// tenant only).
    List(ListArgs),
}

/// Arguments of `corral tenant set`.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// The tenant.
    name: String,
    /// Its weight in fair sharing (above 0): twice the weight, twice the share.
    #[arg(long, value_name = "W")]
    weight: Option<f64>,
    /// Slots it gets first, as they free, while it has work.
    #[arg(long, value_name = "N")]
    guarantee_slots: Option<u32>,
    /// Memory it gets first while it has work (`8GiB`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    guarantee_memory: Option<u64>,
    /// The most slots it may hold at once, or `none`.
    #[arg(long, value_name = "N|none", value_parser = parse_limit_slots)]
    limit_slots: Option<Limit<u32>>,
    /// The most memory it may hold at once (`64GiB`), or `none`.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_limit_memory)]
    limit_memory: Option<Limit<u64>>,
    /// The most tasks it may have waiting; a submit past it is refused.
    #[arg(long, value_name = "N")]
    max_queued: Option<u64>,
    /// The most fuel its tasks may spend in any window of PERIOD (`10000000000000/1h`), or
    /// `none`.
    #[arg(long, value_name = "FUEL/PERIOD|none", value_parser = parse_budget)]
    fuel_budget: Option<Limit<(u64, u64)>>,
    /// The largest fuel limit a task submitted with the tenant's own token may ask for, or
    /// `none`.
    #[arg(long, value_name = "N|none", value_parser = parse_limit_count)]
    max_task_fuel: Option<Limit<u64>>,
    /// The largest memory such a task may ask for (`2GiB`), or `none`.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_limit_memory)]
    max_task_memory: Option<Limit<u64>>,
    /// The longest timeout such a task may ask for (`10m`), or `none`.
    #[arg(long, value_name = "DURATION|none", value_parser = parse_limit_duration)]
    max_task_timeout: Option<Limit<u64>>,
    /// The largest module (binary form) its tasks may run (`8MiB`), or `none`. Checked at
    /// its uploads and submits.
    #[arg(long, value_name = "SIZE|none", value_parser = parse_limit_memory)]
    max_module_size: Option<Limit<u64>>,
    /// The only imports its modules may use, comma-separated patterns
    /// (`wasi_snapshot_preview1::fd_*,corral::*`), or `all`.
    #[arg(long, value_name = "PATTERNS|all", value_parser = parse_allowed)]
    allow_imports: Option<Limit<Patterns>>,
    /// Imports its modules may not use, whatever is allowed: comma-separated patterns
    /// (`wasi_snapshot_preview1::path_*,wasi_snapshot_preview1::sock_*`), or `none`.
    #[arg(long, value_name = "PATTERNS|none", value_parser = parse_denied)]
    deny_imports: Option<Patterns>,
    /// Bytes its uploaded inputs may take in the host's store (`50GiB`; default 10 GiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::args::parse_size)]
    max_input_storage: Option<u64>,
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

/// A limit as given: a value, or `none`.
#[derive(Clone, Copy, Debug)]
pub struct Limit<T>(Option<T>);

/// Import patterns, given comma-separated (checked by the host, which names a bad one).
#[derive(Clone, Debug, Default)]
pub struct Patterns(Vec<String>);

impl Patterns {
    fn parse(arg: &str) -> Patterns {
        Patterns(
            arg.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
        )
    }
}

fn parse_allowed(arg: &str) -> Result<Limit<Patterns>, String> {
    match arg {
        "all" => Ok(Limit(None)),
        list => Ok(Limit(Some(Patterns::parse(list)))),
    }
}

fn parse_denied(arg: &str) -> Result<Patterns, String> {
    match arg {
        "none" => Ok(Patterns::default()),
        list => Ok(Patterns::parse(list)),
    }
}

fn parse_limit_slots(arg: &str) -> Result<Limit<u32>, String> {
    match arg {
        "none" => Ok(Limit(None)),
        n => n
            .parse()
            .map(|n| Limit(Some(n)))
            .map_err(|_| format!("{n:?} is neither a number of slots nor \"none\"")),
    }
}

/// `FUEL/PERIOD` as (fuel, period in ms).
fn parse_budget(arg: &str) -> Result<Limit<(u64, u64)>, String> {
    if arg == "none" {
        return Ok(Limit(None));
    }
    let bad = || format!("{arg:?} is not a fuel budget like 10000000000000/1h, nor \"none\"");
    let (fuel, period) = arg.split_once('/').ok_or_else(bad)?;
    let fuel = fuel.replace('_', "").parse::<u64>().map_err(|_| bad())?;
    let period = humantime::parse_duration(period).map_err(|_| bad())?;
    let ms = u64::try_from(period.as_millis()).map_err(|_| bad())?;
    Ok(Limit(Some((fuel, ms))))
}

fn parse_limit_count(arg: &str) -> Result<Limit<u64>, String> {
    match arg {
        "none" => Ok(Limit(None)),
        n => n
            .replace('_', "")
            .parse()
            .map(|n| Limit(Some(n)))
            .map_err(|_| format!("{n:?} is neither a number nor \"none\"")),
    }
}

/// A duration in milliseconds, or `none`.
fn parse_limit_duration(arg: &str) -> Result<Limit<u64>, String> {
    match arg {
        "none" => Ok(Limit(None)),
        d => humantime::parse_duration(d)
            .map_err(|e| format!("{d:?} is neither a duration (like 10m) nor \"none\": {e}"))
            .and_then(|d| u64::try_from(d.as_millis()).map_err(|e| e.to_string()))
            .map(|ms| Limit(Some(ms))),
    }
}

fn parse_limit_memory(arg: &str) -> Result<Limit<u64>, String> {
    match arg {
        "none" => Ok(Limit(None)),
        size => parse_size(size).map(|m| Limit(Some(m))),
    }
}

/// Arguments of `corral tenant reset`.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// The tenant.
    name: String,
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

/// Arguments of `corral tenant list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    host: HostArg,
    #[command(flatten)]
    format: FormatArg,
}

/// A tenant (`tenant list -o json`).
#[derive(Serialize)]
struct Tenant {
    tenant: String,
    source: String,
    weight: f64,
    guarantee_slots: u32,
    guarantee_memory_bytes: u64,
    limit_slots: Option<u32>,
    limit_memory_bytes: Option<u64>,
    max_queued: u64,
    held_slots: u32,
    held_memory_bytes: u64,
    queued: u64,
    dominant_share: f64,
    fuel_budget: Option<u64>,
    fuel_budget_period_ms: Option<u64>,
    fuel_window_ms: u64,
    fuel_used_in_window: u64,
    fuel_held: u64,
    fuel_left: Option<u64>,
    fuel_used_total: u64,
    max_task_fuel: Option<u64>,
    max_task_memory_bytes: Option<u64>,
    max_task_timeout_ms: Option<u64>,
    max_module_bytes: Option<u64>,
    allowed_imports: Option<Vec<String>>,
    denied_imports: Vec<String>,
    max_input_storage_bytes: Option<u64>,
}

impl From<&pb::TenantView> for Tenant {
    fn from(v: &pb::TenantView) -> Self {
        let s = v.settings.clone().unwrap_or_default();
        Tenant {
            tenant: v.tenant.clone(),
            source: v.source.clone(),
            weight: s.weight,
            guarantee_slots: s.guarantee_slots,
            guarantee_memory_bytes: s.guarantee_memory_bytes,
            limit_slots: s.limit_slots,
            limit_memory_bytes: s.limit_memory_bytes,
            max_queued: s.max_queued,
            held_slots: v.held_slots,
            held_memory_bytes: v.held_memory_bytes,
            queued: v.queued,
            dominant_share: v.dominant_share,
            fuel_budget: s.fuel_budget,
            fuel_budget_period_ms: s.fuel_budget.map(|_| s.fuel_budget_period_ms),
            fuel_window_ms: v.fuel_window_ms,
            fuel_used_in_window: v.fuel_used_in_window,
            fuel_held: v.fuel_held,
            fuel_left: v.fuel_left,
            fuel_used_total: v.fuel_used_total,
            max_task_fuel: s.max_task_fuel,
            max_task_memory_bytes: s.max_task_memory_bytes,
            max_task_timeout_ms: s.max_task_timeout_ms,
            max_module_bytes: s.max_module_bytes,
            allowed_imports: s.allowed_imports.map(|a| a.patterns),
            denied_imports: s.denied_imports,
            max_input_storage_bytes: s.max_input_storage_bytes,
        }
    }
}

pub async fn tenant(command: TenantCommand) -> anyhow::Result<ExitCode> {
    match command {
        TenantCommand::Set(args) => {
            let request = pb::SetTenantRequest {
                tenant: args.name,
                weight: args.weight,
                guarantee_slots: args.guarantee_slots,
                guarantee_memory_bytes: args.guarantee_memory,
                set_limit_slots: args.limit_slots.is_some(),
                limit_slots: args.limit_slots.and_then(|l| l.0),
                set_limit_memory: args.limit_memory.is_some(),
                limit_memory_bytes: args.limit_memory.and_then(|l| l.0),
                max_queued: args.max_queued,
                set_fuel_budget: args.fuel_budget.is_some(),
                fuel_budget: args.fuel_budget.and_then(|b| b.0).map(|b| b.0),
                fuel_budget_period_ms: args.fuel_budget.and_then(|b| b.0).map_or(0, |b| b.1),
                set_max_task_fuel: args.max_task_fuel.is_some(),
                max_task_fuel: args.max_task_fuel.and_then(|l| l.0),
                set_max_task_memory: args.max_task_memory.is_some(),
                max_task_memory_bytes: args.max_task_memory.and_then(|l| l.0),
                set_max_task_timeout: args.max_task_timeout.is_some(),
                max_task_timeout_ms: args.max_task_timeout.and_then(|l| l.0),
                set_max_module: args.max_module_size.is_some(),
                max_module_bytes: args.max_module_size.and_then(|l| l.0),
                set_allowed_imports: args.allow_imports.is_some(),
                allowed_imports: args
                    .allow_imports
                    .and_then(|l| l.0)
                    .map(|p| pb::ImportPatterns { patterns: p.0 }),
                set_denied_imports: args.deny_imports.is_some(),
                denied_imports: args.deny_imports.unwrap_or_default().0,
                max_input_storage_bytes: args.max_input_storage,
                reset: false,
            };
            set(request, &args.host, args.format.format).await
        }
        TenantCommand::Reset(args) => {
            let request = pb::SetTenantRequest {
                tenant: args.name,
                reset: true,
                ..Default::default()
            };
            set(request, &args.host, args.format.format).await
        }
        TenantCommand::List(args) => {
            let mut client = connect(&args.host).await?;
            let tenants = client
                .list_tenants(pb::ListTenantsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .tenants;
            show_tenants(
                &tenants.iter().map(Tenant::from).collect::<Vec<_>>(),
                args.format.format,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set(
    request: pb::SetTenantRequest,
    host: &HostArg,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut client = connect(host).await?;
    let view = client.set_tenant(request).await.map_err(rpc)?.into_inner();
    show_tenants(&[Tenant::from(&view)], format)?;
    Ok(ExitCode::SUCCESS)
}

/// What one task of the tenant's own token may ask for: `fuel=N,memory=SIZE,timeout=D`.
fn task_caps(t: &Tenant) -> String {
    let mut caps = Vec::new();
    if let Some(n) = t.max_task_fuel {
        caps.push(format!("fuel={n}"));
    }
    if let Some(m) = t.max_task_memory_bytes {
        caps.push(format!("memory={}", show::size(m)));
    }
    if let Some(ms) = t.max_task_timeout_ms {
        caps.push(format!("timeout={}", period(ms)));
    }
    if let Some(m) = t.max_module_bytes {
        caps.push(format!("module={}", show::size(m)));
    }
    if let Some(m) = t.max_input_storage_bytes {
        caps.push(format!("inputs={}", show::size(m)));
    }
    match caps.is_empty() {
        true => "-".into(),
        false => caps.join(","),
    }
}

/// The imports its modules may use: `allow=P,P deny=P`, or `-` for every one.
fn import_rules(t: &Tenant) -> String {
    let mut rules = Vec::new();
    if let Some(allowed) = &t.allowed_imports {
        match allowed.is_empty() {
            true => rules.push("allow=nothing".to_string()),
            false => rules.push(format!("allow={}", allowed.join(","))),
        }
    }
    if !t.denied_imports.is_empty() {
        rules.push(format!("deny={}", t.denied_imports.join(",")));
    }
    match rules.is_empty() {
        true => "-".into(),
        false => rules.join(" "),
    }
}

/// A period as the budget's syntax writes it (`1h`).
fn period(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

fn show_tenants(tenants: &[Tenant], format: Format) -> std::io::Result<()> {
    match format {
        Format::Json => show::json(&tenants),
        Format::Text => {
            let limit = |slots: Option<u32>, memory: Option<u64>| match (slots, memory) {
                (None, None) => "-".to_string(),
                (s, m) => format!(
                    "{}/{}",
                    s.map_or("-".into(), |s| s.to_string()),
                    m.map_or("-".into(), show::size)
                ),
            };
            let rows: Vec<Vec<String>> = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.tenant.clone(),
                        t.source.clone(),
                        format!("{}", t.weight),
                        format!(
                            "{}/{}",
                            t.guarantee_slots,
                            show::size(t.guarantee_memory_bytes)
                        ),
                        limit(t.limit_slots, t.limit_memory_bytes),
                        format!("{}/{}", t.held_slots, show::size(t.held_memory_bytes)),
                        format!("{}/{}", t.queued, t.max_queued),
                        format!("{:.3}", t.dominant_share),
                        match (t.fuel_budget, t.fuel_budget_period_ms) {
                            (Some(fuel), Some(ms)) => format!("{fuel}/{}", period(ms)),
                            _ => "-".into(),
                        },
                        format!("{}/{}", t.fuel_used_in_window, period(t.fuel_window_ms)),
                        t.fuel_left.map_or("-".into(), |f| f.to_string()),
                        task_caps(t),
                        import_rules(t),
                    ]
                })
                .collect();
            show::table(
                &[
                    "TENANT",
                    "SOURCE",
                    "WEIGHT",
                    "GUARANTEE",
                    "LIMIT",
                    "HOLDS",
                    "QUEUED",
                    "SHARE",
                    "FUEL_BUDGET",
                    "FUEL_USED",
                    "FUEL_LEFT",
                    "TASK_CAPS",
                    "IMPORTS",
                ],
                &rows,
            )
        }
    }
}
