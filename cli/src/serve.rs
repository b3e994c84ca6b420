//! The long-running commands: `corral host`, `corral agent`, and `corral dev` (a host and N
//! agents in one process, the embedded default for one machine).
//!
//! `host` and `dev` print `listening on http://ADDR` (`https://` with TLS) as their first line
//! of stdout once they accept connections (with `--listen 127.0.0.1:0`, ADDR has the port
//! picked).
//!
//! On its first start a host makes the first admin token and writes it to
//! `<data-dir>/admin.token` (mode 0600), saying so on stderr; `--reset-admin-token` revokes
//! every admin token and writes a new one there. `corral dev` keeps it at the top of its data
//! dir, with a join token for its agents beside it (`join.token`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use corral_agent::daemon::{self, AgentConfig};
use corral_host::config::HostConfig;
use corral_host::control::ControlPlane;

use crate::args::{parse_label, parse_size, CompileArgs};

/// Arguments of `corral host`.
#[derive(Args, Debug)]
pub struct HostArgs {
    /// Address to serve the client and agent APIs on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Where the host keeps its state (tasks, modules, outputs, agents).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// A TOML config file (see host/host.sample.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Revoke every admin token and write a new one to DATA_DIR/admin.token, then serve.
    #[arg(long)]
    reset_admin_token: bool,
    #[command(flatten)]
    tls: ServerTls,
}

/// TLS of `corral host` and `corral dev`.
#[derive(Args, Debug, Default)]
pub struct ServerTls {
    /// Serve over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require agents to present a client certificate signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS: tokens and tasks cross the network in
    /// the clear.
    #[arg(long)]
    insecure_plaintext: bool,
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl ServerTls {
    /// The TLS to serve `listen` with: none on a non-loopback address is refused unless
    /// `--insecure-plaintext` (then warned about).
    fn load(&self, listen: SocketAddr) -> anyhow::Result<Option<corral_host::api::Tls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if !listen.ip().is_loopback() {
                if !self.insecure_plaintext {
                    anyhow::bail!(
                        "refusing to listen on {listen} without TLS: give --tls-cert and \
                         --tls-key, or --insecure-plaintext to send tokens and tasks in the clear"
                    );
                }
                eprintln!(
                    "corral: warning: serving on {listen} without TLS (--insecure-plaintext): \
                     tokens and tasks cross the network in the clear"
                );
            }
            return Ok(None);
        };
        Ok(Some(corral_host::api::Tls {
            cert: read_pem(cert, "TLS certificate")?,
            key: read_pem(key, "TLS key")?,
            client_ca: match &self.tls_client_ca {
                Some(ca) => Some(read_pem(ca, "client CA")?),
                None => None,
            },
        }))
    }
}

/// What `corral agent` and `corral dev` share about agents.
#[derive(Args, Debug)]
pub struct AgentCapacity {
    /// Tasks run at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    slots: u32,
    /// Memory offered to tasks (their memory caps are reserved from it) [default: 3/4 of this
    /// machine's memory, shared among the agents of `corral dev`].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// A label task constraints can match (`zone=eu-1`); repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    compile: CompileArgs,
    /// Most bytes of modules, and of compiled code, each agent keeps on disk; past it the least
    /// recently used are removed.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = parse_size)]
    cache_size: u64,
}

/// Arguments of `corral agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The host's address.
    #[arg(
        long,
        value_name = "URL",
        env = "CORRAL_HOST",
        default_value = "http://127.0.0.1:7700"
    )]
    host: String,
    #[command(flatten)]
    capacity: AgentCapacity,
    /// Where the agent caches modules and compiled code [default: ~/.local/share/corral/agent].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The agent's id [default: kept in DATA_DIR/agent-id, made from the hostname once].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// A file holding the join token the agent registers with the first time (then it uses
    /// its own credential, kept in DATA_DIR/agent.token) [default: CORRAL_JOIN_TOKEN].
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// The CA that signs the host's certificate, for an https:// host [default: the system's
    /// roots].
    #[arg(long, value_name = "FILE", env = "CORRAL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The agent's client certificate (PEM), for a host that requires mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Arguments of `corral dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Agents to run in this process.
    #[arg(long, value_name = "N", default_value_t = 2)]
    agents: u32,
    /// Address to serve the client and agent APIs on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Where state is kept [default: ~/.local/share/corral/dev].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML host config file (see host/host.sample.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Revoke every admin token and write a new one to DATA_DIR/admin.token.
    #[arg(long)]
    reset_admin_token: bool,
    #[command(flatten)]
    capacity: AgentCapacity,
}

impl AgentArgs {
    /// Guests this agent runs at once, at most.
    pub fn concurrent_runs(&self) -> usize {
        self.capacity.slots as usize
    }
}

impl DevArgs {
    /// Guests the agents of `corral dev` run at once, at most.
    pub fn concurrent_runs(&self) -> usize {
        self.capacity.slots as usize * self.agents as usize
    }
}

