"""The Python client against a real `corral dev` process (the binary CORRAL_BIN names, else the
repository's target/debug/corral), started once for these tests on a free port."""

import hashlib
import json
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
IRIS = ROOT / "examples" / "data" / "iris.csv"


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


def _logreg():
    """The logreg example's module, as scripts/build-guests builds it."""
    logreg = ROOT / "target" / "wasm" / "logreg.wasm"
    if not logreg.exists():
        pytest.fail(f"{logreg} is missing: run scripts/build-guests")
    return logreg


def _requests(monkeypatch, client):
    """The (method, path) of each request the client makes from now on, as a list that grows."""
    made = []
    real = client._open

    def spy(method, path, *args, **kwargs):
        made.append((method, path))
        return real(method, path, *args, **kwargs)

    monkeypatch.setattr(client, "_open", spy)
    return made


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


def test_a_sweep_reads_its_data_from_a_shared_input_as_it_would_from_stdin(client):
    logreg = _logreg()
    params = {"learning_rate": [0.1, 0.5]}
    args = ["--json", "--epochs", "50", "--learning-rate", "{learning_rate}"]
    from_input = client.submit_sweep(
        logreg, params, args + ["/input/iris.csv"], inputs=[IRIS], memory=64 << 20
    )
    on_stdin = client.submit_sweep(logreg, params, args, stdin=IRIS.read_bytes(), memory=64 << 20)
    for job in (from_input, on_stdin):
        assert client.wait(job, timeout=300, progress=False)["state"] == "FINISHED"
    rows, expected = client.results(from_input), client.results(on_stdin)
    assert [r["state"] for r in rows] == ["FINISHED", "FINISHED"], rows
    assert [r["result"]["test_accuracy"] for r in rows] == [
        r["result"]["test_accuracy"] for r in expected
    ]
    assert [r["result"] for r in rows] == [r["result"] for r in expected]
    sha = hashlib.sha256(IRIS.read_bytes()).hexdigest()
    mounted = client.get(rows[0]["task_id"])["inputs"]
    assert [(i["sha256"], i["path"]) for i in mounted] == [(sha, "/input/iris.csv")]
    # One task, the file at a path of its own choosing.
    task = client.submit(
        logreg,
        ["--json", "--epochs", "50", "--learning-rate", "0.5", "/data/flowers.csv"],
        inputs=[(str(IRIS), "/data/flowers.csv")],
        memory=64 << 20,
    )
    assert client.wait(task, timeout=300)["state"] == "FINISHED"
    assert json.loads(client.output(task)["stdout"]) == expected[1]["result"]


def test_an_input_is_sent_once_and_listed_once(dev, client, tmp_path, monkeypatch):
    data = tmp_path / "line.csv"
    data.write_text("x,y\n" + "".join(f"{i},{3 * i + 1}\n" for i in range(5000)))
    sha = client.upload_input(data)
    assert sha == hashlib.sha256(data.read_bytes()).hexdigest()
    hashed = []
    real_hash = corral.client._sha256_of
    monkeypatch.setattr(
        corral.client, "_sha256_of", lambda file, size: hashed.append(size) or real_hash(file, size)
    )
    # Again from this client: the file's digest remembered, the host asked, nothing sent.
    made = _requests(monkeypatch, client)
    assert client.upload_input(str(data)) == sha
    assert hashed == [] and made == [("GET", f"/v1/inputs/{sha}")]
    # From another client: the file hashed again; the host has it already.
    other = corral.Client(*dev)
    other_made = _requests(monkeypatch, other)
    assert other.upload_input(data) == sha
    assert hashed == [data.stat().st_size] and other_made == [("GET", f"/v1/inputs/{sha}")]
    listing = client.inputs()
    assert {"inputs", "used_bytes", "limit_bytes"} <= set(listing), listing
    mine = [i for i in listing["inputs"] if i["sha256"] == sha]
    assert len(mine) == 1, listing
    assert mine[0]["size_bytes"] == data.stat().st_size
    assert {"tasks", "fetches", "last_used_ms"} <= set(mine[0])
    # A changed file is another input: hashed and sent.
    with data.open("a") as f:
        f.write("5000,15001\n")
    changed = client.upload_input(data)
    assert changed == hashlib.sha256(data.read_bytes()).hexdigest() != sha
    assert made[-2:] == [("GET", f"/v1/inputs/{changed}"), ("POST", "/v1/inputs")]


