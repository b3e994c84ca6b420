//! What the end-to-end benches share: `corral` server processes on loopback, a client, the
//! trivial task, percentiles, and a process's CPU time and RSS read from `/proc`.

// Each bench uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use corral_proto::pb;
use corral_proto::pb::corral_client::CorralClient;
use tonic::transport::Channel;

/// A client of the host's API.
pub type Client = CorralClient<Channel>;

/// A `corral` server process (dev, host or agent), killed on drop.
pub struct Server {
    pub child: Child,
    /// Its address as `http://IP:PORT` (agents: empty).
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Its CPU time and RSS now.
    pub fn usage(&self) -> Usage {
        Usage::of(self.child.id())
    }
}

/// Starts `corral SUBCOMMAND ARGS... --data-dir <temp dir>`; for a server that listens
/// (`listening` true), waits for the address it prints first.
pub fn start(args: &[&str], listening: bool) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting corral");
    let mut url = String::new();
    if listening {
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut url)
            .expect("reading the address");
        url = url.trim().trim_start_matches("listening on ").to_string();
    }
    Server { child, url, dir }
}

/// A client of the host at `url`, retried until it answers.
pub async fn connect(url: &str) -> CorralClient<Channel> {
    for _ in 0..500 {
        if let Ok(c) = CorralClient::connect(url.to_string()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no host at {url}");
}

/// A task that returns at once.
pub const TRIVIAL: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// Uploads the trivial module; answers its sha256.
pub async fn upload_trivial(client: &mut CorralClient<Channel>) -> String {
    client
        .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
            chunk: TRIVIAL.as_bytes().to_vec().into(),
        }]))
        .await
        .expect("upload")
        .into_inner()
        .sha256
}

/// A trivial task named `name`, reserving 1 MiB.
pub fn spec(sha: &str, name: String) -> pb::TaskSpec {
    pb::TaskSpec {
        name,
        module_sha256: sha.into(),
        limits: Some(pb::Limits {
            memory_bytes: 1 << 20,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn submit(client: &mut CorralClient<Channel>, spec: pb::TaskSpec) -> String {
    client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec),
            idempotency_key: String::new(),
        })
        .await
        .expect("submit")
        .into_inner()
        .task_id
}

/// Watches task `id` to its end; asserts it FINISHED.
pub async fn finished(client: &mut CorralClient<Channel>, id: &str) {
    let mut events = client
        .watch_tasks(pb::WatchTasksRequest { task_id: id.into() })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    while let Some(event) = events.message().await.expect("event") {
        last = event.task;
    }
    let last = last.expect("an event");
    assert_eq!(last.state, pb::TaskState::Finished as i32, "{last:?}");
}

/// How many tasks are in `state`.
pub async fn count(client: &mut Client, state: pb::TaskState) -> usize {
    client
        .list_tasks(pb::ListTasksRequest {
            state: state as i32,
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .tasks
        .len()
}

/// Waits until `n` agents are active.
pub async fn wait_for_agents(client: &mut CorralClient<Channel>, n: usize) {
    loop {
        let agents = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .expect("agents")
            .into_inner()
            .agents;
        if agents
            .iter()
            .filter(|a| a.state == pb::AgentState::Active as i32)
            .count()
            >= n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A process's CPU time (user + system) and resident set, from `/proc/<pid>`.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Usage {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        Usage {
            cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
            rss_bytes: rss_kib * 1024,
        }
    }

    /// The share of one core used between `earlier` and `self`, `wall` apart.
    pub fn cores_since(&self, earlier: &Usage, wall: Duration) -> f64 {
        (self.cpu.as_secs_f64() - earlier.cpu.as_secs_f64()) / wall.as_secs_f64()
    }
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/PID/stat`'s times, as `getconf` prints it.
fn clock_ticks() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("running getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("getconf CLK_TCK prints a number")
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `f` on a multi-threaded runtime when the binary was started by `cargo bench` (which
/// passes `--bench`); `cargo test --benches` compiles it and runs nothing.
pub fn main_with<F: std::future::Future<Output = ()>>(f: impl FnOnce(Vec<String>) -> F) {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f(args));
}

/// The value after `--name` in `args`, parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a valid value"))
        })
        .unwrap_or(default)
}
