"""Chaos soak: a real ``vpetl serve --engine local`` (admin token set) on a TCP EmbeddedRedis plus two real
``vpetl worker`` processes, under mixed-task load and a stream of hostile clips, while three faults are injected:

- **worker kill**: a long training job is submitted; the worker that took it is SIGKILLed mid-job (the other
  worker must take it over after ``--claim-idle-ms`` and publish it exactly once);
- **Redis restart**: Redis is stopped for a few seconds and started again on the same port (same AOF);
- **decoder kill**: one decoder child process of the server (server/decode_pool.py) is SIGKILLed.

Traffic (all loopback, closed loop): ``--clients`` good clients over a few published tasks; ``HOSTILE`` clients
sending 8K-frame, truncated, random and empty bodies (so 8 hostile clips are in flight at once); one uploader
posting distinct labelled clips to ``POST /datasets/{task}/clips`` and recording which were acknowledged (2xx).

Reported (table, or JSON with ``--json``), each beside its target: acknowledged uploads lost (acked clips missing
from ``GET /datasets/{task}`` at the end), jobs published twice (a job id mapping to more than one version),
5xx answers to bad input, failed good requests outside the fault windows (a window is [fault start, recovery +
1 s]; a request counts as inside when its [sent, received] interval touches a window), peak RSS of the server
process tree (decoder children included, sampled every 50 ms) vs its idle RSS before load, and the time to
recover after Redis returns (first 200 ``/readyz``, first successful uncached write: a ``PUT /adapters``).

Run: ``python benchmarks/chaos.py [--duration 60] [--quick] [--json]``; ``--quick`` (≈20 s of load) is what
tests/benchmarks/test_chaos.py runs. Stops by itself; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import VPETL, ServeProcess, free_port, make_adapter, make_clip  # noqa: E402

BACKBONE = "videomae-tiny"
TOKEN = "chaos-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MP4 = {"Content-Type": "video/mp4"}
OCTET = {"Content-Type": "application/octet-stream", **AUTH}
TASKS = ["mix0", "mix1", "mix2"]  # closed-loop traffic (all cached: no request path touches Redis)
LABELS = ["a", "b", "c"]
UPLOAD_TASK = "uploads"
JOB_LABELS = ["walk", "run"]
LONG_TASK, SHORT_TASK = "trainlong", "trainshort"
HOSTILE = 8  # hostile clients, one request in flight each: the "8 hostile clips in flight" of the RSS target
CLAIM_IDLE_MS = 1500
RSS_BUDGET_MB = 1536.0
RECOVERY_TARGET_S = 5.0


@dataclass
class Req:
    """One request as the client saw it; ``kind``: good (a real clip), bad (hostile body) or upload."""

    kind: str
    sent: float
    recv: float
    status: int  # 0: transport error
    code: str = ""  # the error code of a non-2xx answer
    detail: str = ""  # bad: which hostile body; upload: label


@dataclass
class Window:
    name: str
    start: float
    end: float  # recovery + 1 s

    def touches(self, r: Req) -> bool:
        return r.sent <= self.end and r.recv >= self.start


@dataclass
class Run:
    """Everything measured; filled by the schedule and the load thread."""

    reqs: list[Req] = field(default_factory=list)
    acked: list[tuple[str, str]] = field(default_factory=list)  # (label, sha256) of 2xx, non-duplicate uploads
    unacked_uploads: int = 0
    windows: list[Window] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=lambda: {"worker_kill": 0, "redis_restart": 0, "decoder_kill": 0})
    notes: list[str] = field(default_factory=list)
    redis_ready_s: float | None = None
    redis_put_s: float | None = None
    t0: float = 0.0  # load start (monotonic)


# ------------------------------------------------------------------------------------------------ clips
def hostile_bodies(tmp: Path, good: bytes) -> dict[str, bytes]:
    """The hostile bodies of tests/server/test_predict_hardening.py: an 8K-frame clip whose two frames are 100 MB
    each as RGB (a ~240 KB file), a truncated mp4, random bytes, nothing at all."""
    from vpetl.data.synth import write_mp4

    video = np.zeros((2, 4320, 7680, 3), np.uint8)  # (T, H, W, 3)
    video[..., 0] = 120
    video[1, ..., 1] = 200
    write_mp4(tmp / "8k.mp4", video)
    del video
    rnd = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return {"8k": (tmp / "8k.mp4").read_bytes(), "truncated": good[: len(good) // 3], "random": rnd, "empty": b""}


def small_clips(tmp: Path, n: int, seed0: int) -> Iterator[bytes]:
    """``n`` distinct 8-frame 32² clips (distinct bytes: an upload of bytes already stored is a duplicate)."""
    for i in range(n):
        yield make_clip(tmp / f"small-{seed0 + i}.mp4", frames=8, size=32, seed=seed0 + i)


def error_code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])
    except Exception:
        return ""


# ------------------------------------------------------------------------------------------------ processes
class Workers:
    """Real ``vpetl worker`` processes, each in its own process group (a SIGKILL takes its helpers too)."""

    def __init__(self, root: Path, redis_url: str, epoch_delay_s: float) -> None:
        self.root, self.redis_url, self.epoch_delay_s = root, redis_url, epoch_delay_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VPETL_")}
        # long epochs so the job is still running when its worker is killed (training/worker.py's test hook)
        env["VPETL_TEST_EPOCH_DELAY_S"] = str(self.epoch_delay_s)
        cmd = [VPETL, "worker", "--redis-url", self.redis_url, "--backbone", BACKBONE, "--data-dir",
               str(self.root / "data"), "--threads", "1", "--name", name, "--claim-idle-ms", str(CLAIM_IDLE_MS)]
        with (self.root / f"{name}.log").open("ab") as log:  # fmt: skip
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)  # fmt: skip

    def ready(self, name: str) -> bool:
        return "waiting for jobs" in (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def tree_rss(proc: psutil.Process) -> int:
    """RSS of the server and its children (the decoder pool, Redis is not one: it is ours)."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def decoder_pids(pid: int) -> list[int]:
    """The decoder pool's spawned children (as tests/server/test_predict_hardening.py finds them)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            out.append(child.pid)
    return out


class RssSampler(threading.Thread):
    """Peak RSS of the server tree, sampled every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, tree_rss(self.proc))
            self.done.wait(0.05)


