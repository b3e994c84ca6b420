//! The gRPC service over a real control plane and listener: what only a connection shows.

use std::time::{Duration, Instant};

use corral_host::config::HostConfig;
use corral_host::control::ControlPlane;
use corral_proto::pb;
use corral_tests::fixtures;
use corral_tests::server::{connect, spec, upload_wat};

/// A watch of a task that does not change, whose client goes away, ends then (its
/// subscription with it), not at the task's next change, which may never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_client_has_gone_ends_before_its_task_changes() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(HostConfig::default(), dir.path()).unwrap();
    let token_file = dir.path().join("admin.token");
    plane.bootstrap_admin(&token_file, false).await.unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let listener = corral_host::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(corral_host::api::serve(
        plane.clone(),
        listener,
        None,
        std::future::pending(),
    ));
    let mut client = connect(&url, token.trim()).await;
    let sha = upload_wat(&mut client, &fixtures::wat("trivial")).await;
    // No agent: the task stays PENDING.
    let id = client
        .submit_task(pb::SubmitTaskRequest {
            spec: Some(spec(&sha, "quiet", 16 << 20)),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    let watch = client
        .watch_tasks(pb::WatchTasksRequest { task_id: id })
        .await
        .unwrap()
        .into_inner();
    let until = |want: usize| {
        let plane = plane.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while plane.watched_tasks() != want {
                assert!(
                    Instant::now() < deadline,
                    "{} tasks watched, not {want}",
                    plane.watched_tasks()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until(1).await;
    drop(watch);
    until(0).await;
}

/// A TLS server that is dropped (cancelled, as `corral host` cancels it on a signal) lets go of
/// its port: its accepting task and handshakes end with it. A connection that never finishes
/// its handshake holds up no other meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_dropped_lets_go_of_its_port_and_a_stalled_handshake_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let pki = corral_tests::tls::make_certificates(dir.path());
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    let plane = ControlPlane::start(HostConfig::default(), &dir.path().join("host")).unwrap();
    let token_file = dir.path().join("admin.token");
    plane.bootstrap_admin(&token_file, false).await.unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let listener = corral_host::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = corral_host::api::Tls {
        cert: read("host.pem"),
        key: read("host.key"),
        client_ca: Some(read("ca.pem")),
    };
    let server = tokio::spawn(corral_host::api::serve(
        plane.clone(),
        listener,
        Some(tls),
        std::future::pending(),
    ));
    // A client that connects and never says anything.
    let stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client_tls = corral_proto::TlsClient {
        ca: Some(read("ca.pem")),
        identity: None,
    };
    let url = format!("https://127.0.0.1:{}", addr.port());
    let mut client =
        corral_tests::server::connect_with(&url, Some(token.trim()), &client_tls).await;
    client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .expect("served beside a stalled handshake");
    drop(client);
    server.abort();
    let _ = server.await;
    drop(stalled);
    // The port is free again (nothing listens there).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} is still listened on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
