//! Jobs on a cluster of real processes, through the CLI: arrays, sweeps and parameter files
//! make their tasks; results are gathered as JSON Lines, JSON and CSV and saved; a job past
//! its max_failures fails fast; jobs survive a host restart and are killed whole; tenants see
//! only their own jobs, and a job counts against its tenant's queue cap.

use std::time::Duration;

use corral_tests::cluster::{Cluster, FAST_CONFIG};
use corral_tests::fixtures;
use corral_tests::{ok, text};

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn job(cluster: &Cluster, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&cluster.corral(&["job", "get", id, "-o", "json"]))).unwrap()
}

#[test]
fn sweeps_arrays_and_parameter_files_make_their_tasks_and_results_are_gathered() {
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 4, "1GiB")]);
    let echo = fixtures::path("echo_arg");
    let echo = echo.to_str().unwrap();

    // A sweep: every combination, the last parameter fastest; each task's stdout is the JSON
    // object its arg became.
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "--sweep",
        "lr=0.1,0.01",
        "--sweep",
        "epochs=10,20,30",
        echo,
        r#"{"lr":"{lr}","epochs":{epochs},"i":{index}}"#,
    ]);
    ok(&out);
    let summary = text(&out.stderr);
    assert!(
        summary.contains("j-1 FINISHED 6 tasks: 6 finished"),
        "{summary}"
    );
    let rows = json_lines(&ok(&cluster.corral(&["job", "results", "j-1"])));
    assert_eq!(rows.len(), 6);
    let expected = [
        ("0.1", 10),
        ("0.1", 20),
        ("0.1", 30),
        ("0.01", 10),
        ("0.01", 20),
        ("0.01", 30),
    ];
    for (i, (row, (lr, epochs))) in rows.iter().zip(expected).enumerate() {
        assert_eq!(row["index"], i, "{row}");
        assert_eq!(row["task_id"], format!("t-{}", i + 1), "{row}");
        assert_eq!(
            row["params"],
            serde_json::json!({"lr": lr, "epochs": epochs.to_string()}),
            "{row}"
        );
        assert_eq!(row["state"], "FINISHED");
        assert_eq!(row["outcome"], "success");
        assert_eq!(row["exit_code"], 0);
        assert!(row["fuel_used"].as_u64().unwrap() > 0, "{row}");
        assert!(row["peak_memory_bytes"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(
            row["result"],
            serde_json::json!({"lr": lr, "epochs": epochs, "i": i}),
            "{row}"
        );
    }
    // The same as one JSON array, and as CSV with a column per parameter and result key.
    let array: Vec<serde_json::Value> = serde_json::from_str(&ok(
        &cluster.corral(&["job", "results", "j-1", "-o", "json"])
    ))
    .unwrap();
    assert_eq!(array, rows);
    let csv = ok(&cluster.corral(&["job", "results", "j-1", "-o", "csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "index,task_id,lr,epochs,state,outcome,exit_code,fuel_used,wall_ms,peak_memory_bytes,\
         result.epochs,result.i,result.lr"
    );
    assert!(
        lines[4].starts_with("3,t-4,0.01,10,FINISHED,success,0,"),
        "{}",
        lines[4]
    );
    assert!(lines[4].ends_with(",10,3,0.01"), "{}", lines[4]);

    // An array: `{index}` in the args; stdout that is not one JSON object is kept as text.
    let out = cluster.corral(&["submit", "--wait", "--array", "3", echo, "run-{index}"]);
    ok(&out);
    let save = cluster.dir.path().join("saved");
    let rows = json_lines(&ok(&cluster.corral(&[
        "job",
        "results",
        "j-2",
        "--save",
        save.to_str().unwrap(),
    ])));
    let results: Vec<&serde_json::Value> = rows.iter().map(|r| &r["result"]).collect();
    assert_eq!(results, ["run-0", "run-1", "run-2"]);
    assert!(rows.iter().all(|r| r["params"] == serde_json::json!({})));
    assert_eq!(std::fs::read(save.join("2/stdout")).unwrap(), b"run-2");
    assert_eq!(std::fs::read(save.join("0/stderr")).unwrap(), b"");

    // A parameter file: one task per line, numbers kept as their text.
    let params = cluster.dir.path().join("params.jsonl");
    std::fs::write(
        &params,
        "{\"name\": \"a\", \"k\": 1}\n\n{\"name\": \"b c\", \"k\": 2.5}\n",
    )
    .unwrap();
    let submit_params = |arg: &str| {
        cluster.corral(&[
            "submit",
            "-o",
            "json",
            "--idempotency-key",
            "params-1",
            "--params",
            params.to_str().unwrap(),
            echo,
            arg,
        ])
    };
    let submitted: serde_json::Value =
        serde_json::from_str(&ok(&submit_params("{name}/{k}"))).unwrap();
    assert_eq!(
        submitted,
        serde_json::json!({"job_id": "j-3", "task_count": 2, "first_task_id": "t-10", "existed": false})
    );
    // Again with the same key: the same job, nothing new; with another request: refused.
    let again: serde_json::Value = serde_json::from_str(&ok(&submit_params("{name}/{k}"))).unwrap();
    assert_eq!(again["job_id"], "j-3");
    assert_eq!(again["existed"], true);
    let other = submit_params("{k}");
    assert!(
        text(&other.stderr).contains("with a different request"),
        "{other:?}"
    );
    let waited = cluster.corral(&["job", "wait", "j-3"]);
    ok(&waited);
    let rows = json_lines(&ok(&cluster.corral(&["job", "results", "j-3"])));
    assert_eq!(
        rows[0]["params"],
        serde_json::json!({"name": "a", "k": "1"})
    );
    assert_eq!(rows[1]["result"], "b c/2.5");

    // Listed, and each task knows its job.
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&cluster.corral(&["jobs", "-o", "json"]))).unwrap();
    let ids: Vec<&serde_json::Value> = jobs.iter().map(|j| &j["id"]).collect();
    assert_eq!(ids, ["j-1", "j-2", "j-3"]);
    assert_eq!(jobs[0]["param_names"], serde_json::json!(["lr", "epochs"]));
    assert_eq!(jobs[0]["counts"]["finished"], 6);
    let task: serde_json::Value =
        serde_json::from_str(&ok(&cluster.corral(&["task", "get", "t-8", "-o", "json"]))).unwrap();
    assert_eq!(task["job_id"], "j-2");
    assert_eq!(task["job_index"], 1);
    let tasks = ok(&cluster.corral(&["tasks", "--job", "j-2"]));
    assert_eq!(
        tasks.lines().count(),
        4,
        "a header and three tasks: {tasks}"
    );

    // Malformed jobs are refused by name, before anything is submitted.
    let refused = cluster.corral(&["submit", "--sweep", "lr", echo]);
    assert_eq!(
        refused.status.code(),
        Some(134),
        "a usage error: {refused:?}"
    );
    assert!(text(&refused.stderr).contains("no ="), "{refused:?}");
    let refused = cluster.corral(&["submit", "--sweep", "index=1,2", echo]);
    assert!(
        text(&refused.stderr).contains("taken by the task's index"),
        "{refused:?}"
    );
    let refused = cluster.corral(&["submit", "--array", "100001", echo]);
    assert!(
        text(&refused.stderr).contains("over the bound of 100000"),
        "{refused:?}"
    );
    let refused = cluster.corral(&["submit", "--max-failures", "1", echo]);
    assert!(text(&refused.stderr).contains("is for jobs"), "{refused:?}");
    let jobs = ok(&cluster.corral(&["jobs"]));
    assert_eq!(jobs.lines().count(), 4, "nothing more was made: {jobs}");
}

#[test]
fn a_job_past_its_max_failures_kills_the_rest_and_fails() {
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 1, "1GiB")]);
    let dir = tempfile::tempdir().unwrap();
    let exit3 = dir.path().join("exit3.wat");
    std::fs::write(&exit3, fixtures::exit(3)).unwrap();
    let out = cluster.corral(&[
        "submit",
        "--wait",
        "--array",
        "20",
        "--max-failures",
        "2",
        "--retries",
        "0",
        exit3.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(140), "{out:?}");
    let summary = text(&out.stderr);
    assert!(summary.contains("j-1 FAILED 20 tasks"), "{summary}");
    assert!(summary.contains("max_failures"), "{summary}");
    assert!(summary.contains("(index 0) FAILED: exit(3)"), "{summary}");
    let job = job(&cluster, "j-1");
    assert_eq!(job["state"], "FAILED");
    let failed = job["counts"]["failed"].as_u64().unwrap();
    let killed = job["counts"]["killed"].as_u64().unwrap();
    // One slot: at most the one running when the second failed may also have failed.
    assert!((2..=3).contains(&failed), "{job}");
    assert_eq!(failed + killed, 20, "{job}");
    let killed_task: serde_json::Value =
        serde_json::from_str(&ok(&cluster.corral(&["task", "get", "t-20", "-o", "json"]))).unwrap();
    assert_eq!(killed_task["state"], "KILLED");
    assert!(
        killed_task["reason"]
            .as_str()
            .unwrap()
            .contains("job j-1 reached its max_failures (2)"),
        "{killed_task}"
    );
}

