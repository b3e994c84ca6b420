//! A `corral` server process and a client of it: start one, wait for its address, connect with
//! retry, and the RPCs tests and benches repeat (upload, submit, get, wait, list). Also a
//! process's CPU time and resident set, read from `/proc`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_proto::pb::corral_client::CorralClient;
use corral_proto::token::Bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of a host's API, calling with a token.
pub type Client = CorralClient<InterceptedService<Channel, Bearer>>;

/// How long a test waits for a host to answer, for agents to attach, for a task to get
/// somewhere: a hang fails the test with what was seen instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(60);

/// A `corral` server process (dev, host or agent) in a temp data dir of its own, killed on
/// drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its address as `http://IP:PORT` (agents: empty).
    pub url: String,
    /// Its data dir.
    pub dir: tempfile::TempDir,
    /// A listening server's admin token (agents: empty).
    pub token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `corral ARGS... --data-dir <temp dir>`; for a server that listens (`listening`
    /// true), waits for the address it prints first. Its logs are dropped.
    pub fn start(args: &[&str], listening: bool) -> Server {
        Self::start_with_env(args, listening, &[])
    }

    /// [`Server::start`] with more environment variables (an agent's `CORRAL_JOIN_TOKEN`).
    pub fn start_with_env(args: &[&str], listening: bool, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(crate::corral())
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting corral");
        let (url, token) = if listening {
            let url = listening_on(&mut child);
            // Written before the server listens.
            (url, admin_token(dir.path()))
        } else {
            (String::new(), String::new())
        };
        Server {
            child,
            url,
            dir,
            token,
        }
    }

    /// A join token for agents of this host (made with its admin token, on a thread of its
    /// own: callers may be inside a runtime).
    pub fn join_token(&self) -> String {
        self.join_token_with(&Default::default())
    }

    /// [`Server::join_token`] of an https:// host reached with `tls`.
    pub fn join_token_with(&self, tls: &corral_proto::TlsClient) -> String {
        let (url, token, tls) = (self.url.clone(), self.token.clone(), tls.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async {
                    let mut admin = connect_with(&url, Some(&token), &tls).await;
                    create_token(&mut admin, corral_proto::token::Role::Agent, "")
                        .await
                        .1
                })
        })
        .join()
        .expect("making a join token")
    }

    /// Starts an agent of this host: `corral agent --host URL ARGS...` with a join token.
    pub fn agent(&self, args: &[&str]) -> Server {
        let join = self.join_token();
        let mut all = vec!["agent", "--host", &self.url];
        all.extend(args);
        Server::start_with_env(&all, false, &[("CORRAL_JOIN_TOKEN", &join)])
    }

    /// Its CPU time and RSS now.
    pub fn usage(&self) -> Usage {
        Usage::of(self.child.id())
    }
}

/// Reads the `listening on http://ADDR` line a host or dev server prints first.
pub fn listening_on(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the server's first line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the server printed {line:?}, not its address"))
        .to_string()
}

/// The admin token a host wrote to the top of its data dir (`corral dev`'s too).
pub fn admin_token(data_dir: &Path) -> String {
    corral_proto::token::read_secret(&data_dir.join("admin.token")).expect("the admin token")
}

/// A client of the host at `url` calling with `token`, retried until it answers (at most
/// [`WAIT`]).
pub async fn connect(url: &str, token: &str) -> Client {
    connect_as(url, Some(token)).await
}

/// A client of the host at `url` calling with `token`, or with none.
pub async fn connect_as(url: &str, token: Option<&str>) -> Client {
    connect_with(url, token, &Default::default()).await
}

