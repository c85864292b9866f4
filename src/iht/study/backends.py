"""Where a study's chunks are computed: in this process (``local``) or as Ray tasks (``ray``).

Either way the driver (this process) writes every part into the same results store, one part
per finished chunk, atomically; a backend only computes rows. So the store's guarantees
(resume, ``kill -9`` loses at most the chunks in flight, damaged parts recomputed) hold for
both, and a study can be started on one backend and finished on the other.

Ray is optional (``pip install "iht[ray]"``, or ``pip install -e ".[ray]"`` in a clone); this
module imports it only when the ``ray`` backend is used. The ``ray`` backend runs each chunk as
one remote task that returns its rows, in two waves: the dense chunks, then (once their parts
are stored) every other chunk, whose epsilon needs the dense losses. On a cluster::

    ray start --head                        # on the head node (then `ray start --address
                                            # HEAD:6379` on the others); iht, the same torch,
                                            # installed on every node
    iht reproduce iris --preset paper --backend ray --address auto          # on a node
    iht reproduce iris --preset paper --backend ray --address ray://HEAD:10001   # elsewhere

Ray 2.59+ starts clusters with token authentication; a ``ray://`` client then needs
``RAY_AUTH_MODE=token`` in its environment (and the cluster's token: ``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token``, see ``ray get-auth-token``). Without ``--address`` a local Ray is
started with one CPU per core and stopped at the end.
Each task is pinned to one CPU and one torch/numba thread, so tasks do not fight over cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Generator, Iterator, Sequence
from types import ModuleType
from typing import Any

import torch

from ..errors import BackendError
from ..storage.files import first_line
from .chunks import Chunk, run_chunk
from .config import BACKENDS, DENSE, StudyConfig
from .schema import RunRow

__all__ = [
    "BACKENDS",
    "RAY_INSTALL_HINT",
    "check_backend",
    "ray_chunks",
    "ray_session",
]

RAY_INSTALL_HINT = 'pip install "iht[ray]" (or pip install -e ".[ray]" in a clone of iht)'
#: Environment of every Ray worker: one thread each, as many workers as CPUs.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
#: How often (s) the driver wakes from ray.wait, so that Ctrl-C is seen promptly.
_WAIT_SECONDS = 0.5
#: How long to wait for a HOST:PORT given as --address to accept a connection.
_PROBE_SECONDS = 5.0

Rows = list[RunRow]


def check_backend(backend: str, address: str | None = None) -> None:
    """Fail early, before any work, if ``backend`` (with ``address``) cannot be used.

    Raises:
        BackendError: unknown backend, ``address`` without the ray backend, or Ray not
            installed.
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if address is not None and backend != "ray":
        raise BackendError(f"--address {address} needs --backend ray")
    if backend == "ray":
        _import_ray()


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise BackendError(
            f"the ray backend needs Ray, which is not installed; install it with {RAY_INSTALL_HINT}"
        ) from None
    return ray


def _chunk_task(config: StudyConfig, chunk: Chunk, dense_loss: dict[int, float] | None) -> Rows:
    """The body of one Ray task: one chunk's rows (the driver stores them)."""
    # OMP_NUM_THREADS in the worker's environment already does this for torch; being explicit
    # also covers a worker process that imported torch before the variable was set.
    torch.set_num_threads(1)
    return run_chunk(config, chunk, dense_loss)


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, log: Callable[[str], None] = lambda msg: None
) -> Iterator[ModuleType]:
    """Ray, initialised: as it is if it already was, else connected to ``address`` (or a new
    local Ray, one CPU per core, no dashboard) and shut down on exit.

    Raises:
        BackendError: Ray is not installed, or cannot be started or reached at ``address``.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        # "local": always a new Ray of our own, never a cluster that `ray start` left running
        # on this machine (ray.init() without an address would join that one).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        options.update(num_cpus=cores or 1, include_dashboard=False)
    where = f"at {address}" if address else "locally"
    try:
        _probe(address)
        ray.init(address=address or "local", **options)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError... depending on address
        hint = ""
        if address and address.startswith("ray://") and "timeout" in str(exc).lower():
            hint = "; if the cluster uses token authentication, set RAY_AUTH_MODE=token here too"
        raise BackendError(f"cannot start or reach Ray {where}: {first_line(exc)}{hint}") from None
    try:
        log(f"ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs {where}")
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str | None) -> None:
    """Fail in seconds on a HOST:PORT that does not answer (Ray itself retries for minutes)."""
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: let ray.init judge it
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_SECONDS).close()
    except OSError as exc:
        raise ConnectionError(
            f"nothing answers at {host}:{port} ({exc.strerror or exc}); start the cluster with "
            "`ray start --head`, or check the address"
        ) from None


def ray_chunks(
    ray: ModuleType,
    config: StudyConfig,
    todo: Sequence[Chunk],
    dense_losses: Callable[[], dict[int, float]],
) -> Generator[tuple[Chunk, Rows], None, None]:
    """Compute ``todo`` as Ray tasks; yield each chunk with its rows as soon as it finishes.

    ``ray`` is initialised (:func:`ray_session`). The dense chunks go first; the others are
    submitted once every dense chunk has been yielded, with ``dense_losses()`` called then:
    the caller stores each yielded chunk before taking the next, so the dense losses are read
    from the store, exactly as the local backend does. Closing the iterator early (an error,
    Ctrl-C) cancels the tasks still running.

    Raises:
        Exception: what a task raised (e.g. :class:`iht.errors.NonFiniteError`), unwrapped.
    """
    task = ray.remote(_chunk_task).options(num_cpus=1, runtime_env={"env_vars": dict(WORKER_ENV)})
    dense = [c for c in todo if c.kind == DENSE]
    rest = [c for c in todo if c.kind != DENSE]
    yield from _wave(ray, task, config, dense, None)
    if rest:
        yield from _wave(ray, task, config, rest, ray.put(dense_losses()))


def _wave(
    ray: ModuleType,
    task: Any,
    config: StudyConfig,
    chunks: list[Chunk],
    dense_loss: Any,
) -> Iterator[tuple[Chunk, Rows]]:
    """Submit ``chunks`` at once; yield them in the order they finish."""
    pending = {task.remote(config, chunk, dense_loss): chunk for chunk in chunks}
    try:
        while pending:
            # A timeout, so that the driver returns to Python (and sees Ctrl-C) regularly.
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_SECONDS)
            for ref in ready:
                chunk = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    # The task's own exception, without Ray's remote traceback around it, so
                    # that a user error stays one line on the command line.
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    raise cause from None
                yield chunk, rows
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
