"""The Python client against a real `corral dev` process (the binary CORRAL_BIN names, else the
repository's target/debug/corral), started once for these tests on a free port."""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

import corral

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
ECHO = FIXTURES / "echo_arg.wat"
COUNT_STDIN = FIXTURES / "count_stdin.wat"
WRITER = FIXTURES / "writer.wat"
SLEEP = (FIXTURES / "sleep.wat").read_text().replace("{nanos}", "3000000000").encode()
EXIT_3 = b"""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"""


@pytest.fixture(scope="session")
def dev():
    """(url, admin token) of a `corral dev` of 1 agent of 4 slots, stopped after the tests."""
    binary = os.environ.get("CORRAL_BIN", str(ROOT / "target" / "debug" / "corral"))
    with tempfile.TemporaryDirectory() as data:
        process = subprocess.Popen(
            [binary, "dev", "--listen", "127.0.0.1:0", "--data-dir", data,
             "--agents", "1", "--slots", "4", "--memory", "2GiB"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            first = process.stdout.readline()
            assert first.startswith("listening on "), first
            url = first.split()[-1]
            token = pathlib.Path(data, "admin.token").read_text().strip()
            client = corral.Client(url, token)
            # The agent has registered once a trivial task runs.
            client.wait(client.submit(ECHO, ["ready"]), timeout=60)
            yield url, token
        finally:
            process.kill()
            process.wait()


def _env():
    """This process's environment without what would point a child at another host."""
    return {k: v for k, v in os.environ.items() if k not in ("CORRAL_TLS_CA", "CORRAL_HOST")}


@pytest.fixture
def client(dev):
    url, token = dev
    return corral.Client(url, token)


def test_a_task_runs_and_its_output_comes_back(client):
    task = client.submit(ECHO, ["hello"], name="greeting", env={"K": "v"})
    assert isinstance(task, corral.Task) and task.id.startswith("t-")
    record = client.wait(task, timeout=60)
    assert record["state"] == "FINISHED"
    assert record["name"] == "greeting"
    assert record["outcome"] == "success"
    assert client.output(task)["stdout"] == "hello"
    # Bytes work as well as paths; stdin as bytes (base64 on the wire) and as text arrive whole.
    binary = client.submit(COUNT_STDIN.read_bytes(), stdin=b"\x00\xff" * 500)
    assert client.wait(binary, timeout=60)["state"] == "FINISHED"
    assert client.output(binary)["stdout"] == "1000\n"
    text = client.submit(COUNT_STDIN, stdin="héllo")
    client.wait(text, timeout=60)
    assert client.output(text)["stdout"] == f"{len('héllo'.encode())}\n"
    # Output files come back as bytes.
    wrote = client.submit(WRITER, outputs=True)
    client.wait(wrote, timeout=60)
    assert client.output(wrote)["files"] == [{"path": "result.txt", "data": b"42\n"}]


def test_a_sweep_runs_every_combination_and_its_results_are_gathered_in_order(client):
    job = client.submit_sweep(
        ECHO,
        params={"lr": [0.1, "0.01"], "epochs": [10, 20]},
        args=['{"lr": {lr}, "epochs": {epochs}, "i": {index}}'],
    )
    assert isinstance(job, corral.Job) and job.task_count == 4
    record = client.wait(job, timeout=120, progress=False)
    assert record["state"] == "FINISHED"
    assert record["counts"]["finished"] == 4
    assert record["param_names"] == ["lr", "epochs"]
    rows = client.results(job)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["params"] for r in rows] == [
        {"lr": "0.1", "epochs": "10"},
        {"lr": "0.1", "epochs": "20"},
        {"lr": "0.01", "epochs": "10"},
        {"lr": "0.01", "epochs": "20"},
    ]
    assert rows[3]["result"] == {"lr": 0.01, "epochs": 20, "i": 3}
    assert all(r["outcome"] == "success" and r["fuel_used"] > 0 for r in rows)
    assert [t["id"] for t in client.tasks(job=job)] == [r["task_id"] for r in rows]
    assert any(j["id"] == job.id for j in client.jobs())


def test_numpy_values_are_parameters_and_nan_is_refused(client):
    numpy = pytest.importorskip("numpy")
    job = client.submit_sweep(ECHO, params={"k": numpy.arange(2), "x": [numpy.float64(0.5)]})
    client.wait(job, timeout=60, progress=False)
    assert [r["params"] for r in client.results(job)] == [
        {"k": "0", "x": "0.5"},
        {"k": "1", "x": "0.5"},
    ]
    with pytest.raises(ValueError, match="not a finite number"):
        client.submit_sweep(ECHO, params={"x": [float("nan")]})


def test_wait_shows_progress_when_asked_and_times_out(client, capsys):
    job = client.submit_array(ECHO, 3)
    client.wait(job, timeout=60, progress=True)
    line = capsys.readouterr().err
    assert f"{job.id} [" in line and "3/3 ended" in line, line
    slow = client.submit(SLEEP)
    with pytest.raises(TimeoutError, match="has not ended after 0.3 s"):
        client.wait(slow, timeout=0.3)
    client.kill(slow)
    assert client.wait(slow, timeout=60)["state"] == "KILLED"


def test_results_frame_spreads_params_and_results_into_columns(client):
    pandas = pytest.importorskip("pandas")
    job = client.submit_sweep(ECHO, params={"a": [1, 2, 3]}, args=['{"double": {a}{a}}'])
    client.wait(job, timeout=120, progress=False)
    frame = client.results_frame(job)
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame["params.a"]) == ["1", "2", "3"]
    assert list(frame["result.double"]) == [11, 22, 33]


