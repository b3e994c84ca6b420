//! A Corral cluster of real processes on 127.0.0.1 for tests: one `corral host` and named
//! `corral agent`s, each in its own data dir, all killed when the [`Cluster`] is dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_proto::pb::corral_client::CorralClient;
use corral_tests::bin;
use tonic::transport::Channel;

/// Host config for tests: quick heartbeats so that a dead agent is noticed in about a second.
pub const FAST_CONFIG: &str = r#"
strategy = "spread"
heartbeat_interval = "200ms"
heartbeat_timeout = "1500ms"
"#;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    listen: String,
    host: Option<Child>,
    agents: Vec<(String, Child)>,
}

impl Cluster {
    /// A host with `config` and agents `(id, slots, memory)`, all attached.
    pub fn start(config: &str, agents: &[(&str, u32, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("host.toml"), config).expect("writing the host config");
        let mut cluster = Cluster {
            dir,
            url: String::new(),
            listen: "127.0.0.1:0".into(),
            host: None,
            agents: Vec::new(),
        };
        cluster.start_host();
        for (id, slots, memory) in agents {
            cluster.start_agent(id, *slots, memory, &[]);
        }
        let ids: Vec<&str> = agents.iter().map(|a| a.0).collect();
        cluster.wait_for_agents(&ids);
        cluster
    }

    /// (Re)starts the host on its data dir; the first start picks a port, restarts reuse it.
    pub fn start_host(&mut self) {
        let mut child = Command::new(bin("corral"))
            .args(["host", "--listen", &self.listen, "--data-dir"])
            .arg(self.dir.path().join("host"))
            .arg("--config")
            .arg(self.dir.path().join("host.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting corral host");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the host's first line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("corral host printed {line:?}, not its address"))
            .to_string();
        self.listen = url.trim_start_matches("http://").to_string();
        self.url = url;
        self.host = Some(child);
    }

    pub fn start_agent(&mut self, id: &str, slots: u32, memory: &str, labels: &[&str]) {
        let mut command = Command::new(bin("corral"));
        command
            .args(["agent", "--host", &self.url, "--id", id, "--slots"])
            .arg(slots.to_string())
            .args(["--memory", memory, "--data-dir"])
            .arg(self.dir.path().join("agents").join(id))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for label in labels {
            command.args(["--label", label]);
        }
        let child = command.spawn().expect("starting corral agent");
        self.agents.push((id.to_string(), child));
    }

    /// SIGKILLs the host.
    pub fn kill_host(&mut self) {
        if let Some(mut host) = self.host.take() {
            host.kill().expect("killing the host");
            host.wait().expect("reaping the host");
        }
    }

    /// SIGKILLs an agent (it is reaped when the cluster is dropped).
    pub fn sigkill_agent(&self, id: &str) {
        let (_, child) = self
            .agents
            .iter()
            .find(|(a, _)| a == id)
            .expect("a known agent");
        let status = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -KILL of agent {id} failed");
    }

    /// Waits until every agent in `ids` is active on the host.
    pub fn wait_for_agents(&self, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let agents = self.block_on(async {
                let mut client = self.client().await;
                client
                    .list_agents(pb::ListAgentsRequest {})
                    .await
                    .map(|r| r.into_inner().agents)
                    .unwrap_or_default()
            });
            let active = ids.iter().all(|id| {
                agents
                    .iter()
                    .any(|a| a.id == *id && a.state == pb::AgentState::Active as i32)
            });
            if active {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents {ids:?} did not attach: {agents:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    pub async fn client(&self) -> CorralClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match CorralClient::connect(self.url.clone()).await {
                Ok(c) => {
                    return c
                        .max_decoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(corral_proto::MAX_MESSAGE_BYTES)
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot reach the host at {}: {e}",
                        self.url
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs the corral CLI against this cluster.
    pub fn corral(&self, args: &[&str]) -> Output {
        Command::new(bin("corral"))
            .args(args)
            .env("CORRAL_HOST", &self.url)
            .current_dir(corral_tests::repo_root())
            .stdin(Stdio::null())
            .output()
            .expect("running corral")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.agents {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_host();
    }
}

/// Uploads a module file; answers its sha256.
pub async fn upload(client: &mut CorralClient<Channel>, module: &Path) -> String {
    upload_bytes(client, std::fs::read(module).expect("reading the module")).await
}

/// Uploads WAT text; answers its sha256.
pub async fn upload_wat(client: &mut CorralClient<Channel>, wat: &str) -> String {
    upload_bytes(client, wat.as_bytes().to_vec()).await
}

async fn upload_bytes(client: &mut CorralClient<Channel>, bytes: Vec<u8>) -> String {
    let request = pb::UploadModuleRequest {
        chunk: bytes.into(),
    };
    client
        .upload_module(tokio_stream::iter(vec![request]))
        .await
        .expect("uploading the module")
        .into_inner()
        .sha256
}

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

pub async fn submit(client: &mut CorralClient<Channel>, spec: pb::TaskSpec) -> String {
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

pub async fn get(client: &mut CorralClient<Channel>, id: &str) -> pb::Task {
    client
        .get_task(pb::GetTaskRequest { task_id: id.into() })
        .await
        .expect("getting the task")
        .into_inner()
}

pub async fn all_tasks(client: &mut CorralClient<Channel>) -> Vec<pb::Task> {
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

/// Polls until `pred` holds for the task, or panics after `limit`.
pub async fn wait_until(
    client: &mut CorralClient<Channel>,
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

pub fn state(s: pb::TaskState) -> i32 {
    s as i32
}

/// A WASI command that prints `text` after spinning `spins` times.
pub fn spinner_wat(spins: u32, text: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{text}")
  (func (export "_start") (local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const {spins}))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        text = text.replace('\n', "\\n"),
        len = text.len()
    )
}
