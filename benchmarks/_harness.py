"""Shared pieces of the benchmarks that drive a real ``vpetl serve`` process over HTTP (hot_swap, serve_load).

- :func:`make_adapter` / :func:`make_clip`: a perturbed adapter file and a small mp4 body;
- :class:`ServeProcess`: ``vpetl serve`` as a child in its own process group (so the Ray engine's helpers go with
  it), ready once ``/readyz`` answers 200, stopped with SIGINT (graceful: Ray Serve shut down, Redis left alone)
  and then SIGKILL for anything of its own that is still alive.

Not a benchmark itself (``vpetl bench`` skips files starting with ``_``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

VPETL = str(Path(sys.executable).parent / "vpetl")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_adapter(backbone: Any, seed: int, task: str, labels: Sequence[str], *, noise: float = 0.3) -> bytes:
    """A ``bapat`` adapter file for ``backbone`` (a name, or a Backbone built with another input spec) whose
    weights are perturbed by ``seed`` (so tasks differ)."""
    import torch

    from vpetl.petl import create_model
    from vpetl.petl.io import adapter_bytes

    model = create_model(backbone, "bapat", len(labels), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    return adapter_bytes(model, task=task, labels=list(labels))


def make_clip(path: Path, *, frames: int = 16, size: int = 64, seed: int = 0) -> bytes:
    """The bytes of a random (frames × size² RGB) mp4 written to ``path``."""
    import numpy as np

    from vpetl.data.synth import write_mp4

    video = (np.random.default_rng(seed).random((frames, size, size, 3)) * 255).astype("uint8")  # (T, H, W, 3)
    write_mp4(path, video)
    return path.read_bytes()


class ServeProcess:
    """``vpetl serve --engine ENGINE --port PORT --redis-url URL ARGS…`` in its own session, logging to ``log``.

    Use as a context manager: ``__enter__`` starts it and waits for ``/readyz``; ``__exit__`` stops it.
    """

    def __init__(
        self,
        engine: str,
        redis_url: str,
        args: Sequence[str],
        log: Path,
        *,
        torch_threads: int = 1,
        ready_timeout_s: float = 240.0,
    ) -> None:
        self.engine, self.redis_url, self.args, self.log = engine, redis_url, list(args), log
        self.torch_threads, self.ready_timeout_s = torch_threads, ready_timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeProcess:
        """Start the process (returns at once; :meth:`wait_ready` waits)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}  # only the settings given here
        env.update({"VPETL_TORCH_THREADS": str(self.torch_threads), "RAY_USAGE_STATS_ENABLED": "0"})
        cmd = [VPETL, "serve", "--engine", self.engine, "--port", str(self.port), "--redis-url", self.redis_url,
               *self.args]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._started = time.monotonic()
        return self

    def wait_ready(self) -> ServeProcess:
        """Block until ``/readyz`` answers 200; RuntimeError (with the log's tail) if it exits or times out."""
        assert self.proc is not None
        deadline = self._started + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vpetl serve ({self.engine}) exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.ready_s = time.monotonic() - self._started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"vpetl serve ({self.engine}) not ready after {self.ready_timeout_s:g} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGINT to the process group, wait; then SIGKILL the group and any descendant that left it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        descendants = _descendants(proc.pid)
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(10)
        for child in descendants:  # anything of ours that left the group (psutil checks the pid was not reused)
            with contextlib.suppress(Exception):
                if child.is_running():
                    child.kill()

    def __enter__(self) -> ServeProcess:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _descendants(pid: int) -> list:  # list[psutil.Process]; psutil comes with Ray, and is optional here
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


def median_time(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> tuple[float, float]:
    """(median seconds, spread = (max − min) / median) of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med


def alternate(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median time per arm, arms interleaved A, B, C, A, B, C … so machine noise hits them alike."""
    for fn in arms.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), (max(v) - min(v)) / statistics.median(v)) for k, v in times.items()}


class RayCluster:
    """A local multi-node Ray cluster (``ray.cluster_utils.Cluster``: a 0-CPU head, as the KubeRay manifest, plus
    ``nodes`` worker nodes of ``node_cpus`` CPUs) serving the vpetl app built by ``server.ray_app.build_app``.

    Use as a context manager; :meth:`deploy` (re)deploys with given Settings args and waits for the replicas.
    """

    def __init__(self, tmp: Path, *, nodes: int = 2, node_cpus: int = 1) -> None:
        self.tmp, self.nodes, self.node_cpus = tmp, nodes, node_cpus
        self.port = free_port()
        self.cluster: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RayCluster:
        os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for i in range(self.nodes):  # each node a data dir of its own
            self.cluster.add_node(num_cpus=self.node_cpus, env_vars={"VPETL_DATA_DIR": str(self.tmp / f"node-{i}")})
        ray.init(address=self.cluster.address, log_to_driver=False, logging_level="ERROR")
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        return self

    def deploy(self, app_args: dict[str, Any], replicas: int, *, spread: bool = True, timeout_s: float = 300) -> None:
        """Deploy ``build_app(app_args)`` and wait for ``replicas`` running predictors (on as many nodes)."""
        from ray import serve

        from server.ray_app import APP_NAME, build_app

        serve.run(build_app({**app_args, "replicas": replicas}), name=APP_NAME, route_prefix="/")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            running = self.replicas()
            if len(running) == replicas and (not spread or len({r["node_id"] for r in running}) == replicas):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{replicas} predictor replica(s) not running after {timeout_s:g} s")

    @staticmethod
    def replicas() -> list[dict[str, Any]]:
        """Running predictor replicas (id, actor name, node) as Serve reports them."""
        from ray.serve.context import _get_global_client

        from server.ray_app import APP_NAME, PREDICTOR

        details = _get_global_client().get_serve_details()
        deployment = details["applications"][APP_NAME]["deployments"][PREDICTOR]
        return [r for r in deployment["replicas"] if r["state"] == "RUNNING"]

    @staticmethod
    def kill(replica: dict[str, Any]) -> None:
        """Kill one replica's process the way a node failure would (Serve starts a replacement)."""
        import ray

        ray.kill(ray.get_actor(replica["actor_name"], namespace="serve"), no_restart=True)

    def __exit__(self, *exc: object) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()