fn data_home(sub: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("corral").join(sub)
}

/// Three quarters of this machine's memory, from /proc/meminfo; 8 GiB where it is unknown.
fn machine_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    total.map_or(8 << 30, |t| t / 4 * 3)
}

/// What each of `agents` agents on this machine offers when `--memory` is not given: their
/// share of [`machine_memory`], so that together they promise no memory the machine lacks.
fn default_memory(agents: u32) -> u64 {
    machine_memory() / u64::from(agents.max(1))
}

fn load_config(path: Option<&Path>) -> anyhow::Result<HostConfig> {
    match path {
        Some(path) => HostConfig::load(path).map_err(anyhow::Error::msg),
        None => Ok(HostConfig::default()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// A started host: its URL, its control plane and the serving task.
struct Started {
    url: String,
    plane: ControlPlane,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the control plane and its API, the first admin token written to `admin_token` when
/// there was none (or a new one with `reset`).
async fn start_host(
    listen: SocketAddr,
    data_dir: &Path,
    config: HostConfig,
    tls: Option<corral_host::api::Tls>,
    admin_token: &Path,
    reset: bool,
) -> anyhow::Result<Started> {
    let plane = ControlPlane::start(config, data_dir)
        .with_context(|| format!("cannot start the host with data dir {}", data_dir.display()))?;
    if plane
        .bootstrap_admin(admin_token, reset)
        .await
        .context("cannot make the admin token")?
    {
        eprintln!(
            "corral: {} admin token written to {} (mode 0600); it is not shown anywhere else",
            if reset { "a new" } else { "the first" },
            admin_token.display()
        );
    }
    let listener = corral_host::api::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let serving = plane.clone();
    // On SIGINT or SIGTERM the host stops at once: agents' session streams never end by
    // themselves, so a graceful drain would wait forever, and everything acknowledged is
    // already durable.
    let server = tokio::spawn(async move {
        tokio::select! {
            served = corral_host::api::serve(serving.clone(), listener, tls, std::future::pending()) => {
                served.context("the host's server failed")
            }
            reason = serving.stopped() => Err(anyhow::anyhow!("the host stopped: {reason}")),
            () = shutdown_signal() => Ok(()),
        }
    });
    let url = format!("{scheme}://{addr}");
    println!("listening on {url}");
    Ok(Started { url, plane, server })
}

pub async fn host(args: HostArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let tls = args.tls.load(args.listen)?;
    let admin_token = args.data_dir.join("admin.token");
    let started = start_host(
        args.listen,
        &args.data_dir,
        config,
        tls,
        &admin_token,
        args.reset_admin_token,
    )
    .await?;
    started.server.await?
}

/// An agent's config; without `--memory` it offers its share of the machine among `sharing`
/// agents.
fn agent_config(
    id: String,
    host: String,
    capacity: &AgentCapacity,
    sharing: u32,
    data_dir: PathBuf,
    join_token: Option<String>,
    tls: corral_proto::TlsClient,
) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig {
        address: hostname(),
        id,
        host,
        slots: capacity.slots.max(1),
        memory_bytes: capacity.memory.unwrap_or_else(|| default_memory(sharing)),
        labels: capacity.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        data_dir,
        max_backoff: Duration::from_secs(10),
        resend_interval: AgentConfig::DEFAULT_RESEND_INTERVAL,
        compiler: CompileArgs::compiler()?,
        compile_budget: capacity.compile.budget(),
        max_cache_bytes: capacity.cache_size,
        join_token,
        tls,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The agent id kept in `data_dir/agent-id`, made once from the hostname and a random suffix.
/// A kept id that cannot be read or is not a valid id is an error naming the file: silently
/// making a new identity would leave the old one's tasks to be lost.
fn stored_agent_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("agent-id");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let id = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
            let id = id.trim().to_string();
            if let Some(problem) = corral_proto::agent_id_problem(&id) {
                anyhow::bail!(
                    "{} holds no usable agent id: {problem}; fix it, or remove it to make a new \
                     identity",
                    path.display()
                );
            }
            return Ok(id);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!("cannot read {}: {e}", path.display()));
        }
    }
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    let suffix = &corral_admission::sha256_hex(&sha2_digest(seed.as_bytes()))[..6];
    let id = format!("{}-{suffix}", hostname());
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &id))
        .with_context(|| format!("cannot keep the agent id in {}", path.display()))?;
    Ok(id)
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(|| data_home("agent"));
    let id = match args.id {
        Some(id) => id,
        None => stored_agent_id(&data_dir)?,
    };
    if let Some(problem) = corral_proto::agent_id_problem(&id) {
        anyhow::bail!("{problem}");
    }
    let join_token = match (&args.join_token_file, std::env::var("CORRAL_JOIN_TOKEN")) {
        (Some(file), _) => {
            Some(corral_proto::token::read_secret(file).map_err(anyhow::Error::msg)?)
        }
        (None, Ok(token)) if !token.is_empty() => Some(token),
        (None, _) => None,
    };
    let tls = corral_proto::TlsClient {
        ca: match &args.tls_ca {
            Some(ca) => Some(read_pem(ca, "CA")?),
            None => None,
        },
        identity: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((
                read_pem(cert, "client certificate")?,
                read_pem(key, "client key")?,
            )),
            _ => None,
        },
    };
    let config = agent_config(id, args.host, &args.capacity, 1, data_dir, join_token, tls)?;
    eprintln!(
        "corral agent {} -> {} ({} slots, {})",
        config.id,
        config.host,
        config.slots,
        bytesize::ByteSize::b(config.memory_bytes).display().iec()
    );
    daemon::run(config, shutdown_signal()).await?;
    Ok(())
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(|| data_home("dev"));
    let config = load_config(args.config.as_deref())?;
    // Loopback only: `corral dev` is one machine's cluster.
    let tls = ServerTls::default().load(args.listen)?;
    let Started {
        url: host,
        plane,
        server,
    } = start_host(
        args.listen,
        &data_dir.join("host"),
        config,
        tls,
        &data_dir.join("admin.token"),
        args.reset_admin_token,
    )
    .await?;
    let join_token = dev_join_token(&plane, &data_dir.join("join.token")).await?;
    let mut agents = tokio::task::JoinSet::new();
    for n in 1..=args.agents {
        let id = format!("dev-{n}");
        let dir = data_dir.join("agents").join(&id);
        let config = agent_config(
            id,
            host.clone(),
            &args.capacity,
            args.agents,
            dir,
            Some(join_token.clone()),
            Default::default(),
        )?;
        agents.spawn(daemon::run(config, std::future::pending()));
    }
    eprintln!(
        "corral dev: host on {host} with {} agent(s), state in {}",
        args.agents,
        data_dir.display()
    );
    tokio::select! {
        served = server => served?,
        Some(joined) = agents.join_next() => {
            joined?.context("an agent of `corral dev` failed")?;
            Ok(())
        }
    }
}