# ------------------------------------------------------------------------------------------------ traffic
async def _timed(kind: str, detail: str, call: Awaitable[httpx.Response]) -> tuple[Req, httpx.Response | None]:
    sent = time.monotonic()  # the coroutine has not started yet: creating it sends nothing
    try:
        r = await call
    except httpx.HTTPError as e:
        return Req(kind, sent, time.monotonic(), 0, type(e).__name__, detail), None
    code = "" if r.status_code < 300 else error_code(r)
    return Req(kind, sent, time.monotonic(), r.status_code, code, detail), r


async def _good(client: httpx.AsyncClient, clip: bytes, rng: random.Random, run: Run, stop: threading.Event) -> None:
    while not stop.is_set():
        task = rng.choice(TASKS)
        call = client.post("/predict", params={"task": task}, content=clip, headers=MP4)
        req, _ = await _timed("good", task, call)
        run.reqs.append(req)


async def _hostile(client: httpx.AsyncClient, bodies: dict[str, bytes], start: int, run: Run,
                   stop: threading.Event) -> None:  # fmt: skip
    names = list(bodies)
    i = start
    while not stop.is_set():
        name = names[i % len(names)]
        i += 1
        call = client.post("/predict", params={"task": TASKS[0]}, content=bodies[name], headers=MP4)
        req, _ = await _timed("bad", name, call)
        run.reqs.append(req)


async def _uploader(client: httpx.AsyncClient, clips: list[bytes], run: Run, stop: threading.Event) -> None:
    for i, clip in enumerate(clips):
        if stop.is_set():
            return
        label = LABELS[i % len(LABELS)]
        call = client.post(f"/datasets/{UPLOAD_TASK}/clips", params={"label": label}, content=clip,
                           headers={**MP4, **AUTH})  # fmt: skip
        req, r = await _timed("upload", label, call)
        run.reqs.append(req)
        if r is not None and 200 <= r.status_code < 300:
            body = r.json()
            if not body.get("duplicate"):
                run.acked.append((label, body["sha256"]))
        else:
            run.unacked_uploads += 1
        await asyncio.sleep(0.2)  # a steady trickle, not a flood: the uploads are the durability probe


