"""vpetl on a real multi-node Ray cluster (two nodes on this machine), deployed from deploy/serve_config.yaml.

The head node has 0 CPUs (as in the KubeRay manifest), so the ingress and every predictor replica land on the
worker node, whose raylet has a data dir of its own. The backbone is registered once (`vpetl backbone register`)
and reaches the replicas through Redis; the training worker is another process with another data dir. Then, under
load from concurrent clients:

upload clips → job → worker publishes v1 → served; load raises the predictor replicas from 1 to 2 (autoscaling);
a new version published while both replicas serve reaches each of them within a second, with no replica going
back to the old version; one predictor replica is killed mid-load and no request fails (the ingress retries a
predict whose replica died, Serve replaces the replica); idle brings the replicas back to 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from vpetl.data.synth import synthesize
from vpetl.store import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BACKBONE = "videomae-tiny"
TOKEN = "cluster-secret"
APP, PREDICTOR = "vpetl", "VpetlPredictor"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPETL_", "RAY_ADDRESS"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    return env


@dataclass
class Stack:
    root: Path
    redis: EmbeddedRedis
    redis_url: str
    ray_address: str
    base: str
    env: dict[str, str]
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def run(self, name: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.root)

    def start(self, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                    start_new_session=True)  # fmt: skip
        self.procs.append((proc, log))

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.procs)


def _serve_config(path: Path, *, port: int, redis_url: str) -> Path:
    """deploy/serve_config.yaml itself, with only addresses and sizes overridden for a 2-core test machine."""
    config = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    (app,) = config["applications"]
    app["args"].update(
        host="127.0.0.1", redis_url=redis_url, backbone=BACKBONE, ingress_replicas=1, ingress_num_cpus=0.1,
        predictor_num_cpus=1, replicas=1, min_replicas=1, max_replicas=2, target_ongoing_requests=1,
        upscale_delay_s=1, downscale_delay_s=4, max_wait_ms=10, backbone_wait_s=120,
    )  # fmt: skip
    app["runtime_env"]["env_vars"]["VPETL_TORCH_THREADS"] = "1"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Stack]:
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    import ray
    import s3fs
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    # The object store the ingress writes clips to and the worker reads: a real S3 API server (moto), so the
    # ingress node, the worker and the driver share nothing on disk.
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing").mkdir("vpetl-cluster")
    s3_env = {"VPETL_CLIP_STORE": "s3://vpetl-cluster/clips", "AWS_ENDPOINT_URL": s3_endpoint,
              "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with EmbeddedRedis(root / "redis", port=_free_port()) as redis_server:
        url = redis_server.url
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        node_env = {"VPETL_DATA_DIR": str(root / "node-1"), "VPETL_ADMIN_TOKEN": TOKEN, **s3_env}
        cluster.add_node(num_cpus=3, env_vars=node_env)
        env = {**_base_env(), "VPETL_ADMIN_TOKEN": TOKEN}
        port = _free_port()
        stack = Stack(root, redis_server, url, cluster.address, f"http://127.0.0.1:{port}", env)
        try:
            # 1. the operator registers the deployment's backbone once (no node needs its file afterwards)
            reg = stack.run("register", [str(BIN / "vpetl"), "backbone", "register", "--redis-url", url,
                                         "--backbone", BACKBONE, "--data-dir", str(root / "operator"), "--json"])
            assert reg.returncode == 0, reg.stderr
            # 2. the app, from the repository's serve config
            config = _serve_config(root / "serve_config.yaml", port=port, redis_url=url)
            deploy = stack.run("deploy", [str(BIN / "serve"), "run", str(config), "--address", cluster.address,
                                          "--non-blocking"], timeout=180)  # fmt: skip
            assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-3000:]
            # 3. a training worker: another process, another data dir, the same Redis and object store
            stack.env = {**env, **s3_env}
            stack.start("worker", [str(BIN / "vpetl"), "worker", "--redis-url", url, "--backbone", BACKBONE,
                                   "--data-dir", str(root / "worker"), "--threads", "1"])  # fmt: skip
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(stack.base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "not ready\n" + stack.logs()
                time.sleep(0.5)
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            yield stack
        finally:
            for proc, _ in stack.procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait()
            try:
                from ray import serve

                serve.shutdown()
            except Exception:
                pass
            ray.shutdown()
            cluster.shutdown()


def _replicas(running_only: bool = True) -> list[dict[str, Any]]:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    replicas = details["applications"][APP]["deployments"][PREDICTOR]["replicas"]
    return [r for r in replicas if not running_only or r["state"] == "RUNNING"]


class Load:
    """Closed-loop clients posting one clip; every response recorded (time, status, version, replica)."""

    def __init__(self, base: str, clip: bytes, task: str, clients: int = 4) -> None:
        self.base, self.clip, self.task = base, clip, task
        self.stop = threading.Event()
        # (received, status, version, replica, error text, sent)
        self.results: list[tuple[float, int, int | None, str | None, str, float]] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        # every route needs the token once one is configured (issue 21), /predict included
        with httpx.Client(base_url=self.base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post("/predict", params={"task": self.task},
                                    files={"clip": ("c.mp4", self.clip, "video/mp4")})  # fmt: skip
                    body = r.json()
                    self.results.append((time.monotonic(), r.status_code, body.get("version"), body.get("replica"),
                                         r.text[:300] if r.status_code != 200 else "", sent))  # fmt: skip
                except httpx.HTTPError as e:
                    self.results.append((time.monotonic(), 0, None, None, repr(e), sent))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _wait(predicate: Any, timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{stack.logs()}"
        time.sleep(0.25)


def test_closed_loop_autoscaling_publish_and_replica_kill_on_two_nodes(stack: Stack, tmp_path: Path) -> None:
    import ray

    head = ray.get_runtime_context().gcs_address  # noqa: F841  (connected: the driver sees both nodes)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    head_id = next(n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) == 0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    http = httpx.Client(base_url=stack.base, timeout=60, headers=auth)

    # ---- upload clips, train on the worker, the replicas serve what it published
    data = synthesize("appearance", tmp_path / "clips", clips_per_class=3, seed=5, size=32, frames=(8, 12))
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())[:2]
    for label in classes:
        for i, path in enumerate(sorted((data / label).glob("*.mp4"))):
            split = "val" if i == 2 else "train"
            r = http.post("/datasets/cl/clips", params={"label": label, "split": split},
                          files={"clip": (path.name, path.read_bytes(), "video/mp4")})  # fmt: skip
            assert r.status_code in (200, 201), r.text
    job = http.post("/jobs", json={"task": "cl", "method": "bapat", "bottleneck": 8, "epochs": 2, "batch_size": 2})
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    _wait(lambda: http.get(f"/jobs/{job_id}").json()["state"] in ("succeeded", "failed"), 180, "the job", stack)
    done = http.get(f"/jobs/{job_id}").json()
    assert done["state"] == "succeeded" and done["version"] == 1, done
    clip = (data / classes[0] / sorted(p.name for p in (data / classes[0]).glob("*.mp4"))[0]).read_bytes()
    first = http.post("/predict", params={"task": "cl"}, files={"clip": ("c.mp4", clip, "video/mp4")})
    assert first.status_code == 200 and first.json()["version"] == 1, first.text

    # every replica is on the worker node, never on the 0-CPU head
    assert len(_replicas()) == 1 and all(r["node_id"] != head_id for r in _replicas())
    ready = http.get("/readyz").json()
    assert len(ready["replicas"]) == 1 and ready["replicas"][0]["node"] != head_id

    with Load(stack.base, clip, "cl", clients=4) as load:
        # ---- autoscaling: load raises the predictor replicas from 1 to 2
        _wait(lambda: len(_replicas()) == 2, 120, "a second predictor replica", stack)
        _wait(lambda: len({r[3] for r in load.results[-40:] if r[1] == 200}) == 2, 60, "both replicas serving", stack)
        replicas = {r["replica_id"] for r in _replicas()}
        assert all(r["node_id"] != head_id for r in _replicas())

        # ---- publish v2 while both serve: each replica switches within a second and never goes back
        from tests.server.conftest import make_adapter

        adapter = make_adapter("cl", seed=3, labels=classes)
        published = time.monotonic()  # before the PUT: the delay below includes the upload and its validation
        put = http.put("/adapters/cl", files={"adapter": ("a.safetensors", adapter)})
        assert put.status_code == 201 and put.json()["version"] == 2, put.text
        _wait(lambda: {r[3] for r in load.results if r[0] > published + 0.1 and r[2] == 2} >= replicas, 30,
              "v2 on every replica", stack)  # fmt: skip
        for replica in replicas:
            seen = [(t, v, sent) for t, s, v, rep, _, sent in load.results
                    if rep == replica and t > published and s == 200]  # fmt: skip
            first_v2 = next(t for t, v, _ in seen if v == 2)
            print(f"publish -> served on replica {replica}: {first_v2 - published:.3f} s")
            assert first_v2 - published <= 1.0 + 0.5, (replica, first_v2 - published)  # + one request in flight
            # a request sent after the replica first answered v2 never gets v1 (one sent before may: it finishes
            # on the version it started with)
            assert all(v == 2 for _, v, sent in seen if sent > first_v2), f"replica {replica} went back to v1"

        # ---- kill one predictor replica mid-load: no request fails, Serve replaces it
        victim = _replicas()[0]
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)
        _wait(lambda: victim["replica_id"] not in {r["replica_id"] for r in _replicas()}
              and len(_replicas()) >= 1 and len([r for r in load.results if r[0] > killed_at + 2]) > 20, 90,
              "the replica replaced and requests flowing", stack)  # fmt: skip
    failed = [r for r in load.results if r[1] != 200]
    print(f"{len(load.results)} requests under load, {len(failed)} failed")
    assert not failed, failed[:5]
    assert len(load.results) > 50

    # ---- idle brings the replicas back to 1
    _wait(lambda: len(_replicas()) == 1, 120, "scale down to one replica", stack)
    assert http.get("/readyz").status_code == 200
    metrics = http.get("/metrics").text
    assert "vpetl_replica_queue_depth{" in metrics

    # ---- Redis goes away: the cached task keeps being served (ingress pointer cache, replica adapter cache),
    # readiness says Redis is down, and everything is back once Redis returns
    stack.redis.stop()
    try:
        outage = [http.post("/predict", params={"task": "cl"}, files={"clip": ("c.mp4", clip, "video/mp4")})
                  for _ in range(5)]  # fmt: skip
        assert [r.status_code for r in outage] == [200] * 5, [r.text[:200] for r in outage]
        assert all(r.json()["version"] == 2 for r in outage)
        assert http.get("/readyz").status_code == 503
    finally:
        stack.redis.start()  # same port and directory: the AOF brings the data back
    _wait(lambda: http.get("/readyz").status_code == 200, 30, "ready again after Redis returned", stack)