/// The join token of `corral dev`'s agents: kept in `path`, made once (a new one if the kept
/// one no longer works).
async fn dev_join_token(plane: &ControlPlane, path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = corral_proto::token::read_secret(path) {
        let accessor = corral_proto::token::parse(&token)
            .map(|p| p.accessor.to_string())
            .unwrap_or_default();
        let now = corral_host::state::Now::current().ms;
        let live = plane
            .tokens()
            .await?
            .iter()
            .any(|t| t.accessor == accessor && t.live(now));
        if live {
            return Ok(token);
        }
    }
    let minted = corral_host::auth::mint(
        corral_proto::token::Role::Agent,
        "",
        "",
        0,
        corral_host::state::Now::current().ms,
        "corral dev's join token",
    );
    let (_, token) = plane
        .create_token(minted, &corral_host::auth::Caller::admin())
        .await?;
    corral_proto::token::write_secret(path, &token)
        .with_context(|| format!("cannot keep the join token in {}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_agent_id_is_used_made_once_and_refused_when_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let made = stored_agent_id(dir.path()).unwrap();
        assert_eq!(
            stored_agent_id(dir.path()).unwrap(),
            made,
            "a new identity each start"
        );
        let path = dir.path().join("agent-id");
        for garbage in [&b"\xff\xfe\x00"[..], b"", b"x/y", b"two words"] {
            std::fs::write(&path, garbage).unwrap();
            let e = stored_agent_id(dir.path()).unwrap_err().to_string();
            assert!(e.contains("agent-id"), "{e}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                garbage,
                "the file was replaced"
            );
        }
    }

    #[test]
    fn the_agents_of_corral_dev_share_the_machines_memory() {
        let whole = machine_memory();
        assert_eq!(default_memory(1), whole);
        assert_eq!(default_memory(2), whole / 2);
        assert_eq!(default_memory(0), whole, "no agents is read as one");
        let capacity = AgentCapacity {
            slots: 4,
            memory: None,
            labels: Vec::new(),
            compile: CompileArgs {
                compile_timeout: Duration::from_secs(1),
                compile_memory: 1 << 30,
            },
            cache_size: 1 << 30,
        };
        let dev = agent_config(
            "a".into(),
            "h".into(),
            &capacity,
            2,
            PathBuf::new(),
            None,
            Default::default(),
        )
        .unwrap();
        assert_eq!(dev.memory_bytes * 2, whole / 2 * 2);
        let capacity = AgentCapacity {
            memory: Some(1 << 30),
            ..capacity
        };
        let given = agent_config(
            "a".into(),
            "h".into(),
            &capacity,
            2,
            PathBuf::new(),
            None,
            Default::default(),
        )
        .unwrap();
        assert_eq!(given.memory_bytes, 1 << 30, "--memory is each agent's own");
    }
}