def test_inputs_at_one_guest_path_are_refused_before_anything_is_uploaded(
    client, tmp_path, monkeypatch
):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "data.csv").write_text(f"{d},1\n")
    a, b = tmp_path / "a" / "data.csv", tmp_path / "b" / "data.csv"
    made = _requests(monkeypatch, client)
    with pytest.raises(ValueError, match="same guest path /input/data.csv"):
        client.submit(ECHO, inputs=[a, b])
    with pytest.raises(ValueError, match="same guest path /data/x.csv"):
        client.submit_array(ECHO, 2, inputs=[(a, "/data/x.csv"), (str(b), "/data/x.csv")])
    with pytest.raises(ValueError, match="overlap"):
        client.submit_sweep(ECHO, {"k": [1]}, inputs=[(a, "/data/x"), (b, "/data/x/y")])
    with pytest.raises(ValueError, match="not absolute"):
        client.submit_params(ECHO, [{"k": 1}], inputs=[(a, "data.csv")])
    with pytest.raises(ValueError, match="output directory"):
        client.submit(ECHO, inputs=[(a, "/output/data.csv")])
    with pytest.raises(TypeError, match="not one path"):
        client.submit(ECHO, inputs=str(a))
    with pytest.raises(FileNotFoundError):
        client.submit(ECHO, inputs=[a, tmp_path / "missing.csv"])
    assert made == []


def test_an_input_refused_before_it_is_read_is_the_hosts_refusal(tmp_path):
    # A host refusing an input by its declared size (a tenant over its storage) answers before
    # reading the body, and closes: the client tells that answer, not the broken pipe.
    import http.server
    import threading

    seen = {}

    class Full(http.server.BaseHTTPRequestHandler):
        def answer(self, status, code, message):
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.answer(404, "not_found", "no input with that sha256")

        def do_POST(self):
            seen.update((k.lower(), v) for k, v in self.headers.items())
            self.answer(507, "resource_exhausted", "the tenant's inputs would be over its storage")

        def log_message(self, *args):
            pass

    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(64 << 20)  # sparse: far more than the sockets' buffers take
    server = http.server.HTTPServer(("127.0.0.1", 0), Full)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        full = corral.Client(f"http://127.0.0.1:{server.server_port}", token="x")
        with pytest.raises(corral.ResourceExhausted, match="over its storage") as e:
            full.upload_input(big)
        assert e.value.status == 507
    finally:
        server.shutdown()
        server.server_close()
    assert seen["content-length"] == str(64 << 20)
    assert seen["content-type"] == "application/octet-stream"
    assert seen["x-corral-sha256"] == hashlib.sha256(bytes(64 << 20)).hexdigest()


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


def test_a_tenant_sees_only_its_own(dev, client, monkeypatch):
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
    # Inputs: the admin's upload is not acme's, which sends the same bytes as its own.
    theirs = client.upload_input(IRIS)
    assert theirs not in [i["sha256"] for i in acme.inputs()["inputs"]]
    made = _requests(monkeypatch, acme)
    assert acme.upload_input(IRIS) == theirs
    assert made == [("GET", f"/v1/inputs/{theirs}"), ("POST", "/v1/inputs")]
    listing = acme.inputs()
    assert [i["sha256"] for i in listing["inputs"]] == [theirs]
    # A small input takes a block of the tenant's storage.
    assert listing["used_bytes"] == max(IRIS.stat().st_size, 4096)


def test_the_sweep_example_prints_the_best_setting(dev):
    _logreg()
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
