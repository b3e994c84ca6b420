"""The client: Corral's HTTP/JSON API over the standard library's ``urllib``."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import math
import numbers
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .errors import CorralError, error_for

if TYPE_CHECKING:  # pragma: no cover
    import pandas

#: A module: a path to a ``.wasm`` or ``.wat`` file, or its bytes.
Module = Union[str, os.PathLike, bytes, bytearray]

#: Task states after which a task never changes; job states likewise.
TASK_ENDED = frozenset({"FINISHED", "FAILED", "KILLED", "LOST"})
JOB_ENDED = frozenset({"FINISHED", "FAILED", "KILLED"})

#: How long :meth:`Client.wait` rides out a host it cannot reach (restarting, recovering its
#: store) before it gives up, as ``corral job wait`` does.
UNREACHABLE_FOR = 120.0

#: The host the CLI defaults to.
DEFAULT_HOST = "http://127.0.0.1:7700"


@dataclass(frozen=True)
class Task:
    """A task submitted to the cluster (``t-<n>``)."""

    id: str


@dataclass(frozen=True)
class Job:
    """A job: many tasks made from one spec (``j-<n>``)."""

    id: str
    #: Tasks in all.
    task_count: int
    #: Its first task; the others follow in index order.
    first_task_id: str


Handle = Union[Task, Job, str]


def _handle_id(handle: Handle) -> str:
    if isinstance(handle, (Task, Job)):
        return handle.id
    if isinstance(handle, str) and (handle.startswith("t-") or handle.startswith("j-")):
        return handle
    raise TypeError(f"not a task or a job: {handle!r} (ids look like t-42 or j-7)")


def _path_id(handle: Handle) -> str:
    """The handle's id as it goes in a URL's path."""
    return urllib.parse.quote(_handle_id(handle), safe="")


def _is_job(handle: Handle) -> bool:
    return _handle_id(handle).startswith("j-")


def _param_value(value: Any) -> Any:
    """A parameter's value as the API takes it: strings, numbers and booleans as they are
    (numpy's scalars as the Python values they hold); not NaN or an infinity."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # a numpy scalar
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"parameter value {value!r} is not a finite number")
        return float(value)
    raise TypeError(
        f"parameter value {value!r} is a {type(value).__name__}: give a string, number or bool"
    )