#[test]
fn a_job_survives_a_host_restart_and_is_killed_whole() {
    let mut cluster = Cluster::start(FAST_CONFIG, &[("a1", 2, "1GiB")]);
    let dir = tempfile::tempdir().unwrap();
    let sleep = dir.path().join("sleep.wat");
    std::fs::write(&sleep, fixtures::sleep(Duration::from_millis(300))).unwrap();
    let sleep = sleep.to_str().unwrap();
    ok(&cluster.corral(&["submit", "--array", "40", sleep]));
    // Some have run when the host dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while job(&cluster, "j-1")["counts"]["finished"].as_u64().unwrap() < 2 {
        assert!(std::time::Instant::now() < deadline, "no task finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill_host();
    cluster.start_host();
    cluster.wait_for_agents(&["a1"]);

    let before = job(&cluster, "j-1");
    assert_eq!(before["state"], "RUNNING");
    assert_eq!(before["task_count"], 40);
    let counts = before["counts"].as_object().unwrap();
    let total: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 40, "every task counted once: {before}");
    assert!(counts["finished"].as_u64().unwrap() >= 2, "{before}");
    // Job ids go on after the restart.
    let echo = fixtures::path("echo_arg");
    ok(&cluster.corral(&["submit", "--array", "1", echo.to_str().unwrap()]));
    assert_eq!(job(&cluster, "j-2")["task_count"], 1);

    let killed = cluster.corral(&["job", "kill", "j-1", "-o", "json"]);
    let killed: serde_json::Value = serde_json::from_str(&ok(&killed)).unwrap();
    assert_eq!(killed["state"], "KILLED", "{killed}");
    assert_eq!(killed["reason"], "killed on request");
    let ended = killed["ended"].as_u64().unwrap();
    assert_eq!(ended, 40, "{killed}");
    assert!(killed["counts"]["killed"].as_u64().unwrap() > 0, "{killed}");
    // `job wait` on a killed job exits as a killed task does.
    let waited = cluster.corral(&["job", "wait", "j-1"]);
    assert_eq!(waited.status.code(), Some(135), "{waited:?}");
    let again = cluster.corral(&["job", "kill", "j-1"]);
    assert!(text(&again.stderr).contains("already ended"), "{again:?}");
    let audit = ok(&cluster.corral(&["audit"]));
    assert!(
        audit.contains("job.kill") && audit.contains("job j-1"),
        "{audit}"
    );
}

