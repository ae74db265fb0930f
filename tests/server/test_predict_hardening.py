"""``POST /predict`` under hostile input and overload, against a real ``vpetl serve`` (uvicorn): an 8K-frame clip,
a decoder process killed mid-decode, a full server answering before reading the body, the per-request deadline."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.server.conftest import BACKBONE, ServerProcess, db_url, error_code, flush, make_adapter

pytestmark = pytest.mark.integration

MP4 = {"Content-Type": "video/mp4"}
OCTET = {"Content-Type": "application/octet-stream"}
INFLIGHT = 8
DEADLINE_S = 3.0


@pytest.fixture(scope="module")
def delay_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fault") / "decode_delay"
    path.write_text("0")
    return path


@pytest.fixture(scope="module")
def server(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory,
           delay_file: Path) -> Iterator[ServerProcess]:
    url = db_url(redis_server_url, 12)
    flush(url)
    tmp = tmp_path_factory.mktemp("hardening_server")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    env = {
        "VPETL_DECODE_WORKERS": "1", "VPETL_MAX_INFLIGHT": str(INFLIGHT), "VPETL_REQUEST_DEADLINE_S": str(DEADLINE_S),
        "VPETL_DECODE_TIMEOUT_S": "20", "VPETL_FAULT_DECODE_DELAY_FILE": str(delay_file),
    }  # fmt: skip
    proc = ServerProcess(args, tmp / "server.log", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()
        flush(url)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        r = client.put("/adapters/hard", content=make_adapter("hard", seed=1), headers=OCTET)
        assert r.status_code == 201, r.text
        yield client


@pytest.fixture(autouse=True)
def no_delay(delay_file: Path) -> Iterator[None]:
    delay_file.write_text("0")
    yield
    delay_file.write_text("0")


@pytest.fixture(scope="module")
def clip_8k(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Two flat 7680x4320 frames: a ~240 KB file whose frames are 100 MB each as RGB."""
    from vpetl.data.synth import write_mp4

    video = np.zeros((2, 4320, 7680, 3), np.uint8)  # (T, H, W, 3)
    video[..., 0] = 120
    video[1, ..., 1] = 200
    path = tmp_path_factory.mktemp("8k") / "8k.mp4"
    write_mp4(path, video)
    return path.read_bytes()


def predict(http: httpx.Client, clip: bytes) -> httpx.Response:
    return http.post("/predict", params={"task": "hard"}, content=clip, headers=MP4)


def decoder_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    out = []
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            out.append(child.pid)
    return out


def rss_growth_mb(server: ServerProcess, send: Callable[[], httpx.Response]) -> tuple[float, list[httpx.Response]]:
    """Send INFLIGHT requests at once; the server process's peak RSS growth (sampled every 10 ms) and the answers."""
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    before, peak, done = proc.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(INFLIGHT) as pool:
            responses = list(pool.map(lambda _: send(), range(INFLIGHT)))
    finally:
        done.set()
        sampler.join()
    return (peak[0] - before) / 2**20, responses


def test_8k_frames_are_refused_and_the_server_rss_stays_bounded(
    server: ServerProcess, http: httpx.Client, clips: dict[str, bytes], clip_8k: bytes
) -> None:
    assert len(clip_8k) < 1024 * 1024
    assert predict(http, clips["ok"]).status_code == 200  # warm: adapter loaded, decoder spawned
    growth_mb, responses = rss_growth_mb(server, lambda: predict(http, clip_8k))  # the reviewer's eight at once
    for r in responses:
        assert (r.status_code, error_code(r)) == (400, "invalid_video"), r.text
        assert "too large" in r.json()["error"]["message"]
    # the server process never decodes: a frame of this clip alone is 100 MB as RGB, eight of them 10 GB before
    assert growth_mb < 300, f"server RSS grew by {growth_mb:.0f} MB"
    assert predict(http, clips["ok"]).status_code == 200


def test_a_decoder_killed_mid_decode_costs_one_503(
    server: ServerProcess, http: httpx.Client, clips: dict[str, bytes], delay_file: Path
) -> None:
    assert predict(http, clips["ok"]).status_code == 200
    delay_file.write_text("2.0")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(predict, http, clips["ok"])
        time.sleep(0.8)  # the decode is in its (delayed) worker now
        pids = decoder_pids(server)
        assert pids, "no decoder process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        r = pending.result()
    assert (r.status_code, error_code(r)) == (503, "overloaded"), r.text
    assert r.headers["retry-after"] == "1"
    delay_file.write_text("0")
    r = predict(http, clips["ok"])
    assert r.status_code == 200, r.text  # a fresh decoder took the slot
    assert set(decoder_pids(server)).isdisjoint(pids)


def _hanging_upload(port: int) -> socket.socket:
    """Headers of a 100 KB upload and 10 bytes of it; the rest never comes (the route waits in read_upload)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = ("POST /predict?task=hard HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/mp4\r\n"
            "Content-Length: 100000\r\n\r\n")
    sock.sendall(head.encode() + b"\0" * 10)
    return sock


def test_a_full_server_answers_503_before_reading_the_body(
    server: ServerProcess, http: httpx.Client, clips: dict[str, bytes]
) -> None:
    assert predict(http, clips["ok"]).status_code == 200
    hanging = [_hanging_upload(server.port) for _ in range(INFLIGHT)]
    try:
        time.sleep(0.5)  # all admitted, each stuck reading its body
        probe = _hanging_upload(server.port)  # its body never finishes either: only an early answer can come
        try:
            started = time.monotonic()
            answer = b""
            while b"}" not in answer and (chunk := probe.recv(65536)):  # headers, then the JSON body
                answer += chunk
            assert time.monotonic() - started < 2.0
        finally:
            probe.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"503", answer[:300]
        assert b"retry-after: 1" in rest.lower()
        assert b'"overloaded"' in answer
    finally:
        for sock in hanging:
            sock.close()
    deadline = time.monotonic() + 10
    while (r := predict(http, clips["ok"])).status_code != 200:  # disconnects release their admissions
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_deadline_exceeded_has_a_stable_code(
    http: httpx.Client, clips: dict[str, bytes], delay_file: Path
) -> None:
    delay_file.write_text(str(DEADLINE_S + 2))
    started = time.monotonic()
    r = predict(http, clips["ok"])
    elapsed = time.monotonic() - started
    assert (r.status_code, error_code(r)) == (504, "deadline_exceeded"), r.text
    assert elapsed < DEADLINE_S + 1.5
    delay_file.write_text("0")
    deadline = time.monotonic() + 10
    while (r := predict(http, clips["ok"])).status_code != 200:  # the abandoned decode's worker was replaced
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_8k_training_uploads_are_refused_without_decoding_in_the_server(
    server: ServerProcess, http: httpx.Client, clips: dict[str, bytes], clip_8k: bytes
) -> None:
    """POST /datasets/{task}/clips validates by decoding too: in a decoder process under the /predict limits."""
    def upload(data: bytes) -> httpx.Response:
        return http.post("/datasets/hard/clips", params={"label": "big"}, content=data,
                         headers={"Content-Type": "video/mp4"})  # fmt: skip

    growth_mb, responses = rss_growth_mb(server, lambda: upload(clip_8k))
    for r in responses:
        assert (r.status_code, error_code(r)) == (400, "invalid_video"), r.text
    assert http.get("/datasets/hard").json()["total"] == 0  # nothing refused was stored
    assert growth_mb < 300, f"server RSS grew by {growth_mb:.0f} MB"
    assert upload(clips["ok"]).status_code == 201  # a normal clip still goes in