class Client:
    """A client of one Corral host.

    ``host`` is the URL the CLI uses (``http://`` or ``https://``; default ``CORRAL_HOST``, else
    ``http://127.0.0.1:7700``); ``token`` the token to call with (default ``CORRAL_TOKEN``);
    ``ca_file`` the CA that signs an ``https://`` host's certificate (default ``CORRAL_TLS_CA``,
    else the system's roots). Every method raises a :class:`corral.CorralError` subclass naming
    the problem when the host refuses.
    """

    def __init__(
        self,
        host: Optional[str] = None,
        token: Optional[str] = None,
        *,
        ca_file: Optional[str] = None,
        timeout: float = 60.0,
    ) -> None:
        host = host or os.environ.get("CORRAL_HOST") or DEFAULT_HOST
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"host {host!r} is not an http:// or https:// URL")
        self.host = host.rstrip("/")
        self.token = token if token is not None else os.environ.get("CORRAL_TOKEN")
        self.timeout = timeout
        ca_file = ca_file or os.environ.get("CORRAL_TLS_CA")
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        # Modules uploaded by this client: (path, size, mtime) -> sha256.
        self._uploaded: Dict[Tuple[str, int, int], str] = {}

    def __repr__(self) -> str:
        return f"corral.Client({self.host!r})"

    # ----- the wire ----------------------------------------------------------------------

    def _open(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: Optional[float] = None,
    ) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.host + path, data=body, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        request.add_header("Accept", accept)
        try:
            return urllib.request.urlopen(
                request,
                timeout=self.timeout if timeout is None else timeout,
                context=self._ssl,
            )
        except urllib.error.HTTPError as e:
            raise self._failure(e) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise self._unreachable(e) from None

    def _unreachable(self, e: BaseException) -> CorralError:
        """What a failure to talk to the host at all is, saying what to do about it."""
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, ssl.SSLCertVerificationError):
            return error_for(
                "tls",
                f"the host at {self.host} is not trusted: {reason.verify_message} "
                "(give ca_file= or CORRAL_TLS_CA: the CA that signed its certificate)",
                None,
            )
        if isinstance(reason, ssl.SSLError):
            return error_for("tls", f"TLS with the host at {self.host} failed: {reason}", None)
        hint = "(is `corral host` or `corral dev` running there? set CORRAL_HOST)"
        if isinstance(reason, http.client.BadStatusLine) and self.host.startswith("http://"):
            hint = "(if the host serves TLS, use an https:// URL)"
        return error_for(
            "unavailable", f"cannot reach the Corral host at {self.host}: {reason!r} {hint}", None
        )

    @staticmethod
    def _failure(e: urllib.error.HTTPError) -> CorralError:
        text = e.read().decode("utf-8", "replace")
        try:
            error = json.loads(text)["error"]
            return error_for(error["code"], error["message"], e.code)
        except (ValueError, KeyError, TypeError):
            # Not the API's JSON (a proxy's page, a rejection before the API): by its status.
            by_status = {
                400: "invalid_argument",
                401: "unauthenticated",
                403: "permission_denied",
                404: "not_found",
                409: "failed_precondition",
                413: "invalid_argument",
                429: "resource_exhausted",
                503: "unavailable",
            }
            return error_for(
                by_status.get(e.code, "unknown"), f"HTTP {e.code}: {text.strip() or e.reason}", e.code
            )

    def _json(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Any:
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        if method == "POST" and data is None:
            data = b""
        with self._open(method, path, data, timeout=timeout) as response:
            try:
                return json.loads(response.read())
            except (http.client.HTTPException, OSError) as e:
                raise self._unreachable(e) from None

    def _lines(self, path: str) -> Iterator[Dict[str, Any]]:
        # A stream takes as long as it takes: no read timeout but the host's own.
        with self._open("GET", path, accept="application/x-ndjson", timeout=3600.0) as response:
            try:
                for line in response:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if "error" in row and len(row) == 1:
                        raise error_for(row["error"]["code"], row["error"]["message"], None)
                    yield row
            except (http.client.HTTPException, OSError) as e:
                raise self._unreachable(e) from None

    # ----- modules -----------------------------------------------------------------------

    def upload(self, module: Module) -> str:
        """Uploads a module (the path of a ``.wasm`` or ``.wat`` file, or its bytes) and
        returns its sha256. The same bytes twice are stored once."""
        key = None
        if isinstance(module, (bytes, bytearray)):
            data = bytes(module)
        else:
            path = os.path.abspath(os.fspath(module))
            stat = os.stat(path)
            key = (path, stat.st_size, stat.st_mtime_ns)
            if key in self._uploaded:
                return self._uploaded[key]
            with open(path, "rb") as f:
                data = f.read()
        with self._open(
            "POST", "/v1/modules", data, content_type="application/octet-stream"
        ) as response:
            sha256 = json.loads(response.read())["sha256"]
        if key is not None:
            self._uploaded[key] = sha256
        return sha256

    # ----- submitting --------------------------------------------------------------------

    def _spec(
        self,
        module: Module,
        args: Sequence[str],
        *,
        name: Optional[str],
        tenant: Optional[str],
        env: Optional[Mapping[str, str]],
        stdin: Union[str, bytes, None],
        fuel: Optional[int],
        memory: Optional[int],
        timeout: Optional[float],
        max_output: Optional[int],
        max_disk: Optional[int],
        retries: Optional[int],
        retry_failed: bool,
        outputs: bool,
        labels: Optional[Mapping[str, str]],
        constraints: Optional[Mapping[str, str]],
        idempotency_key: Optional[str],
    ) -> Dict[str, Any]:
        if isinstance(args, str):
            raise TypeError("args is a sequence of strings, not one string")
        spec: Dict[str, Any] = {
            "module_sha256": self.upload(module),
            "args": [str(a) for a in args],
        }
        if name is None and not isinstance(module, (bytes, bytearray)):
            name = os.path.splitext(os.path.basename(os.fspath(module)))[0]
        optional = {
            "name": name,
            "tenant": tenant,
            "env": dict(env) if env else None,
            "fuel": fuel,
            "memory_bytes": memory,
            "timeout_ms": None if timeout is None else int(timeout * 1000),
            "max_output_bytes": max_output,
            "max_disk_bytes": max_disk,
            "retries": retries,
            "labels": dict(labels) if labels else None,
            "constraints": dict(constraints) if constraints else None,
            "idempotency_key": idempotency_key,
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        if retry_failed:
            spec["retry_failed"] = True
        if outputs:
            spec["outputs"] = True
        if isinstance(stdin, str):
            spec["stdin"] = stdin
        elif stdin is not None:
            spec["stdin_base64"] = base64.b64encode(bytes(stdin)).decode()
        return spec

    def submit(
        self,
        module: Module,
        args: Sequence[str] = (),
        *,
        name: Optional[str] = None,
        tenant: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Union[str, bytes, None] = None,
        fuel: Optional[int] = None,
        memory: Optional[int] = None,
        timeout: Optional[float] = None,
        max_output: Optional[int] = None,
        max_disk: Optional[int] = None,
        retries: Optional[int] = None,
        retry_failed: bool = False,
        outputs: bool = False,
        labels: Optional[Mapping[str, str]] = None,
        constraints: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
    ) -> Task:
        """Submits one task running ``module`` with ``args`` (its ``argv[1:]``).

        ``memory`` (bytes) is the task's linear-memory cap and what it reserves; ``timeout``
        is in seconds; ``fuel``, ``max_output`` and ``max_disk`` are as for ``corral submit``;
        what is left out takes the host's defaults. ``stdin`` is text or bytes.
        """
        spec = self._spec(
            module,
            args,
            name=name,
            tenant=tenant,
            env=env,
            stdin=stdin,
            fuel=fuel,
            memory=memory,
            timeout=timeout,
            max_output=max_output,
            max_disk=max_disk,
            retries=retries,
            retry_failed=retry_failed,
            outputs=outputs,
            labels=labels,
            constraints=constraints,
            idempotency_key=idempotency_key,
        )
        return Task(self._json("POST", "/v1/tasks", spec)["task_id"])

    def _submit_job(self, spec: Dict[str, Any], max_failures: Optional[int]) -> Job:
        if max_failures is not None:
            spec["max_failures"] = max_failures
        made = self._json("POST", "/v1/jobs", spec)
        return Job(made["job_id"], made["task_count"], made["first_task_id"])

    def submit_array(
        self,
        module: Module,
        count: int,
        args: Sequence[str] = (),
        *,
        max_failures: Optional[int] = None,
        **options: Any,
    ) -> Job:
        """Submits a job of ``count`` tasks: task ``i`` gets ``CORRAL_TASK_INDEX=i`` and
        ``{index}`` in its args replaced by ``i``. ``options`` are :meth:`submit`'s. With
        ``max_failures``, once that many tasks have failed the rest are killed."""
        spec = self._spec(module, args, **_defaults(options))
        spec["array"] = int(count)
        return self._submit_job(spec, max_failures)

    def submit_sweep(
        self,
        module: Module,
        params: Mapping[str, Sequence[Any]],
        args: Sequence[str] = (),
        *,
        max_failures: Optional[int] = None,
        **options: Any,
    ) -> Job:
        """Submits a job of every combination of ``params``' values (``{"lr": [0.1, 0.01],
        "epochs": [10, 100]}``; the last name varying fastest, as ``itertools.product``): in
        each task ``{name}`` in the args is replaced and ``CORRAL_PARAM_<NAME>`` is set.
        ``options`` are :meth:`submit`'s."""
        if not params:
            raise ValueError("a sweep needs at least one parameter")
        spec = self._spec(module, args, **_defaults(options))
        spec["sweep"] = [
            {"name": name, "values": [_param_value(v) for v in values]}
            for name, values in params.items()
        ]
        return self._submit_job(spec, max_failures)

    def submit_params(
        self,
        module: Module,
        param_sets: Iterable[Mapping[str, Any]],
        args: Sequence[str] = (),
        *,
        max_failures: Optional[int] = None,
        **options: Any,
    ) -> Job:
        """Submits a job of one task per mapping of ``param_sets``, as ``corral submit
        --params`` does with a JSON Lines file. ``options`` are :meth:`submit`'s."""
        spec = self._spec(module, args, **_defaults(options))
        spec["params"] = [
            {name: _param_value(v) for name, v in dict(ps).items()} for ps in param_sets
        ]
        return self._submit_job(spec, max_failures)

    # ----- following ---------------------------------------------------------------------

    def get(self, handle: Handle) -> Dict[str, Any]:
        """The task's or job's record as ``corral task get -o json`` or ``corral job get -o
        json`` prints it."""
        kind = "jobs" if _is_job(handle) else "tasks"
        return self._json("GET", f"/v1/{kind}/{_path_id(handle)}")

    def kill(self, handle: Handle) -> Dict[str, Any]:
        """Kills a task, or every task of a job that has not ended; returns the record."""
        kind = "jobs" if _is_job(handle) else "tasks"
        return self._json("POST", f"/v1/{kind}/{_path_id(handle)}/kill")

    def wait(
        self,
        handle: Handle,
        *,
        timeout: Optional[float] = None,
        progress: Optional[bool] = None,
        interval: float = 0.5,
    ) -> Dict[str, Any]:
        """Waits until the task or job has ended and returns its record.

        It looks every 5 ms at first, then less often, up to every ``interval`` seconds, and
        rides out a host it cannot reach (restarting) for up to 2 minutes. A job shows a
        progress bar in a terminal or a notebook (tqdm's when installed) unless ``progress``
        is False; ``progress=True`` shows one elsewhere too. Raises :class:`TimeoutError`
        after ``timeout`` seconds.
        """
        job = _is_job(handle)
        ended = JOB_ENDED if job else TASK_ENDED
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Progress.make(progress) if job else None
        pause = 0.005
        unreachable_since: Optional[float] = None
        try:
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                try:
                    record = self._json(
                        "GET",
                        f"/v1/{'jobs' if job else 'tasks'}/{_path_id(handle)}",
                        timeout=None if left is None else min(left, self.timeout),
                    )
                    unreachable_since = None
                except CorralError as e:
                    if e.code != "unavailable":
                        raise
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > UNREACHABLE_FOR:
                        raise
                    record = None
                if record is not None:
                    if bar is not None:
                        bar.update(record)
                    if record["state"] in ended:
                        return record
                if deadline is not None and time.monotonic() >= deadline:
                    state = record["state"] if record else "the host unreachable"
                    raise TimeoutError(f"{_handle_id(handle)} has not ended after {timeout} s ({state})")
                time.sleep(pause if left is None else min(pause, left))
                pause = min(pause * 2, interval)
        finally:
            if bar is not None:
                bar.close()

    def output(self, task: Handle) -> Dict[str, Any]:
        """An ended task's output: ``stdout``, ``stderr`` (text), their ``*_truncated`` flags
        and ``files`` (``path`` and ``data`` as bytes, when it kept output files)."""
        out = self._json("GET", f"/v1/tasks/{_path_id(task)}/output?files=true")
        for f in out.get("files", []):
            f["data"] = base64.b64decode(f.pop("data_base64", ""))
        return out

    def results(self, job: Handle) -> List[Dict[str, Any]]:
        """One dict per task of the job, in index order, as ``corral job results`` prints:
        ``index``, ``task_id``, ``params``, ``state``, ``outcome``, ``exit_code``,
        ``message``, ``attempts``, ``fuel_used``, ``wall_ms``, ``peak_memory_bytes`` and
        ``result`` (the task's stdout parsed when it is one JSON object, else its text)."""
        if not _is_job(job):
            raise TypeError(f"{_handle_id(job)} is a task: results() gathers a job's")
        return list(self._lines(f"/v1/jobs/{_path_id(job)}/results"))

    def results_frame(self, job: Handle) -> "pandas.DataFrame":
        """:meth:`results` as a pandas DataFrame, ``params`` and object results spread into
        ``params.<name>`` and ``result.<key>`` columns. Needs pandas."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "results_frame() needs pandas: pip install pandas (or ./clients/python[pandas])"
            ) from None
        rows = self.results(job)
        for row in rows:
            if not isinstance(row.get("result"), dict):
                row["result"] = {"text": row.get("result")}
        return pandas.json_normalize(rows)

    # ----- listing -----------------------------------------------------------------------

    def _pages(self, kind: str, query: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        query = {k: v for k, v in query.items() if v is not None}
        while True:
            page = self._json("GET", f"/v1/{kind}?{urllib.parse.urlencode(query)}")
            yield from page[kind]
            if not page["next_page_token"]:
                return
            query["page_token"] = page["next_page_token"]

    def tasks(
        self,
        *,
        state: Optional[str] = None,
        job: Optional[Handle] = None,
        tenant: Optional[str] = None,
        name: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """Tasks in id order, filtered as ``corral tasks`` filters them."""
        query = {
            "state": state,
            "job": None if job is None else _handle_id(job),
            "tenant": tenant,
            "name": name,
        }
        return list(itertools.islice(self._pages("tasks", query), limit))

    def jobs(self, *, tenant: Optional[str] = None, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """Jobs in id order, as ``corral jobs -o json`` lists them."""
        return list(itertools.islice(self._pages("jobs", {"tenant": tenant}), limit))

    def healthy(self) -> bool:
        """Whether the host answers ``/healthz``."""
        try:
            with self._open("GET", "/healthz", timeout=5) as response:
                return response.status == 200 and response.read() == b"ok\n"
        except (CorralError, http.client.HTTPException, OSError):
            return False


def _defaults(options: Dict[str, Any]) -> Dict[str, Any]:
    """:meth:`Client.submit`'s keyword options, each given or its default; an unknown one is a
    TypeError naming it."""
    known = {
        "name": None,
        "tenant": None,
        "env": None,
        "stdin": None,
        "fuel": None,
        "memory": None,
        "timeout": None,
        "max_output": None,
        "max_disk": None,
        "retries": None,
        "retry_failed": False,
        "outputs": False,
        "labels": None,
        "constraints": None,
        "idempotency_key": None,
    }
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(unknown)}")
    known.update(options)
    return known


class _Progress:
    """A job's progress: tqdm's bar when tqdm is installed, else a line rewritten on a
    terminal's stderr, or a text display updated in place in a notebook. Shown in a terminal
    or a notebook, or anywhere when asked for."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._bar: Any = None
        self._display: Any = None
        self._ended = 0

    @staticmethod
    def _in_notebook() -> bool:
        return "ipykernel" in sys.modules

    @classmethod
    def make(cls, wanted: Optional[bool]) -> Optional["_Progress"]:
        if wanted is False:
            return None
        if not (wanted or sys.stderr.isatty() or cls._in_notebook()):
            return None
        try:
            import tqdm.auto  # noqa: F401

            return cls("tqdm")
        except ImportError:
            pass
        if cls._in_notebook():
            try:
                import IPython.display  # noqa: F401

                return cls("notebook")
            except ImportError:
                pass
        return cls("line")

    def update(self, job: Dict[str, Any]) -> None:
        counts = job.get("counts", {})
        ended, total = job.get("ended", 0), job.get("task_count", 0)
        failed = counts.get("failed", 0) + counts.get("lost", 0)
        running = counts.get("running", 0) + counts.get("assigned", 0)
        message = (
            f"{counts.get('finished', 0)} finished, {failed} failed, {running} running, "
            f"{counts.get('pending', 0)} pending"
        )
        if self._kind == "tqdm":
            from tqdm.auto import tqdm

            if self._bar is None:
                self._bar = tqdm(total=total, unit="task", desc=job["id"], leave=False)
            self._bar.update(ended - self._ended)
            self._ended = ended
            self._bar.set_postfix_str(message)
            return
        width = 30
        filled = width * ended // total if total else 0
        bar = f"[{'=' * filled}{' ' * (width - filled)}]"
        line = f"{job['id']} {bar} {ended}/{total} ended ({message})"
        if self._kind == "notebook":
            from IPython.display import display

            if self._display is None:
                self._display = display(line, display_id=True)
            else:
                self._display.update(line)
            return
        columns = shutil.get_terminal_size((80, 24)).columns
        sys.stderr.write("\r" + line[: max(columns - 1, 10)] + "\x1b[K")
        sys.stderr.flush()
        self._ended = max(self._ended, 1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._kind == "line" and self._ended:
            sys.stderr.write("\n")
            sys.stderr.flush()
