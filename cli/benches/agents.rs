//! Scale by simulation: N simulated agents (default 5,000) register with a real `corral host`
//! process over the agent protocol (`AgentApi`: Register, then one `Session` stream each),
//! heartbeat at the interval the host answers (5 s by default), and finish each task they are
//! launched at once. They run as tokio tasks in this process, 100 sessions per HTTP/2
//! connection. Meanwhile submitters send trivial tasks at a steady rate.
//!
//! Reported: the time to register and attach every agent; the host's CPU (in cores) and RSS
//! idle with the agents heartbeating, and under the task load; per 1,000 agents; placement
//! latency (submit sent to launch received by the agent) percentiles; and false losses: agents
//! not active at the end, sessions the host closed, tasks LOST. The bench fails if there are any.
//!
//! Run: `cargo bench -p corral --bench agents [-- --agents N --seconds S --rate TASKS_PER_S]`.

// A bench binary, not a library.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::pb;
use corral_proto::pb::agent_api_client::AgentApiClient;
use corral_proto::pb::agent_message::Message as Up;
use corral_proto::pb::host_message::Message as Down;
use corral_proto::token::Bearer;
use corral_tests::bench;
use corral_tests::bench::{arg, mib, ms, percentile};
use corral_tests::server::Usage;
use corral_tests::server::{self, Server};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Agent sessions multiplexed on one connection (below the server's 200 concurrent streams).
const SESSIONS_PER_CONNECTION: usize = 100;

#[derive(Default)]
struct Counters {
    launches: AtomicU64,
    acks: AtomicU64,
    heartbeats: AtomicU64,
    /// Session streams that ended while the bench still ran.
    closed: AtomicU64,
}

/// Submit times by task name, for placement latency.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

struct Sim {
    counters: Counters,
    sent: Sent,
    placements: Mutex<Vec<Duration>>,
}

async fn agent(
    i: usize,
    channel: Channel,
    sim: Arc<Sim>,
    mut stop: watch::Receiver<bool>,
    n: usize,
    join: String,
) -> Result<(), tonic::Status> {
    let id = format!("sim-{i:05}");
    let bearer = |token: &str| Bearer::new(Some(token)).expect("a token");
    let mut api = AgentApiClient::with_interceptor(channel.clone(), bearer(&join));
    let registered = api
        .register(pb::RegisterRequest {
            protocol: corral_proto::AGENT_PROTOCOL,
            agent_id: id.clone(),
            address: format!("sim:{i}"),
            capacity: Some(pb::Capacity {
                slots: 8,
                memory_bytes: 8 << 30,
            }),
            labels: [("zone".to_string(), format!("z{}", i % 10))].into(),
            version: "sim".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Joined with the join token: from now on, the agent's own credential.
    let mut api = AgentApiClient::with_interceptor(channel, bearer(&registered.credential));
    let (up, rx) = mpsc::channel(64);
    let send = |m: Up| {
        let up = up.clone();
        async move {
            let _ = up.send(pb::AgentMessage { message: Some(m) }).await;
        }
    };
    send(Up::Attach(pb::Attach {
        agent_id: id,
        session: registered.session,
    }))
    .await;
    let mut down = api.session(ReceiverStream::new(rx)).await?.into_inner();
    let interval = Duration::from_millis(registered.heartbeat_interval_ms);
    // Agents start spread over one interval, as real ones do.
    let first = tokio::time::Instant::now() + interval.mul_f64(i as f64 / n as f64);
    let mut beat = tokio::time::interval_at(first, interval);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = beat.tick() => {
                send(Up::Heartbeat(pb::Heartbeat::default())).await;
                sim.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            message = down.message() => match message {
                Ok(Some(pb::HostMessage { message: Some(Down::Launch(launch)) })) => {
                    let arrived = Instant::now();
                    sim.counters.launches.fetch_add(1, Ordering::Relaxed);
                    let name = launch.spec.map(|s| s.name).unwrap_or_default();
                    if let Some(sent) = sim.sent.lock().unwrap().remove(&name) {
                        sim.placements.lock().unwrap().push(arrived - sent);
                    }
                    send(Up::Status(pb::StatusUpdate {
                        task: launch.task,
                        state: pb::TaskState::Finished as i32,
                        outcome: Some(pb::Outcome { kind: pb::OutcomeKind::Success as i32, ..Default::default() }),
                        fuel_used: 1,
                        output: Some(pb::TaskOutput::default()),
                        ..Default::default()
                    }))
                    .await;
                }
                Ok(Some(pb::HostMessage { message: Some(Down::Ack(_)) })) => {
                    sim.counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    if !*stop.borrow() {
                        sim.counters.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
            },
        }
    }
}

/// Host CPU (cores) and RSS over `window`, sampled at its end.
async fn window(host: &Server, window: Duration) -> (f64, Usage) {
    let before = host.usage();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = host.usage();
    (after.cores_since(&before, started.elapsed()), after)
}

async fn bench(args: Vec<String>) {
    let n: usize = arg(&args, "--agents", 5_000);
    let seconds: u64 = arg(&args, "--seconds", 30);
    let rate: u64 = arg(&args, "--rate", 500);
    let host = Server::start(&["host", "--listen", "127.0.0.1:0"], true);
    let mut client = server::connect(&host.url, &host.token).await;
    let join = host.join_token();
    let sha = bench::upload_trivial(&mut client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let empty = host.usage();

    let sim = Arc::new(Sim {
        counters: Counters::default(),
        sent: Arc::default(),
        placements: Mutex::default(),
    });
    let (stop, stopped) = watch::channel(false);
    let endpoint = Endpoint::from_shared(host.url.clone()).expect("url");
    let started = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(SESSIONS_PER_CONNECTION) {
        let channel = endpoint.connect().await.expect("connecting");
        for i in chunk * SESSIONS_PER_CONNECTION..((chunk + 1) * SESSIONS_PER_CONNECTION).min(n) {
            agents.push(tokio::spawn(agent(
                i,
                channel.clone(),
                sim.clone(),
                stopped.clone(),
                n,
                join.clone(),
            )));
        }
    }
    server::wait_for_agents(&mut client, n).await;
    let attached = started.elapsed();
    println!(
        "{n} simulated agents registered and attached in {:.2} s",
        attached.as_secs_f64()
    );

    let window_len = Duration::from_secs(seconds);
    let (idle_cores, idle) = window(&host, window_len).await;

    // Under load: `rate` trivial tasks per second from 16 submitters, for the same window.
    let submitters = 16u64;
    let per_submitter = Duration::from_secs_f64(submitters as f64 / rate as f64);
    let deadline = Instant::now() + window_len;
    let mut handles = Vec::new();
    let submitted = Arc::new(AtomicU64::new(0));
    for s in 0..submitters {
        let (mut client, sha, sim, submitted) =
            (client.clone(), sha.clone(), sim.clone(), submitted.clone());
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_submitter);
            let mut k = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                let name = format!("s{s}-{k}");
                k += 1;
                sim.sent
                    .lock()
                    .unwrap()
                    .insert(name.clone(), Instant::now());
                server::submit(&mut client, bench::trivial_spec(&sha, name)).await;
                submitted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (load_cores, loaded) = window(&host, window_len).await;
    for h in handles {
        h.await.expect("submitter");
    }
    // Let the last tasks finish.
    let total = submitted.load(Ordering::Relaxed);
    let drain = Instant::now();
    while sim.counters.acks.load(Ordering::Relaxed) < total && drain.elapsed() < window_len {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let agents_now = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .expect("agents")
        .into_inner()
        .agents;
    let inactive = agents_now
        .iter()
        .filter(|a| a.state != pb::AgentState::Active as i32)
        .count();
    let lost_tasks = server::count(&mut client, pb::TaskState::Lost).await;
    let _ = stop.send(true);
    for a in agents {
        a.await.expect("agent task").expect("agent protocol");
    }
    let c = &sim.counters;
    let mut placements = std::mem::take(&mut *sim.placements.lock().unwrap());
    placements.sort();
    let per_k = |x: f64| x / (n as f64 / 1000.0);
    println!(
        "host, empty: RSS {:.1} MiB; idle with {n} agents ({seconds} s): {:.3} cores, RSS {:.1} MiB \
         ({:.3} cores and {:.1} MiB per 1,000 agents)",
        mib(empty.rss_bytes),
        idle_cores,
        mib(idle.rss_bytes),
        per_k(idle_cores),
        per_k(mib(idle.rss_bytes - empty.rss_bytes.min(idle.rss_bytes))),
    );
    println!(
        "host under {rate} tasks/s ({total} tasks in {seconds} s): {:.3} cores, RSS {:.1} MiB",
        load_cores,
        mib(loaded.rss_bytes)
    );
    println!(
        "placement latency (submit sent to launch received, n={}): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        placements.len(),
        ms(percentile(&placements, 0.5)),
        ms(percentile(&placements, 0.99)),
        ms(*placements.last().expect("placements"))
    );
    println!(
        "launches {}, acks {}, heartbeats {}; false losses: {inactive} agents not active, {} sessions closed by the host, {lost_tasks} tasks LOST",
        c.launches.load(Ordering::Relaxed),
        c.acks.load(Ordering::Relaxed),
        c.heartbeats.load(Ordering::Relaxed),
        c.closed.load(Ordering::Relaxed),
    );
    assert_eq!(
        (inactive, c.closed.load(Ordering::Relaxed), lost_tasks),
        (0, 0, 0),
        "false losses"
    );
    assert_eq!(c.acks.load(Ordering::Relaxed), total, "every task finished");
}

fn main() {
    bench::main_with(env!("CARGO_BIN_EXE_corral"), bench);
}
