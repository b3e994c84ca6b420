"""The client: Corral's HTTP/JSON API over the standard library's ``urllib``."""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import math
import numbers
import os
import posixpath
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
    BinaryIO,
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

from .errors import CorralError, NotFound, error_for

if TYPE_CHECKING:  # pragma: no cover
    import pandas

#: A module: a path to a ``.wasm`` or ``.wat`` file, or its bytes.
Module = Union[str, os.PathLike, bytes, bytearray]

#: A shared input: a file's path, mounted read-only in the task at ``/input/<its base name>``,
#: or a ``(path, guest_path)`` pair naming the absolute path the task sees it at.
Input = Union[str, os.PathLike, Tuple[Union[str, os.PathLike], str]]

#: Where an input given by its path alone is mounted in the task: ``/input/<base name>``.
INPUT_DIR = "/input"

#: How long an input's upload may wait on one socket operation (sending a block of the file,
#: the host's answer once it has the whole file) before it gives up, in seconds.
UPLOAD_TIMEOUT = 3600.0

#: The blocks a file is read in to hash it and to send it.
_BLOCK = 1 << 20

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


def _guest_path_problem(path: str) -> Optional[str]:
    """What is wrong with ``path`` as an input's guest path, if anything, by the host's rules:
    absolute, in a directory (not ``/`` itself), with no empty, ``.`` or ``..`` component, no
    control character, at most 256 bytes, and not in the task's output directory."""
    if len(path.encode("utf-8", "surrogatepass")) > 256:
        return "is over 256 bytes"
    if not path.startswith("/"):
        return "is not absolute (as /input/data.csv)"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in path):
        return "holds a control character"
    parts = path[1:].split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, `.` or `..` component"
    if len(parts) < 2:
        return "is not in a directory (as /input/data.csv)"
    if parts[0] == "output":
        return "is in the output directory /output"
    return None


def _input_pairs(inputs: Optional[Sequence[Input]]) -> List[Tuple[str, str]]:
    """``inputs`` as ``(absolute local path, guest path)`` pairs, checked before anything is
    uploaded: each a file that exists, each at a guest path the host takes, no two at one
    path or one inside the other's."""
    if inputs is None:
        return []
    if isinstance(inputs, (str, bytes, bytearray, os.PathLike)):
        raise TypeError("inputs is a sequence of paths or (path, guest_path) pairs, not one path")
    pairs: List[Tuple[str, str]] = []
    taken: Dict[str, str] = {}
    for item in inputs:
        guest: Optional[str] = None
        local: Any = item
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise TypeError(f"input {item!r}: give a path or a (path, guest_path) pair")
            local, guest = item
            if not isinstance(guest, str):
                raise TypeError(f"input {item!r}: the guest path is a str")
        if not isinstance(local, (str, os.PathLike)):
            raise TypeError(f"input {item!r}: give a path (str or os.PathLike) of a file")
        path = os.fspath(local)
        if not isinstance(path, str):
            raise TypeError(f"input {item!r}: give the path as a str, not bytes")
        path = os.path.abspath(path)
        os.stat(path)  # FileNotFoundError naming it when it is missing
        if not os.path.isfile(path):
            raise ValueError(f"input {path} is not a file")
        if guest is None:
            guest = posixpath.join(INPUT_DIR, os.path.basename(path))
        problem = _guest_path_problem(guest)
        if problem is not None:
            raise ValueError(f"input {path}: its guest path {guest!r} {problem}")
        for other, other_path in taken.items():
            if guest == other:
                raise ValueError(
                    f"inputs {other_path} and {path} have the same guest path {guest}: "
                    "give one of them another, as a (path, guest_path) pair"
                )
            if guest.startswith(other + "/") or other.startswith(guest + "/"):
                raise ValueError(f"inputs at {other} and {guest} overlap: one is inside the other")
        taken[guest] = path
        pairs.append((path, guest))
    return pairs