/// A client of the host at `url` (`https://` with `tls`) calling with `token`, or with none.
pub async fn connect_with(url: &str, token: Option<&str>, tls: &corral_proto::TlsClient) -> Client {
    let deadline = Instant::now() + WAIT;
    let endpoint = corral_proto::endpoint(url, tls).expect("a host URL");
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let bearer = Bearer::new(token).expect("a token a header can carry");
                return CorralClient::with_interceptor(channel, bearer)
                    .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(corral_proto::MAX_MESSAGE_BYTES);
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot reach the host at {url}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Makes a token of `role` (`tenant` for tenant tokens) with an admin's client; answers its
/// accessor and text.
pub async fn create_token(
    admin: &mut Client,
    role: corral_proto::token::Role,
    tenant: &str,
) -> (String, String) {
    let created = admin
        .create_token(pb::CreateTokenRequest {
            role: role.to_pb() as i32,
            tenant: tenant.into(),
            ..Default::default()
        })
        .await
        .expect("making a token")
        .into_inner();
    (created.info.expect("its info").accessor, created.token)
}

/// Uploads a module file; answers its sha256.
pub async fn upload(client: &mut Client, module: &Path) -> String {
    upload_bytes(client, std::fs::read(module).expect("reading the module")).await
}

/// Uploads WAT text; answers its sha256.
pub async fn upload_wat(client: &mut Client, wat: &str) -> String {
    upload_bytes(client, wat.as_bytes().to_vec()).await
}

/// Uploads bytes in one chunk; answers the sha256.
pub async fn upload_bytes(client: &mut Client, bytes: Vec<u8>) -> String {
    client
        .upload_module(tokio_stream::iter(vec![pb::UploadModuleRequest {
            chunk: bytes.into(),
        }]))
        .await
        .expect("uploading the module")
        .into_inner()
        .sha256
}

/// A task of `sha256` named `name`, reserving `memory` bytes; the host's other defaults.
pub fn spec(sha256: &str, name: &str, memory: u64) -> pb::TaskSpec {
    pb::TaskSpec {
        name: name.into(),
        module_sha256: sha256.into(),
        limits: Some(pb::Limits {
            memory_bytes: memory,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Submits a task; answers its id.
pub async fn submit(client: &mut Client, spec: pb::TaskSpec) -> String {
    client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec),
            idempotency_key: String::new(),
        })
        .await
        .expect("submitting")
        .into_inner()
        .task_id
}

/// One task.
pub async fn get(client: &mut Client, id: &str) -> pb::Task {
    client
        .get_task(pb::GetTaskRequest { task_id: id.into() })
        .await
        .expect("getting the task")
        .into_inner()
}

/// Every task, in id order.
pub async fn all_tasks(client: &mut Client) -> Vec<pb::Task> {
    client
        .list_tasks(pb::ListTasksRequest {
            page_size: 10_000,
            ..Default::default()
        })
        .await
        .expect("listing tasks")
        .into_inner()
        .tasks
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

/// Polls until `pred` holds for the task, or panics with the task after `limit`.
pub async fn wait_until(
    client: &mut Client,
    id: &str,
    limit: Duration,
    pred: impl Fn(&pb::Task) -> bool,
) -> pb::Task {
    let deadline = Instant::now() + limit;
    loop {
        let task = get(client, id).await;
        if pred(&task) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} did not get there in {limit:?}: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Watches task `id` to its end (at most [`WAIT`]) and answers it as it ended.
pub async fn ended(client: &mut Client, id: &str) -> pb::Task {
    let mut events = client
        .watch_tasks(pb::WatchTasksRequest { task_id: id.into() })
        .await
        .expect("watch")
        .into_inner();
    let mut last = None;
    let watched = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.message().await.expect("event") {
            last = event.task;
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "task {id} did not end within {WAIT:?}: {last:?}"
    );
    last.expect("an event")
}

/// Watches task `id` to its end; asserts it FINISHED.
pub async fn finished(client: &mut Client, id: &str) {
    let last = ended(client, id).await;
    assert_eq!(last.state, pb::TaskState::Finished as i32, "{last:?}");
}

/// Waits until at least `n` agents are active (at most [`WAIT`]).
pub async fn wait_for_agents(client: &mut Client, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let agents = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .expect("agents")
            .into_inner()
            .agents;
        let active = agents
            .iter()
            .filter(|a| a.state == pb::AgentState::Active as i32)
            .count();
        if active >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{active} of {n} agents attached: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process's CPU time (user + system) and resident set, from `/proc/<pid>`.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// User and system CPU time so far.
    pub cpu: Duration,
    /// Resident set now.
    pub rss_bytes: u64,
}

impl Usage {
    /// Of process `pid`, now.
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

/// The process ids of `pid`'s children, from `/proc/<pid>/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
