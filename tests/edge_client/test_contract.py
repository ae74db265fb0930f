"""One API contract, run through the edge SDK against BOTH the in-process fake server (what the edge tests use) and
a real ``vpetl serve`` (uvicorn + redis-server): the same calls must give the same statuses, error codes and
response shapes, so the fake cannot drift from the real API unnoticed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_client.sdk import Client
from tests.server.conftest import BACKBONE, ServerProcess, db_url, flush, make_adapter
from vpetl import errors as E

TOKEN = "contract-token"


@pytest.fixture(scope="module", params=["fake", "real"])
def server_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "fake":
        from fake_server import FakeServer

        from vpetl.backbones import create_backbone

        with FakeServer() as fake:
            fake.state.token = TOKEN
            fake.state.backbone_sha256 = create_backbone(BACKBONE).sha256()  # contract mode: checks like the real one
            yield fake.url
        return
    url = db_url(request.getfixturevalue("redis_server_url"), 12)
    flush(url)
    tmp = tmp_path_factory.mktemp("contract")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
    try:
        yield proc.url
    finally:
        proc.stop()
        flush(url)


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url, token=TOKEN, retries=0) as c:
        yield c


def _code(excinfo: pytest.ExceptionInfo[E.VpetlError]) -> str:
    return excinfo.value.code


def test_adapter_lifecycle(client: Client, tmp_path: Path) -> None:
    v1, v2 = make_adapter("contract", seed=1), make_adapter("contract", seed=2)
    ref = client.push_adapter(v1, "contract")
    assert (ref.task, ref.version, ref.sha256) == ("contract", 1, hashlib.sha256(v1).hexdigest())
    assert client.push_adapter(v2, "contract").version == 2
    assert "contract" in {a.task for a in client.adapters()}
    detail = client.adapter("contract")
    assert detail.version == 2 and [v.version for v in detail.versions] == [1, 2]
    blob = client.download_adapter("contract", version=1)
    assert hashlib.sha256(bytes(blob)).hexdigest() == ref.sha256
    assert client.rollback("contract", 1).version == 1
    assert client.adapter("contract").version == 1
    deleted = client.delete_adapter("contract")
    assert deleted.task == "contract" and deleted.versions_removed == 2
    with pytest.raises(E.VpetlError) as err:
        client.adapter("contract")
    assert _code(err) == "unknown_task"


def test_refusals_have_the_same_codes(client: Client, server_url: str, mp4_clip: Path) -> None:
    with pytest.raises(E.VpetlError) as err:
        client.push_adapter(b"not a safetensors file at all", "refused")
    assert _code(err) == "invalid_adapter"
    other = make_adapter("refused", seed=1, backbone=_other_backbone())
    with pytest.raises(E.VpetlError) as err:
        client.push_adapter(other, "refused")
    assert _code(err) == "incompatible_adapter"
    with pytest.raises(E.VpetlError) as err:
        client.predict(mp4_clip, "no-such-task")
    assert _code(err) == "unknown_task"
    with pytest.raises(E.VpetlError) as err:
        client.rollback("no-such-task", 1)
    assert _code(err) in ("unknown_task", "unknown_version")
    with Client(server_url, token=None, retries=0) as anonymous:
        with pytest.raises(E.VpetlError) as err:
            anonymous.push_adapter(make_adapter("refused"), "refused")
        assert _code(err) == "unauthorized"
    with Client(server_url, token="wrong", retries=0) as wrong:
        with pytest.raises(E.VpetlError) as err:
            wrong.push_adapter(make_adapter("refused"), "refused")
        assert _code(err) == "forbidden"
    assert "refused" not in {a.task for a in client.adapters()}  # nothing refused was stored


def test_clips_and_predictions(client: Client, mp4_clip: Path, tmp_path: Path) -> None:
    client.push_adapter(make_adapter("clips"), "clips")
    uploaded = client.upload_clip(mp4_clip, "clips", "wave")
    assert (uploaded.task, uploaded.label, uploaded.split) == ("clips", "wave", "train")
    assert client.dataset("clips").counts["train"] == {"wave": 1}
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video\n" * 50)
    with pytest.raises(E.VpetlError) as err:
        client.upload_clip(garbage, "clips", "wave")
    assert _code(err) == "invalid_video"
    with pytest.raises(E.VpetlError) as err:
        client.predict(garbage, "clips")
    assert _code(err) == "invalid_video"
    served = client.predict(mp4_clip, "clips", topk=2)
    assert served.task == "clips" and served.version == 1 and len(served.predictions) == 2
    assert set(served.timing_ms.model_dump()) >= {"decode", "queue", "model", "total"}


def test_jobs_and_backbone(client: Client, mp4_clip: Path) -> None:
    with pytest.raises(E.VpetlError) as err:  # no clips uploaded for this task yet: refused up front
        client.create_job(task="no-clips-yet", method="linear", epochs=1, batch_size=2)
    assert _code(err) == "invalid_dataset"
    client.upload_clip(mp4_clip, "jobs", "wave")
    job = client.create_job(task="jobs", method="linear", epochs=1, batch_size=2)
    info = client.job(job.job_id)
    assert info.id == job.job_id and info.state in ("queued", "running", "succeeded", "failed")
    assert job.job_id in {j.id for j in client.jobs()}
    with pytest.raises(E.VpetlError) as err:
        client.job("0" * 32)
    assert _code(err) == "unknown_job"
    backbone = client.backbone()
    assert len(backbone.sha256) == 64 and backbone.num_features > 0


def _other_backbone():  # noqa: ANN202
    from vpetl.backbones import create_backbone

    return create_backbone(BACKBONE, seed=9)  # same architecture, other weights: another backbone sha256
