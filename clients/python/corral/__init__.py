"""A client of Corral, the WebAssembly task cluster: submit tasks, arrays and sweeps, wait for
them and gather their results, over the host's HTTP/JSON API.

    >>> import corral
    >>> client = corral.Client("http://127.0.0.1:7700")   # token from CORRAL_TOKEN
    >>> job = client.submit_sweep("logreg.wasm", params={"lr": [0.05, 0.5]},
    ...                           args=["--json", "--learning-rate", "{lr}"])
    >>> client.wait(job)
    >>> client.results(job)
"""

from .client import DEFAULT_HOST, Client, Job, Task
from .errors import (
    CorralError,
    FailedPrecondition,
    InvalidArgument,
    InvalidModule,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TlsError,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_HOST",
    "Client",
    "Job",
    "Task",
    "CorralError",
    "FailedPrecondition",
    "InvalidArgument",
    "InvalidModule",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TlsError",
    "Unauthenticated",
    "Unavailable",
]