#[test]
fn tenants_see_only_their_jobs_and_a_job_counts_against_the_queue_cap() {
    let cluster = Cluster::start(FAST_CONFIG, &[("a1", 1, "1GiB")]);
    let token = |tenant: &str| {
        let out = cluster.corral(&[
            "token", "create", "--role", "tenant", "--tenant", tenant, "-o", "json",
        ]);
        let created: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        created["token"].as_str().unwrap().to_string()
    };
    let (a, b) = (token("a"), token("b"));
    ok(&cluster.corral(&["tenant", "set", "a", "--max-queued", "5"]));
    let echo = fixtures::path("echo_arg");
    let echo = echo.to_str().unwrap();
    let refused = cluster.corral_as(Some(&a), &["submit", "--array", "6", echo]);
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("a job of 6 would pass") && stderr.contains("max_queued 5"),
        "{stderr}"
    );
    ok(&cluster.corral_as(
        Some(&a),
        &["submit", "--wait", "--array", "5", echo, "{index}"],
    ));
    // B sees no job of A's, as if it did not exist.
    for args in [
        &["job", "get", "j-1"][..],
        &["job", "results", "j-1"],
        &["job", "kill", "j-1"],
    ] {
        let out = cluster.corral_as(Some(&b), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains("no job j-1"),
            "{args:?}: {out:?}"
        );
    }
    assert_eq!(
        ok(&cluster.corral_as(Some(&b), &["jobs"])).lines().count(),
        1
    );
    let listed = ok(&cluster.corral_as(Some(&b), &["tasks", "--job", "j-1"]));
    assert_eq!(listed.lines().count(), 1, "a header alone: {listed}");
    let mine = ok(&cluster.corral_as(Some(&a), &["jobs", "-o", "json"]));
    let mine: Vec<serde_json::Value> = serde_json::from_str(&mine).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["tenant"], "a");
}
