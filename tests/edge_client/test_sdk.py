"""The SDK against a real HTTP server on a loopback port: retries and backoff (503 + Retry-After, refused
connections), error-code mapping, typed results, the token, conditional downloads and streamed uploads."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import pytest
from edge_helpers import LABELS, make_adapter
from fake_server import FakeServer

from edge_client.sdk import Client, ConnectionFailed
from vpetl import errors as E
from vpetl.protocol import AdapterInfo, JobInfo, PredictionResponse


def _client(url: str, **kwargs: object) -> tuple[Client, list[float]]:
    client = Client(url, **{"backoff": 0.01, "timeout": 5, **kwargs})  # type: ignore[arg-type]
    waits: list[float] = []
    client._sleep = waits.append  # record the backoff instead of sleeping
    return client, waits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter_data() -> bytes:
    return make_adapter("bapat", {"bottleneck": 4}, task="hmdb")[1]


def test_503_is_retried_honouring_retry_after(fake: FakeServer, adapter_data: bytes) -> None:
    fake.state.publish("hmdb", adapter_data)
    overloaded = (503, {"Retry-After": "2"}, {"error": {"code": "overloaded", "message": "queue full"}})
    fake.state.faults += [overloaded, overloaded]
    client, waits = _client(fake.url)
    assert [a.task for a in client.adapters()] == ["hmdb"]
    assert waits == [2.0, 2.0]  # the server's Retry-After, not the 0.01 s backoff
    assert client.stats.requests == 3


def test_503_without_retry_after_backs_off_exponentially_then_raises_overloaded(fake: FakeServer) -> None:
    fake.state.faults += [(503, {}, {"error": {"code": "overloaded", "message": "queue full"}})] * 4
    client, waits = _client(fake.url, retries=3)
    with pytest.raises(E.Overloaded) as info:
        client.adapters()
    assert info.value.http_status == 503 and info.value.code == "overloaded"
    assert waits == pytest.approx([0.01, 0.02, 0.04])
    assert len(fake.state.requests) == 4


def test_refused_connection_is_retried_then_reported() -> None:
    client, waits = _client(f"http://127.0.0.1:{_free_port()}", retries=2)
    with pytest.raises(ConnectionFailed) as info:
        client.adapters()
    assert info.value.code == "connection_error" and "cannot reach" in info.value.message
    assert waits == pytest.approx([0.01, 0.02])
    assert client.stats.requests == 3


def test_refused_connection_recovers_when_the_server_comes_up(adapter_data: bytes) -> None:
    """A server that starts while the client backs off is reached (real sleeps; even a POST is safe to resend:
    a refused connection never reached the server)."""
    port = _free_port()
    servers: list[FakeServer] = []

    def start_later() -> None:
        time.sleep(0.3)
        server = FakeServer(port=port)
        server.state.publish("hmdb", adapter_data)
        servers.append(server.__enter__())

    threading.Thread(target=start_later, daemon=True).start()
    client = Client(f"http://127.0.0.1:{port}", retries=6, backoff=0.1, timeout=5)
    try:
        started = time.perf_counter()
        result = client.predict(b"\x00" * 100, "hmdb", topk=2)
        assert time.perf_counter() - started >= 0.25
        assert [p.label for p in result.predictions] == LABELS[:2]
        assert client.stats.requests >= 2
    finally:
        client.close()
        for server in servers:
            server.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "unknown_task", E.UnknownTask),
        (404, "unknown_version", E.UnknownVersion),
        (400, "invalid_video", E.InvalidVideo),
        (409, "incompatible_adapter", E.IncompatibleAdapter),
        (413, "too_large", E.TooLarge),
        (415, "unsupported_media_type", E.UnsupportedMediaType),
        (422, "invalid_request", E.InvalidRequest),
        (401, "unauthorized", E.Unauthorized),
        (403, "forbidden", E.Forbidden),
    ],
)
def test_error_codes_map_to_vpetl_error_classes(fake: FakeServer, status: int, code: str, cls: type) -> None:
    fake.state.faults.append((status, {}, {"error": {"code": code, "message": f"{code} happened"}}))
    client, waits = _client(fake.url)
    with pytest.raises(cls) as info:
        client.adapter("x")
    assert type(info.value) is cls
    assert (info.value.code, info.value.message, info.value.http_status) == (code, f"{code} happened", status)
    assert waits == []  # client errors are never retried


def test_unknown_codes_and_non_json_errors_keep_their_code(fake: FakeServer) -> None:
    fake.state.faults.append((404, {}, {"error": {"code": "onnx_not_exported", "message": "run export-onnx"}}))
    client, _ = _client(fake.url)
    with pytest.raises(E.VpetlError) as info:
        client.download_onnx()
    error = info.value
    assert (error.code, error.message, error.http_status) == ("onnx_not_exported", "run export-onnx", 404)
    with pytest.raises(E.VpetlError) as info:
        client._send("GET", "/nowhere")
    assert info.value.code == "not_found"


def test_typed_results_and_token_from_env(fake: FakeServer, adapter_data: bytes, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake.state.token = "s3cret"
    path = tmp_path / "a.safetensors"
    path.write_bytes(adapter_data)
    anonymous, _ = _client(fake.url)
    with pytest.raises(E.Unauthorized):
        anonymous.push_adapter(path, "hmdb")
    with pytest.raises(E.Forbidden):
        _client(fake.url, token="wrong")[0].push_adapter(path, "hmdb")
    monkeypatch.setenv("VPETL_TOKEN", "s3cret")
    client, _ = _client(fake.url)
    ref = client.push_adapter(path, "hmdb")
    assert (ref.task, ref.version) == ("hmdb", 1)
    infos = client.adapters()
    assert isinstance(infos[0], AdapterInfo) and infos[0].labels == LABELS and infos[0].method == "bapat"
    assert [v.version for v in client.adapter("hmdb").versions] == [1]
    result = client.predict(b"fake video bytes", "hmdb", topk=3)
    assert isinstance(result, PredictionResponse) and len(result.predictions) == 3 and result.version == 1
    assert client.rollback("hmdb", 1).version == 1
    assert client.delete_adapter("hmdb").versions_removed == 1
    with pytest.raises(E.UnknownTask):
        client.adapter("hmdb")


def test_conditional_download_sends_no_body_when_unchanged(fake: FakeServer, adapter_data: bytes) -> None:
    fake.state.publish("hmdb", adapter_data)
    client, _ = _client(fake.url)
    blob = client.download_adapter("hmdb")
    assert blob == adapter_data and blob.etag == hashlib.sha256(adapter_data).hexdigest() and blob.version == 1
    assert client.stats.adapter_bytes >= len(adapter_data)
    before = fake.state.sent["adapter"]
    assert client.download_adapter("hmdb", etag=blob.etag) is None
    assert fake.state.sent["adapter"] == before  # 304: nothing sent


def test_streamed_upload_reports_progress_and_jobs_are_typed(fake: FakeServer, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(bytes(range(256)) * 4000)  # 1 MB: several chunks
    client, _ = _client(fake.url)
    seen: list[tuple[int, int | None]] = []
    uploaded = client.upload_clip(clip, "hmdb", "run", split="val", progress=lambda d, t: seen.append((d, t)))
    assert (uploaded.label, uploaded.split, uploaded.size) == ("run", "val", clip.stat().st_size)
    assert len(seen) >= 4 and seen[-1] == (clip.stat().st_size, clip.stat().st_size)
    assert fake.state.received == clip.stat().st_size
    assert client.dataset("hmdb").counts == {"val": {"run": 1}}
    job_id = client.create_job(task="hmdb", method="bapat", bottleneck=None, epochs=3).job_id
    job = client.job(job_id)
    assert isinstance(job, JobInfo) and (job.id, job.state, job.params["epochs"]) == (job_id, "queued", 3)
    assert [j.id for j in client.jobs()] == [job_id]