def test_an_array_and_parameter_sets_make_their_tasks(client):
    array = client.submit_array(ECHO, 3, ["run-{index}"])
    client.wait(array, timeout=120, progress=False)
    assert [r["result"] for r in client.results(array)] == ["run-0", "run-1", "run-2"]
    sets = client.submit_params(ECHO, [{"name": "a"}, {"name": "b", "k": 2}], ["{name}{k}"])
    client.wait(sets, timeout=120, progress=False)
    rows = client.results(sets)
    assert [r["result"] for r in rows] == ["a{k}", "b2"]
    assert rows[1]["params"] == {"name": "b", "k": "2"}


def test_a_retried_submit_under_its_key_answers_the_same_job(client):
    first = client.submit_array(ECHO, 2, ["x"], idempotency_key="sweep-7")
    again = client.submit_array(ECHO, 2, ["x"], idempotency_key="sweep-7")
    assert again == first
    with pytest.raises(corral.FailedPrecondition, match="different request"):
        client.submit_array(ECHO, 3, ["x"], idempotency_key="sweep-7")


def test_max_failures_fails_the_job_fast(client):
    job = client.submit_array(EXIT_3, 12, max_failures=2, retries=0)
    record = client.wait(job, timeout=120, progress=False)
    assert record["state"] == "FAILED"
    assert "max_failures" in record["reason"]
    assert record["counts"]["failed"] >= 2
    assert record["counts"]["killed"] > 0
    failed = [r for r in client.results(job) if r["state"] == "FAILED"]
    assert failed[0]["outcome"] == "exit" and failed[0]["exit_code"] == 3
    with pytest.raises(corral.FailedPrecondition, match="already ended"):
        client.kill(job)


def test_refusals_are_exceptions_naming_the_problem(dev, client):
    url, _ = dev
    with pytest.raises(corral.Unauthenticated, match="no token"):
        corral.Client(url, token="").jobs()
    with pytest.raises(corral.Unauthenticated):
        corral.Client(url, token="corral_admin_nonsense").jobs()
    with pytest.raises(corral.NotFound, match="no task t-999999"):
        client.get("t-999999")
    with pytest.raises(corral.InvalidModule) as refused:
        client.upload(b'(module (import "x" "y" (func)) (func (export "_start")))')
    assert refused.value.code == "link_error" and refused.value.status == 400
    with pytest.raises(corral.InvalidArgument, match="taken by the task's index"):
        client.submit_sweep(ECHO, params={"index": [1]})
    with pytest.raises(TypeError, match="unknown option"):
        client.submit_array(ECHO, 2, fuell=10)
    with pytest.raises(TypeError):
        client.results(corral.Task("t-1"))
    with pytest.raises(corral.Unavailable, match="cannot reach"):
        corral.Client("http://127.0.0.1:9").jobs()
    assert client.healthy()
    assert not corral.Client("http://127.0.0.1:9").healthy()
    # axum's own refusals come as the API's JSON too.
    with pytest.raises(corral.InvalidArgument, match="page_size"):
        client._json("GET", "/v1/tasks?page_size=many")


def test_an_answer_that_is_not_the_apis_json_is_the_error_of_its_status():
    # A proxy in front of the host answering for it, in plain text.
    import http.server
    import threading

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"upstream down")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxied = corral.Client(f"http://127.0.0.1:{server.server_port}", token="x")
        with pytest.raises(corral.Unavailable, match="HTTP 503: upstream down") as e:
            proxied.jobs()
        assert e.value.status == 503
    finally:
        server.shutdown()


def test_a_tenant_sees_only_its_own(dev, client):
    url, _ = dev
    made = subprocess.run(
        [os.environ.get("CORRAL_BIN", str(ROOT / "target" / "debug" / "corral")),
         "token", "create", "--role", "tenant", "--tenant", "acme"],
        env={**_env(), "CORRAL_HOST": url, "CORRAL_TOKEN": client.token},
        capture_output=True, text=True, check=True,
    )
    acme = corral.Client(url, made.stdout.strip().splitlines()[-1])
    job = client.submit_array(ECHO, 1)
    with pytest.raises(corral.NotFound):
        acme.get(job)
    with pytest.raises(corral.PermissionDenied):
        acme.submit(ECHO, tenant="default")
    mine = acme.submit_array(ECHO, 1, ["acme"])
    assert acme.wait(mine, timeout=60, progress=False)["tenant"] == "acme"
    assert [j["id"] for j in acme.jobs()] == [mine.id]


def test_the_sweep_example_prints_the_best_setting(dev):
    logreg = ROOT / "target" / "wasm" / "logreg.wasm"
    if not logreg.exists():
        pytest.fail(f"{logreg} is missing: run scripts/build-guests")
    url, token = dev
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sweep.py"), "--host", url],
        env={**_env(), "CORRAL_TOKEN": token},
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    # A header, a row per setting (5 learning rates x 4 epoch counts), then the best.
    assert len(lines) == 1 + 20 + 1, run.stdout
    accuracies = [float(line.split()[-1]) for line in lines[1:21]]
    best = lines[-1]
    assert best.startswith("best: learning_rate="), best
    assert f"test_accuracy={max(accuracies):.4f}" in best, run.stdout
