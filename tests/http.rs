//! The HTTP/JSON API on the host's own listener, over plain HTTP/1.1 as `curl` speaks it:
//! health without a token, every other endpoint refused without one, tasks and jobs
//! submitted, listed, watched, killed and gathered in the shapes of `-o json`, errors as
//! JSON with their HTTP status, and tenants kept apart as over gRPC.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use corral_tests::cluster::{Cluster, FAST_CONFIG};
use corral_tests::fixtures;

/// An HTTP/1.1 response: status, headers (lower-cased names) and body (de-chunked).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a new connection (`Connection: close`), as curl would send it.
fn request(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connecting to the host");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    Reply {
        status,
        headers,
        body,
    }
}

#[test]
fn the_http_api_serves_tasks_and_jobs_beside_grpc_with_the_same_rules() {
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 4, "1GiB")]);
    let url = cluster.url.clone();
    let admin = cluster.token();
    let call = |method: &str, path: &str, body: &str| {
        request(&url, method, path, Some(&admin), &[], body.as_bytes())
    };

    // Health needs no token; nothing else is answered without one.
    let health = request(&url, "GET", "/healthz", None, &[], b"");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let refused = request(&url, "GET", "/v1/jobs", None, &[], b"");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(refused.json()["error"]["code"], "unauthenticated");
    let bad = request(&url, "GET", "/v1/jobs", Some("corral_admin_x"), &[], b"");
    assert_eq!(bad.status, 401, "{}", bad.text());

    // Upload the WAT as the body; admission's refusal names its outcome.
    let wat = std::fs::read(fixtures::path("echo_arg")).unwrap();
    let uploaded = request(&url, "POST", "/v1/modules", Some(&admin), &[], &wat);
    assert_eq!(uploaded.status, 200, "{}", uploaded.text());
    let sha = uploaded.json()["sha256"].as_str().unwrap().to_string();
    let broken = call(
        "POST",
        "/v1/modules",
        "(module (import \"x\" \"y\" (func)) (func (export \"_start\")))",
    );
    assert_eq!(broken.status, 400);
    assert_eq!(broken.json()["error"]["code"], "link_error");

    // A task: submitted, watched (server-sent events) to its end, its output read.
    let submitted = call(
        "POST",
        "/v1/tasks",
        &format!(r#"{{"module_sha256": "{sha}", "args": ["hello"], "name": "one"}}"#),
    );
    assert_eq!(submitted.status, 200, "{}", submitted.text());
    let task = submitted.json()["task_id"].as_str().unwrap().to_string();
    let watched = call("GET", &format!("/v1/tasks/{task}/watch"), "");
    assert_eq!(watched.header("content-type"), Some("text/event-stream"));
    let events: Vec<serde_json::Value> = watched
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.last().unwrap()["state"], "FINISHED", "{events:?}");
    let output = call("GET", &format!("/v1/tasks/{task}/output"), "");
    assert_eq!(output.json()["stdout"], "hello");
    let got = call("GET", &format!("/v1/tasks/{task}"), "").json();
    assert_eq!(
        (got["name"].as_str(), got["outcome"].as_str()),
        (Some("one"), Some("success"))
    );

    // A sweep as a job, its parameters in the order given; its rows as JSON lines.
    let job = call(
        "POST",
        "/v1/jobs",
        &format!(
            r#"{{"module_sha256": "{sha}", "args": ["{{\"z\":{{z}},\"a\":\"{{a}}\"}}"],
                 "sweep": [{{"name": "z", "values": [1, 2]}}, {{"name": "a", "values": ["x"]}}]}}"#
        ),
    );
    assert_eq!(job.status, 200, "{}", job.text());
    let job = job.json();
    assert_eq!(job["task_count"], 2);
    let id = job["job_id"].as_str().unwrap().to_string();
    let watched = request(
        &url,
        "GET",
        &format!("/v1/jobs/{id}/watch"),
        Some(&admin),
        &[("Accept", "application/x-ndjson")],
        b"",
    );
    let last: serde_json::Value =
        serde_json::from_str(watched.text().lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "FINISHED", "{}", watched.text());
    assert_eq!(last["param_names"], serde_json::json!(["z", "a"]));
    let rows = call("GET", &format!("/v1/jobs/{id}/results"), "");
    assert_eq!(rows.header("content-type"), Some("application/x-ndjson"));
    let rows: Vec<serde_json::Value> = rows
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["params"], serde_json::json!({"z": "2", "a": "x"}));
    assert_eq!(rows[1]["result"], serde_json::json!({"z": 2, "a": "x"}));
    let listed = call("GET", &format!("/v1/tasks?job={id}&page_size=1"), "").json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(listed["next_page_token"], listed["tasks"][0]["id"]);
    assert_eq!(call("GET", "/v1/jobs", "").json()["jobs"][0]["id"], id);
    assert_eq!(
        call("GET", &format!("/v1/jobs/{id}"), "").json()["counts"]["finished"],
        2
    );
    let again = call("POST", &format!("/v1/jobs/{id}/kill"), "");
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["error"]["code"], "failed_precondition");
    assert_eq!(call("GET", "/v1/agents", "").json()[0]["id"], "a1");
    assert_eq!(call("GET", "/v1/partitions", "").json()[0]["agent"], "a1");

    // Mistakes are named: an unknown field, a job field on a task, a bad id.
    let typo = call(
        "POST",
        "/v1/tasks",
        &format!(r#"{{"module_sha256": "{sha}", "fule": 1}}"#),
    );
    assert_eq!(typo.status, 400);
    assert!(
        typo.text().contains("unknown field `fule`"),
        "{}",
        typo.text()
    );
    let job_on_task = call(
        "POST",
        "/v1/tasks",
        &format!(r#"{{"module_sha256": "{sha}", "array": 3}}"#),
    );
    assert!(
        job_on_task.text().contains("POST /v1/jobs"),
        "{}",
        job_on_task.text()
    );
    assert_eq!(call("GET", "/v1/tasks/t-9999", "").status, 404);
    let nowhere = call("POST", "/v1/job", "{}");
    assert_eq!(nowhere.status, 404, "{}", nowhere.text());
    assert!(
        nowhere.text().contains("no such endpoint: POST /v1/job"),
        "{}",
        nowhere.text()
    );
    assert_eq!(call("GET", "/v1/tasks/nonsense", "").status, 400);
    // axum's own refusals come in the API's shape too.
    let wrong_method = call("GET", &format!("/v1/tasks/{task}/kill"), "");
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text());
    assert_eq!(wrong_method.json()["error"]["code"], "method_not_allowed");
    let bad_query = call("GET", "/v1/tasks?page_size=many", "");
    assert_eq!(bad_query.status, 400, "{}", bad_query.text());
    assert_eq!(bad_query.json()["error"]["code"], "invalid_argument");

    // A tenant's token sees only its own, as over gRPC.
    let made = cluster.corral(&["token", "create", "--role", "tenant", "--tenant", "b"]);
    let tenant = String::from_utf8_lossy(&made.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let theirs = request(
        &url,
        "GET",
        &format!("/v1/jobs/{id}"),
        Some(&tenant),
        &[],
        b"",
    );
    assert_eq!(theirs.status, 404, "{}", theirs.text());
    let other = request(
        &url,
        "POST",
        "/v1/tasks",
        Some(&tenant),
        &[],
        format!(r#"{{"module_sha256": "{sha}", "tenant": "default"}}"#).as_bytes(),
    );
    assert_eq!(other.status, 403, "{}", other.text());
}
