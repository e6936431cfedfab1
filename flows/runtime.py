"""The embedded defaults a flow runs on when nothing is configured: one local Prefect server for the whole run
(bound to 127.0.0.1, on Prefect's own home so its database keeps the history; Dask workers point at it instead of
each starting a temporary server of their own), and a
local Dask cluster sized so that workers x torch threads does not oversubscribe the cores, or, when the tasks
run on CUDA, one worker per visible GPU, each holding one `GPU` resource and its tasks pinned to its device."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from generalad.errors import GeneralADError

__all__ = [
    "local_prefect_server",
    "ensure_prefect_api",
    "PrefectApi",
    "api_for_subprocesses",
    "DaskPlan",
    "plan_dask",
    "gpu_lanes",
    "worker_device",
    "SchedulerUnreachable",
    "check_scheduler",
    "OFFLINE_ENV",
]

# No telemetry, ever (docs/design.md "Orchestration": the server sends analytics unless told not to).
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
_START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:  # noqa: S310 - loopback only
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_prefect_server(
    home: str | os.PathLike | None = None, *, log: str | os.PathLike | None = None
) -> Iterator[str]:
    """Start `prefect server start` on 127.0.0.1 (a free port, its own PREFECT_HOME), yield its API URL, stop it.

    Args:
        home: PREFECT_HOME of the server (its SQLite database); a temporary folder when None.
        log: file for the server's output; discarded when None.
    """
    tmp = None if home is not None else tempfile.TemporaryDirectory(prefix="generalad-prefect-")
    home_path = Path(home) if home is not None else Path(tmp.name)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = os.environ | OFFLINE_ENV | {"PREFECT_HOME": str(home_path)}
    env.pop("PREFECT_API_URL", None)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
        ],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _healthy(api_url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"the local Prefect server exited with code {process.returncode} while starting"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect server did not answer within {_START_TIMEOUT_S:.0f} s")
            time.sleep(0.25)
        yield api_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if log:
            out.close()
        if tmp is not None:
            tmp.cleanup()


@dataclass(frozen=True)
class PrefectApi:
    """The Prefect API a command talks to: `url`, and for the embedded server the PREFECT_HOME whose database keeps
    the run history and artifacts (None for a configured server)."""

    url: str
    home: Path | None = None

    def open_ui_hint(self) -> str:
        """How to look at the runs afterwards (printed as the command's last lines)."""
        if self.home is None:
            return f"Runs and artifacts: the Prefect UI of {self.url.removesuffix('/api')}"
        return (
            f"Runs and artifacts are kept in {self.home / 'prefect.db'}; to browse them, run\n"
            f"  PREFECT_HOME={self.home} prefect server start\n"
            "and open http://127.0.0.1:4200"
        )


@contextlib.contextmanager
def ensure_prefect_api() -> Iterator[PrefectApi]:
    """The Prefect API as Prefect resolves it (PREFECT_API_URL from the environment, else the active profile, as
    `prefect config set PREFECT_API_URL=...` writes it); with none, a local server for the block on Prefect's
    own home (PREFECT_HOME, default ~/.prefect), whose database keeps the runs and artifacts afterwards.

    Inside the block, this process (through Prefect's settings) and processes started from it (through
    PREFECT_API_URL in the environment: Dask workers) talk to that API.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    configured = settings.api.url
    if configured:
        yield PrefectApi(str(configured).rstrip("/"))
        return
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    with local_prefect_server(home, log=home / "generalad-server.log") as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # inherited by Dask worker processes started after this
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                yield PrefectApi(api_url, home)
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def api_for_subprocesses() -> Iterator[str]:
    """Within a flow: make sure processes started in the block (Dask workers) report to this flow's Prefect API.

    They inherit os.environ. When PREFECT_API_URL is not in it (Prefect's temporary server, started by the
    flow's own client), each Dask worker would start a temporary server of its own (docs/design.md
    "Orchestration": the cold start doubles); so the block exports the URL the flow's client talks to, and removes
    it again afterwards.
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        api_url = str(client.api_url).rstrip("/")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@dataclass(frozen=True)
class DaskPlan:
    """Where per-class tasks run: an existing scheduler (`address`) or a LocalCluster of `n_workers`.

    `torch_threads` is what each task sets (None on an existing cluster: its workers' cores are not ours to
    count, their own torch setting stays). `gpus`: 0 for CPU tasks; else each worker holds one `GPU` resource,
    every task asks for one (`task_resources`), and a task on worker k trains on `cuda:k` (`worker_device`).
    A LocalCluster binds its scheduler, workers and dashboard to 127.0.0.1 only.
    """

    address: str | None
    n_workers: int
    torch_threads: int | None
    gpus: int = 0

    @property
    def task_resources(self) -> dict[str, int] | None:
        """What each task asks the scheduler for (`dask.annotate(resources=...)`); None on CPU plans."""
        return {"GPU": 1} if self.gpus else None

    def runner_kwargs(self) -> dict:
        if self.address:
            return {"address": self.address}
        kwargs = {
            "n_workers": self.n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        }
        if self.gpus:
            kwargs["resources"] = {"GPU": 1}
        return {"cluster_kwargs": kwargs}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def gpu_lanes(device: str = "auto", gpu_count: int | None = None) -> int:
    """How many GPUs tasks on `device` spread over: every visible one for auto/cuda, one for cuda:N, 0 for CPU.

    `gpu_count` fakes the visible count (tests); default `generalad.devices.cuda_count()`.
    """
    from generalad.devices import cuda_count

    count = cuda_count() if gpu_count is None else gpu_count
    name = (device or "auto").strip().lower()
    if name in ("auto", "cuda"):
        return count
    return 1 if name.startswith("cuda:") and count else 0


def plan_dask(
    n_tasks: int,
    *,
    address: str | None = None,
    n_workers: int | None = None,
    device: str = "cpu",
    gpu_count: int | None = None,
) -> DaskPlan:
    """Size the cluster. CPU tasks: one worker per task up to the core count, torch threads = cores // workers
    (>= 1). CUDA tasks (`device` auto/cuda with GPUs visible, or cuda:N): one worker per GPU (up to the task
    count), each with one GPU resource, torch threads = cores // workers for the host-side work.

    `address` (default `$DASK_SCHEDULER_ADDRESS`) names an existing scheduler to use instead; its workers must
    declare `--resources GPU=1` for a GPU plan. `gpu_count` fakes the visible GPU count (tests).
    """
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    gpus = gpu_lanes(device, gpu_count)
    if address:
        return DaskPlan(address=address, n_workers=0, torch_threads=None, gpus=gpus)
    cores = _cores()
    limit = gpus or cores
    workers = n_workers or max(1, min(n_tasks, limit))
    if gpus:
        workers = min(workers, gpus)  # never two workers on one GPU's resource
    return DaskPlan(
        address=None, n_workers=workers, torch_threads=max(1, cores // workers), gpus=min(gpus, workers)
    )


def worker_device(device: str, gpus: int) -> str:
    """The device a task runs on: on a multi-GPU plan, `cuda:<k>` for the task's Dask worker k (the LocalCluster
    names its workers 0..n-1); otherwise `device` unchanged."""
    name = (device or "auto").strip().lower()
    if gpus <= 1 or name not in ("auto", "cuda"):
        return device
    try:
        from distributed import get_worker

        worker_name = get_worker().name
    except (ImportError, ValueError):  # not inside a Dask worker
        return device
    try:
        return f"cuda:{int(worker_name) % gpus}"
    except (TypeError, ValueError):  # an external cluster's named workers: hash the name onto a GPU
        return f"cuda:{sum(map(ord, str(worker_name))) % gpus}"


class SchedulerUnreachable(GeneralADError):
    """The Dask scheduler named by `dask_address` / DASK_SCHEDULER_ADDRESS does not answer."""


SCHEDULER_TIMEOUT_S = 5.0


def check_scheduler(address: str | None = None, *, timeout_s: float = SCHEDULER_TIMEOUT_S) -> str | None:
    """The scheduler address a run will use (`address`, else `$DASK_SCHEDULER_ADDRESS`, else None for a
    LocalCluster), after checking that something accepts connections there within `timeout_s`.

    Without this check a wrong address costs distributed's connect timeout (30 s by default) per attempt, after
    the extraction has already run; with it the flow fails at once, naming the address.

    Raises:
        SchedulerUnreachable: nothing listens at the address (refused, unroutable, timed out), or it is not a
            `host:port` address.
    """
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if not address:
        return None
    if address.startswith("inproc://"):
        return address  # a scheduler in this very process: nothing to connect to
    fix = "start the scheduler, or unset dask_address / DASK_SCHEDULER_ADDRESS to use a LocalCluster"
    try:
        parts = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        host, port = None, exc
    if not host or not isinstance(port, int):
        raise SchedulerUnreachable(f"{address!r} is not a Dask scheduler address (host:port); {fix}")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise SchedulerUnreachable(
            f"no Dask scheduler answers at {address} within {timeout_s:g} s ({exc}); {fix}"
        ) from exc
    return address


def new_run_id(prefix: str) -> str:
    """A run id that sorts by start time and never collides: `<prefix>-<UTC stamp>-<6 hex>`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"