def _sha256_of(file: BinaryIO, size: int) -> str:
    """The sha256 (lowercase hex) of the next ``size`` bytes of ``file``, read in blocks."""
    digest = hashlib.sha256()
    left = size
    while left > 0:
        block = file.read(min(_BLOCK, left))
        if not block:
            raise RuntimeError(
                f"{getattr(file, 'name', 'the file')} ended {left} bytes short of its size: "
                "it changed while being read"
            )
        digest.update(block)
        left -= len(block)
    return digest.hexdigest()


class _Body:
    """A file as a request's body: its next ``length`` bytes, read as they are sent, so that
    the body never is whole in memory, and what goes out is what ``Content-Length`` says even
    when the file grows meanwhile. A file that ends sooner is a RuntimeError rather than a
    request the host waits on for the rest."""

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        block = self._file.read(self._left if size is None or size < 0 else min(size, self._left))
        if not block:
            raise RuntimeError(
                f"{getattr(self._file, 'name', 'the body')} ended {self._left} bytes short of "
                "its size: it changed while being sent"
            )
        self._left -= len(block)
        return block


if TYPE_CHECKING:  # pragma: no cover
    _Connection = http.client.HTTPConnection
else:
    _Connection = object


class _AnswerRead(_Connection):
    """A connection that reads the host's answer after the host stopped taking a request's
    body. A host refusing an upload (over a size cap, a tenant over its storage) may answer
    before it has read the body, and close: sending the rest then fails with a broken pipe, a
    reset or (over TLS) an EOF, and what the caller should be told is the host's answer, not
    that failure. When there is no answer to read, ``getresponse()`` fails as for a host that
    went away."""

    _sent = False

    def send(self, data: Any) -> None:
        super().send(data)
        self._sent = True

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: Optional[Mapping[str, Any]] = None,
        *,
        encode_chunked: bool = False,
    ) -> None:
        try:
            super().request(
                method, url, body, {} if headers is None else headers, encode_chunked=encode_chunked
            )
        except (BrokenPipeError, ConnectionAbortedError, ConnectionResetError, ssl.SSLEOFError):
            if not self._sent:  # nothing got there: no answer to read
                raise


