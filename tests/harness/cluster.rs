//! A Corral cluster of real processes on 127.0.0.1: one `corral host` and named
//! `corral agent`s, each in its own data dir under one temp dir, all killed when the
//! [`Cluster`] is dropped. Tests restart the host, kill agents, and run the CLI against it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_proto::pb;

use crate::server::{admin_token, connect, create_token, listening_on, Client, WAIT};

/// A client of the agent API, calling with a token.
pub type AgentApi = pb::agent_api_client::AgentApiClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        corral_proto::token::Bearer,
    >,
>;

/// Host config for tests: quick heartbeats so that a dead agent is noticed in about a second.
pub const FAST_CONFIG: &str = r#"
strategy = "spread"
heartbeat_interval = "200ms"
heartbeat_timeout = "1500ms"
"#;

/// The processes, their data dirs, and the host's address.
pub struct Cluster {
    /// Holds `host.toml`, the host's data dir `host/` and each agent's `agents/<id>/`.
    pub dir: tempfile::TempDir,
    /// The host's address, `http://127.0.0.1:PORT`.
    pub url: String,
    listen: String,
    host: Option<Child>,
    agents: Vec<(String, Child)>,
    /// The agents' join token, made at the first agent's start.
    join: Option<String>,
}

impl Cluster {
    /// A host with `config` and agents `(id, slots, memory)`, all attached.
    pub fn start(config: &str, agents: &[(&str, u32, &str)]) -> Cluster {
        let mut cluster = Cluster::new(config);
        cluster.start_host();
        for (id, slots, memory) in agents {
            cluster.start_agent(id, *slots, memory, &[]);
        }
        let ids: Vec<&str> = agents.iter().map(|a| a.0).collect();
        cluster.wait_for_agents(&ids);
        cluster
    }

    /// A cluster of no process yet, its host to run with `config`: start them.
    pub fn new(config: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("host.toml"), config).expect("writing the host config");
        Cluster {
            dir,
            url: String::new(),
            listen: "127.0.0.1:0".into(),
            host: None,
            agents: Vec::new(),
            join: None,
        }
    }

    /// The admin token the host wrote at its first start.
    pub fn token(&self) -> String {
        admin_token(&self.host_dir())
    }

    /// The agents' join token (made once).
    pub fn join_token(&mut self) -> String {
        if self.join.is_none() {
            let made = self.block_on(async {
                let mut admin = self.client().await;
                create_token(&mut admin, corral_proto::token::Role::Agent, "").await
            });
            self.join = Some(made.1);
        }
        self.join.clone().expect("made above")
    }

    /// The host's data dir.
    pub fn host_dir(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// (Re)starts the host on its data dir; the first start picks a port, restarts reuse it.
    pub fn start_host(&mut self) {
        let mut child = Command::new(crate::corral())
            .args(["host", "--listen", &self.listen, "--data-dir"])
            .arg(self.host_dir())
            .arg("--config")
            .arg(self.dir.path().join("host.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting corral host");
        let url = listening_on(&mut child);
        self.listen = url.trim_start_matches("http://").to_string();
        self.url = url;
        self.host = Some(child);
    }

    /// An agent's data dir.
    pub fn agent_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("agents").join(id)
    }

    /// Starts an agent of `slots` and `memory` (`1GiB`) with `labels` (`zone=eu-1`).
    pub fn start_agent(&mut self, id: &str, slots: u32, memory: &str, labels: &[&str]) {
        let labels: Vec<String> = labels.iter().map(|l| format!("--label={l}")).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.start_agent_with(id, slots, memory, &labels);
    }

    /// Starts an agent of `slots` and `memory` with more flags of `corral agent`.
    pub fn start_agent_with(&mut self, id: &str, slots: u32, memory: &str, flags: &[&str]) {
        let join = self.join_token();
        let mut command = Command::new(crate::corral());
        command.env("CORRAL_JOIN_TOKEN", join);
        command
            .args(["agent", "--host", &self.url, "--id", id, "--slots"])
            .arg(slots.to_string())
            .args(["--memory", memory, "--data-dir"])
            .arg(self.agent_dir(id))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command.args(flags);
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

    /// An agent's process id.
    pub fn agent_pid(&self, id: &str) -> u32 {
        self.agents
            .iter()
            .find(|(a, _)| a == id)
            .expect("a known agent")
            .1
            .id()
    }

    /// Whether agent `id`'s process is still running (it is reaped if it has ended).
    pub fn agent_running(&mut self, id: &str) -> bool {
        let (_, child) = self
            .agents
            .iter_mut()
            .find(|(a, _)| a == id)
            .expect("a known agent");
        matches!(child.try_wait(), Ok(None))
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
        let deadline = Instant::now() + WAIT;
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

    /// Runs `f` to its end on a runtime of its own.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// An admin's client of the host, retried until it answers.
    pub async fn client(&self) -> Client {
        connect(&self.url, &self.token()).await
    }

    /// A client of the agent API calling with `token`, or none.
    pub async fn agent_api(&self, token: Option<&str>) -> AgentApi {
        let channel = corral_proto::endpoint(&self.url, &Default::default())
            .expect("a host URL")
            .connect()
            .await
            .expect("reaching the host");
        let bearer = corral_proto::token::Bearer::new(token).expect("a token");
        pb::agent_api_client::AgentApiClient::with_interceptor(channel, bearer)
    }

    /// Runs the corral CLI against this cluster as its admin (killed, failing the test, after
    /// [`crate::COMMAND_LIMIT`]).
    pub fn corral(&self, args: &[&str]) -> Output {
        self.corral_as(Some(&self.token()), args)
    }

    /// Runs the corral CLI against this cluster with `token` in `CORRAL_TOKEN`, or none.
    pub fn corral_as(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(crate::corral());
        command
            .args(args)
            .env("CORRAL_HOST", &self.url)
            .env_remove("CORRAL_TOKEN")
            .current_dir(crate::repo_root());
        if let Some(token) = token {
            command.env("CORRAL_TOKEN", token);
        }
        crate::output_within(command, None, crate::COMMAND_LIMIT)
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

/// `s` as the contract's number.
pub fn state(s: pb::TaskState) -> i32 {
    s as i32
}
