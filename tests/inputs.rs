//! Shared inputs on a cluster of real processes: a file uploaded once is mounted read-only in
//! every task of an array, fetched once by each agent that runs them, and kept across a host
//! restart; a tenant sees and mounts only its own inputs, within its storage limit; an agent
//! fetches only the inputs of tasks launched to it.

use corral_proto::pb;
use corral_tests::cluster::{Cluster, FAST_CONFIG};
use corral_tests::{ok, text};

fn listed(cluster: &Cluster, token: &str) -> serde_json::Value {
    let out = cluster.corral_as(Some(token), &["inputs", "-o", "json"]);
    serde_json::from_str(&ok(&out)).unwrap()
}

#[test]
fn an_input_is_fetched_once_per_agent_and_each_tenant_mounts_only_its_own() {
    let mut cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB"), ("a2", 2, "1GiB")]);
    let token = |tenant: &str| {
        let out = cluster.corral(&[
            "token", "create", "--role", "tenant", "--tenant", tenant, "-o", "json",
        ]);
        let created: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        created["token"].as_str().unwrap().to_string()
    };
    let (acme, zeta) = (token("acme"), token("zeta"));
    let logreg = corral_tests::wasm("logreg");
    let logreg = logreg.to_str().unwrap();
    let iris = corral_tests::repo_root().join("examples/data/iris.csv");
    let size = std::fs::metadata(&iris).unwrap().len();
    let input = format!("{}::/data/iris.csv", iris.display());

    // Eight tasks over two agents read the one file; each agent fetched it at most once.
    let out = cluster.corral_as(
        Some(&acme),
        &[
            "submit",
            "--array",
            "8",
            "--wait",
            "--input",
            &input,
            logreg,
            "--json",
            "/data/iris.csv",
        ],
    );
    ok(&out);
    let rows: Vec<serde_json::Value> =
        ok(&cluster.corral_as(Some(&acme), &["job", "results", "j-1"]))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(rows.len(), 8);
    for row in &rows {
        assert_eq!(row["state"], "FINISHED", "{row}");
        assert_eq!(row["result"]["train_rows"], 120, "{row}");
    }
    let mine = listed(&cluster, &acme);
    assert_eq!(mine["inputs"].as_array().unwrap().len(), 1, "{mine}");
    let info = &mine["inputs"][0];
    assert_eq!(info["size_bytes"], size);
    assert_eq!(info["tasks"], 8);
    let fetches = info["fetches"].as_u64().unwrap();
    assert!((1..=2).contains(&fetches), "{mine}");
    assert_eq!(
        mine["used_bytes"],
        size.max(4096),
        "a small input takes a block"
    );
    assert_eq!(mine["limit_bytes"], 10u64 << 30);
    let sha = info["sha256"].as_str().unwrap().to_string();

    // Another tenant does not see it, cannot mount it by its sha256, and is held to its own
    // storage limit when it uploads the same bytes.
    assert_eq!(listed(&cluster, &zeta)["inputs"], serde_json::json!([]));
    cluster.block_on(async {
        let mut as_zeta = corral_tests::server::connect(&cluster.url, &zeta).await;
        let asked = as_zeta
            .get_input(pb::GetInputRequest {
                sha256: sha.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(asked.code(), tonic::Code::NotFound, "{asked:?}");
        let module = as_zeta
            .upload_module(tokio_stream::iter([pb::UploadModuleRequest {
                chunk: std::fs::read(logreg).unwrap().into(),
            }]))
            .await
            .unwrap()
            .into_inner();
        let spec = pb::TaskSpec {
            module_sha256: module.sha256,
            inputs: vec![pb::InputMount {
                sha256: sha.clone(),
                path: "/data/iris.csv".into(),
            }],
            ..Default::default()
        };
        let refused = as_zeta
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        assert!(refused.message().contains("no input"), "{refused:?}");
    });
    ok(&cluster.corral(&["tenant", "set", "zeta", "--max-input-storage", "1KiB"]));
    let over = cluster.corral_as(Some(&zeta), &["submit", "--input", &input, logreg]);
    assert!(!over.status.success());
    assert!(
        text(&over.stderr).contains("storage limit"),
        "{}",
        text(&over.stderr)
    );

    // No agent runs a task of it now: none may fetch it.
    let credential = std::fs::read_to_string(cluster.agent_dir("a1").join("agent.token")).unwrap();
    cluster.block_on(async {
        let mut agent = cluster.agent_api(Some(credential.trim())).await;
        let refused = match agent
            .fetch_input(pb::FetchInputRequest {
                sha256: sha.clone(),
            })
            .await
        {
            Ok(mut stream) => stream.get_mut().message().await.unwrap_err(),
            Err(status) => status,
        };
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    });

    // The input outlives a restart of the host, and is not sent again.
    cluster.kill_host();
    cluster.start_host();
    cluster.wait_for_agents(&["a1", "a2"]);
    let again = listed(&cluster, &acme);
    assert_eq!(again["inputs"][0]["sha256"], sha.as_str());
    ok(&cluster.corral_as(
        Some(&acme),
        &[
            "submit",
            "--wait",
            "--input",
            &input,
            logreg,
            "--json",
            "/data/iris.csv",
        ],
    ));
}