class _HTTPConnection(_AnswerRead, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_AnswerRead, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, blocksize=_BLOCK)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: Optional[ssl.SSLContext]) -> None:
        super().__init__(context=context)
        self._corral_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _HTTPSConnection, req, context=self._corral_context, blocksize=_BLOCK
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
        # Inputs' digests, computed once per file version: (path, size, mtime) -> sha256.
        self._digests: Dict[Tuple[str, int, int], str] = {}
        # urllib's handlers, with connections that read a host's answer to a cut upload.
        self._opener = urllib.request.build_opener(_HTTPHandler(), _HTTPSHandler(self._ssl))

    def __repr__(self) -> str:
        return f"corral.Client({self.host!r})"

    # ----- the wire ----------------------------------------------------------------------

    def _open(
        self,
        method: str,
        path: str,
        body: Union[bytes, BinaryIO, None] = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: Optional[float] = None,
        length: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> http.client.HTTPResponse:
        """Makes a request and returns the host's answer; a refusal is raised as the
        :class:`CorralError` it names. ``body`` is bytes, or an open binary file whose next
        ``length`` bytes are sent as they are read (with that ``Content-Length``); ``headers``
        are added to the request's; ``timeout`` (default the client's) bounds each socket
        operation, not the whole request."""
        data: Any = body
        if body is not None and not isinstance(body, (bytes, bytearray)):
            if length is None:
                raise TypeError("a file body needs its length")
            data = _Body(body, length)
        request = urllib.request.Request(self.host + path, data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
            if length is not None:
                request.add_header("Content-Length", str(length))
        request.add_header("Accept", accept)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            response: http.client.HTTPResponse = self._opener.open(
                request, timeout=self.timeout if timeout is None else timeout
            )
            return response
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
                507: "resource_exhausted",
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

    # ----- inputs ------------------------------------------------------------------------

    def upload_input(self, path: Union[str, os.PathLike]) -> str:
        """Uploads a file as a shared input, for tasks to read (see ``inputs=`` of
        :meth:`submit`), and returns its sha256.

        The file's sha256 is computed in blocks, once per version of the file (its path,
        device, inode, size and modification and change times) for this client, and again
        after a failed upload. When the host already holds the input for the
        caller's tenant, nothing is sent; otherwise the file is streamed, never whole in
        memory, so it may be of any size the host takes. A file over the host's cap is refused
        (:class:`corral.InvalidArgument`), as is one over the tenant's storage
        (:class:`corral.ResourceExhausted`).
        """
        local = os.path.abspath(os.fspath(path))
        with open(local, "rb") as file:
            stat = os.fstat(file.fileno())
            size = stat.st_size
            # A rewrite that keeps the size and the modification time (cp -p, rsync -a) still
            # changes the change time, or the inode when the file was replaced.
            key = (local, stat.st_dev, stat.st_ino, size, stat.st_mtime_ns, stat.st_ctime_ns)
            sha256 = self._digests.get(key)
            if sha256 is None:
                sha256 = _sha256_of(file, size)
                file.seek(0)
                self._digests[key] = sha256
            try:
                self._json("GET", f"/v1/inputs/{sha256}")
                return sha256  # the host has it already
            except NotFound:
                pass
            try:
                with self._open(
                    "POST",
                    "/v1/inputs",
                    file,
                    content_type="application/octet-stream",
                    length=size,
                    headers={"X-Corral-Sha256": sha256},
                    timeout=max(self.timeout, UPLOAD_TIMEOUT),
                ) as response:
                    try:
                        answer = json.loads(response.read())
                    except (http.client.HTTPException, OSError) as e:
                        raise self._unreachable(e) from None
            except BaseException:
                # The file may have changed under its digest: hashed again next time.
                self._digests.pop(key, None)
                raise
        return str(answer["sha256"])

    def inputs(self) -> Dict[str, Any]:
        """The caller's tenant's shared inputs: ``{"inputs": [...], "used_bytes": N,
        "limit_bytes": N or None, "truncated": bool}``, each input a dict of ``sha256``,
        ``size_bytes``, ``tasks``, ``fetches`` and ``last_used_ms`` (the tenant's own use).
        A small input takes 4 KiB of the storage."""
        answer: Dict[str, Any] = self._json("GET", "/v1/inputs")
        return answer

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
        inputs: Optional[Sequence[Input]],
    ) -> Dict[str, Any]:
        if isinstance(args, str):
            raise TypeError("args is a sequence of strings, not one string")
        pairs = _input_pairs(inputs)  # all checked before anything is uploaded
        spec: Dict[str, Any] = {
            "module_sha256": self.upload(module),
            "args": [str(a) for a in args],
        }
        if pairs:
            spec["inputs"] = [
                {"sha256": self.upload_input(local), "path": guest} for local, guest in pairs
            ]
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
        inputs: Optional[Sequence[Input]] = None,
    ) -> Task:
        """Submits one task running ``module`` with ``args`` (its ``argv[1:]``).

        ``memory`` (bytes) is the task's linear-memory cap and what it reserves; ``timeout``
        is in seconds; ``fuel``, ``max_output`` and ``max_disk`` are as for ``corral submit``;
        what is left out takes the host's defaults. ``stdin`` is text or bytes.

        ``inputs`` are files the task reads, each uploaded once (:meth:`upload_input`) and
        mounted read-only: a path is mounted at ``/input/<its base name>``, a ``(path,
        guest_path)`` pair at the absolute ``guest_path`` (in a directory, not in
        ``/output``). A guest path the host would refuse, or two inputs at one path (or one
        inside the other's), is a ValueError raised before anything is uploaded.
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
            inputs=inputs,
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
        ``{index}`` in its args replaced by ``i``. ``options`` are :meth:`submit`'s (its
        ``inputs`` are uploaded once and mounted in every task). With ``max_failures``, once
        that many tasks have failed the rest are killed."""
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
        "inputs": None,
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