async def _load(base: str, clip: bytes, bodies: dict[str, bytes], uploads: list[bytes], clients: int, run: Run,
                stop: threading.Event) -> None:  # fmt: skip
    limits = httpx.Limits(max_connections=clients + HOSTILE + 4, max_keepalive_connections=clients + HOSTILE + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, headers=AUTH) as client:  # every route
        jobs = [_good(client, clip, random.Random(i), run, stop) for i in range(clients)]
        jobs += [_hostile(client, bodies, i, run, stop) for i in range(HOSTILE)]
        await asyncio.gather(*jobs, _uploader(client, uploads, run, stop))


# ------------------------------------------------------------------------------------------------ faults
def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> float | None:
    """Poll ``ready`` until true: the time it became true, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ready():
                return time.monotonic()
        time.sleep(poll_s)
    return None


def submit_job(http: httpx.Client, task: str, epochs: int) -> str:
    body = {"task": task, "method": "linear", "epochs": epochs, "batch_size": 2, "publish_if_worse": True}
    r = http.post("/jobs", json=body, headers=AUTH)
    r.raise_for_status()
    return str(r.json()["job_id"])


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    r = http.get(f"/jobs/{job_id}")
    r.raise_for_status()
    return dict(r.json())


def kill_worker_mid_job(http: httpx.Client, workers: Workers, job_id: str, run: Run) -> None:
    """SIGKILL the worker running ``job_id`` once it is mid-training; recovery: the other worker holds the job."""
    if wait_for("job mid-training", lambda: job(http, job_id).get("progress", {}).get("epoch", 0) >= 1, 30) is None:
        run.notes.append(f"worker kill skipped: job {job_id} never reached epoch 1: {job(http, job_id)}")
        return
    victim = str(job(http, job_id)["worker"])
    started = time.monotonic()
    workers.kill(victim)
    run.faults["worker_kill"] += 1
    rescued = wait_for("takeover", lambda: job(http, job_id)["worker"] not in (victim, None), 30)
    if rescued is None:
        run.notes.append(f"job {job_id} not taken over within 30 s of killing {victim}")
    run.windows.append(Window("worker_kill", started, (rescued or time.monotonic()) + 1.0))


def restart_redis(http: httpx.Client, redis: Any, down_s: float, probe: bytes, run: Run) -> None:
    """Stop Redis, keep it down ``down_s``, start it on the same port; time the first 200 ``/readyz`` and the
    first 201 ``PUT /adapters`` (a write: nothing cached can answer it) after it is back."""
    started = time.monotonic()
    redis.stop()
    run.faults["redis_restart"] += 1
    time.sleep(down_s)
    redis.start()  # same port, same directory: the AOF brings the data back
    back = time.monotonic()

    def ready() -> bool:
        return http.get("/readyz", timeout=5).status_code == 200

    def put() -> bool:
        return http.put("/adapters/putprobe", content=probe, headers=OCTET, timeout=10).status_code == 201

    with ThreadPoolExecutor(2) as pool:  # in parallel: a slow failing PUT must not delay the readyz probe
        t_ready, t_put = pool.map(lambda f: wait_for(f.__name__, f, 30), [ready, put])
    run.redis_ready_s = None if t_ready is None else t_ready - back
    run.redis_put_s = None if t_put is None else t_put - back
    run.windows.append(Window("redis_restart", started, max(t or time.monotonic() for t in (t_ready, t_put)) + 1))


def kill_decoder(server_pid: int, run: Run) -> float | None:
    """SIGKILL one decoder child of the server; the kill time (recovery is read from the traffic afterwards)."""
    pids = decoder_pids(server_pid)
    if not pids:
        run.notes.append("decoder kill skipped: no decoder child of the server found")
        return None
    killed = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    run.faults["decoder_kill"] += 1
    if wait_for("replacement", lambda: pids[0] not in decoder_pids(server_pid) and
                len(decoder_pids(server_pid)) >= len(pids), 10) is None:  # fmt: skip
        run.notes.append("the killed decoder was not replaced within 10 s (a slot is replaced on its next use)")
    return killed


# ------------------------------------------------------------------------------------------------ the run
def setup(http: httpx.Client, tmp: Path, workers: Workers) -> None:
    """Adapters for the traffic tasks, training clips for the two job tasks, every task warmed (cached)."""
    for seed, task in enumerate(TASKS):
        r = http.put(f"/adapters/{task}", content=make_adapter(BACKBONE, seed, task, LABELS), headers=OCTET)
        assert r.status_code == 201, r.text
    clips = small_clips(tmp, 2 * len(JOB_LABELS) * 3, 10_000)
    for task in (LONG_TASK, SHORT_TASK):
        for label in JOB_LABELS:
            for split in ("val", "train", "train"):
                r = http.post(f"/datasets/{task}/clips", params={"label": label, "split": split},
                              content=next(clips), headers={**MP4, **AUTH})  # fmt: skip
                assert r.status_code == 201, r.text
    for name in workers.procs:
        assert wait_for(f"{name} up", lambda n=name: workers.ready(n), 120, 0.2), f"worker {name} not up"


def chaos(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from vpetl.store import EmbeddedRedis

    quick = args.quick
    duration = 20.0 if quick else args.duration
    good_clip = make_clip(tmp / "good.mp4")
    bodies = hostile_bodies(tmp, good_clip)
    uploads = list(small_clips(tmp, int(duration / 0.2) + 10, 0))
    probe = make_adapter(BACKBONE, 99, "putprobe", LABELS)
    run = Run()
    redis = EmbeddedRedis(tmp / "redis", port=free_port()).start()
    workers = Workers(tmp, redis.url, epoch_delay_s=0.7 if quick else 1.5)
    serve_args = ["--backbone", BACKBONE, "--data-dir", str(tmp / "data"), "--admin-token", TOKEN]
    server = ServeProcess("local", redis.url, serve_args, tmp / "serve.log")
    sampler: RssSampler | None = None
    try:
        server.start()
        for name in ("w1", "w2"):  # started with the server: their backbone load overlaps its start
            workers.start(name)
        server.wait_ready()
        assert server.proc is not None
        with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http:  # reads need the token too
            setup(http, tmp, workers)
            for task in TASKS:  # cached and a decoder spawned: the idle RSS is the warm server's
                assert http.post("/predict", params={"task": task}, content=good_clip, headers=MP4).status_code == 200
            proc = psutil.Process(server.proc.pid)
            samples = []
            for _ in range(10):
                samples.append(tree_rss(proc))
                time.sleep(0.05)
            idle = float(np.median(samples))
            sampler = RssSampler(server.proc.pid)
            sampler.start()
            stop = threading.Event()
            loader = threading.Thread(target=lambda: asyncio.run(
                _load(server.url, good_clip, bodies, uploads, args.clients, run, stop)), daemon=True)  # fmt: skip
            t0 = run.t0 = time.monotonic()
            loader.start()
            # the schedule: worker kill first (its job then rides through the Redis restart), decoder kill last
            time.sleep(1.0)
            long_job = submit_job(http, LONG_TASK, epochs=5 if quick else 12)  # the takeover overlaps the restart
            kill_worker_mid_job(http, workers, long_job, run)
            time.sleep(max(0.0, t0 + 0.35 * duration - time.monotonic()))
            restart_redis(http, redis, 2.0 if quick else 4.0, probe, run)
            short_job = submit_job(http, SHORT_TASK, epochs=1)  # published after the restart
            time.sleep(max(0.0, t0 + 0.7 * duration - time.monotonic()))
            decoder_killed = kill_decoder(server.proc.pid, run)
            time.sleep(max(0.0, t0 + duration - time.monotonic()))
            stop.set()
            loader.join(90)
            load_s = time.monotonic() - t0
            sampler.done.set()
            if decoder_killed is not None:  # recovery: the first good 200 sent after the kill
                after = [r.recv for r in run.reqs if r.kind == "good" and r.status == 200 and r.sent >= decoder_killed]
                run.windows.append(Window("decoder_kill", decoder_killed, (min(after) if after else load_s + t0) + 1))
            finals: dict[str, dict[str, Any]] = {}
            for role, job_id in (("long", long_job), ("short", short_job)):
                wait_for("job done", lambda j=job_id: job(http, j)["state"] in ("succeeded", "failed"), 60, 0.2)
                finals[role] = job(http, job_id)
            versions = {t: [v["version"] for v in http.get(f"/adapters/{t}").json().get("versions", [])]
                        for t in (LONG_TASK, SHORT_TASK)}  # fmt: skip
            counts = http.get(f"/datasets/{UPLOAD_TASK}").json()["counts"].get("train", {})
            stored = _stored_shas(tmp, redis.url)
        return report(run, idle, sampler.peak, load_s, finals, versions, counts, stored, duration, args)
    finally:
        if sampler is not None:
            sampler.done.set()
        workers.stop()
        server.stop()
        redis.stop()
        if args.keep_logs:
            for log in tmp.glob("*.log"):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)


def _stored_shas(tmp: Path, redis_url: str) -> set[str]:
    """sha256 of every indexed upload (finer than the counts: an unacked upload that landed cannot hide a lost
    acked one)."""
    from vpetl.store import ClipStore

    with ClipStore(tmp / "data", redis_url) as clips:
        return {c.sha256 for c in clips.list_clips(UPLOAD_TASK, "train")}


def report(run: Run, idle: float, peak: int, load_s: float, finals: dict[str, dict[str, Any]],
           versions: dict[str, list[int]], counts: dict[str, int], stored: set[str], duration: float,
           args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    acked_per_label = {label: sum(1 for lab, _ in run.acked if lab == label) for label in LABELS}
    lost_counts = sum(max(0, n - counts.get(label, 0)) for label, n in acked_per_label.items())
    lost_shas = sum(1 for _, sha in run.acked if sha not in stored)
    twice = 0
    for info in finals.values():  # one task per job: every version of it came from that job
        task = str(info["params"].get("task"))
        if len(versions.get(task, [])) > 1 or (info.get("version") not in (None, *versions.get(task, []))):
            twice += 1
    bad = [r for r in run.reqs if r.kind == "bad"]
    bad_5xx = [r for r in bad if r.status >= 500 or r.status == 0]
    # a killed decoder answers the request it was decoding 503 overloaded (documented in server/decode_pool.py);
    # the server cannot know the input was bad, so those are reported apart from the headline figure
    dec = [w for w in run.windows if w.name == "decoder_kill"]
    bad_5xx_decoder = [r for r in bad_5xx if r.code == "overloaded" and any(w.touches(r) for w in dec)]
    good = [r for r in run.reqs if r.kind in ("good", "upload")]
    outside = [r for r in good if not any(w.touches(r) for w in run.windows)]
    failed_outside = [r for r in outside if not 200 <= r.status < 300]
    outside_ids = {id(r) for r in outside}
    redis_w = [w for w in run.windows if w.name == "redis_restart"]
    outage_uploads = [r for r in run.reqs if r.kind == "upload" and any(w.touches(r) for w in redis_w)]
    recovery = max((t for t in (run.redis_ready_s, run.redis_put_s) if t is not None), default=None)
    peak_mb, idle_mb = peak / 2**20, idle / 2**20
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "duration_s": duration,
        "load_s": round(load_s, 1),
        "faults_injected": run.faults,
        "windows": [{"name": w.name, "start_s": round(w.start - run.t0, 2),
                     "length_s": round(w.end - w.start, 2)} for w in run.windows],  # fmt: skip
        "requests": {k: sum(1 for r in run.reqs if r.kind == k) for k in ("good", "bad", "upload")},
        "good_ok": sum(1 for r in run.reqs if r.kind == "good" and r.status == 200),
        "bad_statuses": _tally(f"{r.detail}:{r.status}" for r in bad),
        "uploads": {"acked": len(run.acked), "unacked": run.unacked_uploads, "stored": len(stored),
                    "counts": counts},  # fmt: skip
        "acked_uploads_lost": max(lost_counts, lost_shas),
        "jobs": {j: {k: i.get(k) for k in ("id", "state", "version", "worker", "attempts", "error")}
                 for j, i in finals.items()},  # fmt: skip
        "versions": versions,
        "jobs_published_twice": twice,
        "bad_input_5xx": len(bad_5xx) - len(bad_5xx_decoder),
        "bad_input_5xx_in_decoder_kill": len(bad_5xx_decoder),
        "good_outside_windows": len(outside),
        "failed_good_outside_windows": len(failed_outside),
        "failed_good_outside_detail": _tally(f"{r.kind}:{r.status}:{r.code}" for r in failed_outside),
        "failed_good_inside_windows": _tally(f"{r.kind}:{r.status}:{r.code}" for r in good
                                             if not 200 <= r.status < 300 and id(r) not in outside_ids),
        # uploads sent into the outage: the store's client retries, so they wait rather than fail
        "uploads_in_redis_window": {"n": len(outage_uploads), "ok": sum(200 <= r.status < 300 for r in outage_uploads),
                                    "max_latency_s": round(max((r.recv - r.sent for r in outage_uploads),
                                                               default=0.0), 2)},  # fmt: skip
        "rss_mb": {"idle": round(idle_mb), "peak": round(peak_mb), "growth": round(peak_mb - idle_mb)},
        "redis_recovery_s": {"readyz": run.redis_ready_s, "first_put": run.redis_put_s, "max": recovery},
        "notes": run.notes,
    }
    result["targets"] = {
        "acked_uploads_lost == 0": result["acked_uploads_lost"] == 0,
        "jobs_published_twice == 0": twice == 0,
        "bad_input_5xx == 0": result["bad_input_5xx"] == 0,
        "failed_good_outside_windows == 0": not failed_outside,
        f"peak RSS <= idle + {RSS_BUDGET_MB:g} MB": peak_mb - idle_mb <= RSS_BUDGET_MB,
        f"redis recovery <= {RECOVERY_TARGET_S:g} s": recovery is not None and recovery <= RECOVERY_TARGET_S,
        "every fault injected": all(n >= 1 for n in run.faults.values()),
    }
    return result


def _tally(items: Iterator[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def print_table(r: dict[str, Any]) -> None:
    rec = r["redis_recovery_s"]
    fmt = lambda v: "never" if v is None else f"{v:.2f} s"  # noqa: E731
    rows = [
        ("faults injected", ", ".join(f"{k} {v}" for k, v in r["faults_injected"].items()), "1 each"),
        ("acknowledged uploads lost", f"{r['acked_uploads_lost']} of {r['uploads']['acked']}", "0"),
        ("jobs published twice", f"{r['jobs_published_twice']} of {len(r['jobs'])}", "0"),
        ("5xx answers to bad input", f"{r['bad_input_5xx']} of {r['requests']['bad']} "
         f"(+{r['bad_input_5xx_in_decoder_kill']} 503 in the killed decoder)", "0"),
        ("failed good requests outside windows", f"{r['failed_good_outside_windows']} of "
         f"{r['good_outside_windows']}", "0"),
        ("peak RSS vs idle (server + decoders)", f"{r['rss_mb']['peak']} vs {r['rss_mb']['idle']} MB "
         f"(+{r['rss_mb']['growth']})", f"<= idle + {RSS_BUDGET_MB:g} MB"),
        ("Redis back -> first 200 /readyz", fmt(rec["readyz"]), f"<= {RECOVERY_TARGET_S:g} s"),
        ("Redis back -> first 201 PUT", fmt(rec["first_put"]), f"<= {RECOVERY_TARGET_S:g} s"),
    ]  # fmt: skip
    print(f"chaos soak: {r['load_s']} s of load on {r['machine']}; requests {r['requests']}, good 200s "
          f"{r['good_ok']}")
    print(f"| {'figure':<38} | {'measured':<48} | {'target':<18} |")
    print(f"|{'-' * 40}|{'-' * 50}|{'-' * 20}|")
    for name, value, target in rows:
        print(f"| {name:<38} | {value:<48} | {target:<18} |")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in r["targets"].items()))
    print(f"jobs: {r['jobs']}\nwindows: {r['windows']}\nbad input: {r['bad_statuses']}")
    print(f"failed good requests inside the fault windows: {r['failed_good_inside_windows']}; uploads in the Redis "
          f"window: {r['uploads_in_redis_window']}")
    if r["failed_good_outside_detail"]:
        print(f"failed good outside windows: {r['failed_good_outside_detail']}")
    for note in r["notes"]:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--quick", action="store_true", help="20 s of load, shorter faults (CI)")
    parser.add_argument("--clients", type=int, default=3, help="closed-loop good clients")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="print the tails of the process logs to stderr")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vpetl-chaos-") as tmp_dir:
        result = chaos(args, Path(tmp_dir))
    if args.json:
        print(json.dumps(result, indent=2, default=str), flush=True)
    else:
        print_table(result)


if __name__ == "__main__":
    main()
