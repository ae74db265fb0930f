"""``/jobs`` over HTTP (in-process app, real Redis): queue a job, a worker trains and publishes, the job shows it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import build_app
from server.services import Services, create_services
from server.settings import Settings
from tests.server.conftest import BACKBONE, db_url, error_code, flush
from training.worker import Worker
from vpetl.store import AdapterStore
from vpetl.store.adapters import redis_client


@pytest.fixture(scope="module")
def services(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    url = db_url(redis_server_url, 9)
    flush(url)
    settings = Settings(redis_url=url, backbone=BACKBONE, data_dir=tmp_path_factory.mktemp("jobs"), admin_token="tok")
    built = create_services(settings)
    try:
        yield built
    finally:
        built.close()
        flush(url)


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(build_app(services), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = "Bearer tok"
        yield c


def test_job_lifecycle_over_http(client: TestClient, services: Services, clips: dict[str, bytes]) -> None:
    for name, label in [("ok", "walk"), ("ok2", "run"), ("ok3", "walk"), ("ok4", "jump")]:
        r = client.post("/datasets/jobtask/clips", params={"label": label}, content=clips[name],
                        headers={"content-type": "video/mp4"})
        assert r.status_code == 201, r.text
    created = client.post("/jobs", json={"task": "jobtask", "method": "linear", "epochs": 1, "batch_size": 2})
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    assert client.get(f"/jobs/{job_id}").json()["state"] == "queued"
    assert [j["id"] for j in client.get("/jobs").json()["jobs"]][0] == job_id

    client_redis = redis_client(services.redis_url)
    worker = Worker(services.backbone, services.jobs, AdapterStore(client_redis), services.clips, "test-worker")
    assert worker.run(max_jobs=1) == 1
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job.get("error")
    assert job["version"] == 1 and job["result"]["published"] is True
    assert client.get("/adapters/jobtask").json()["version"] == 1


def test_job_refusals(client: TestClient) -> None:
    r = client.post("/jobs", json={"task": "no-clips-here"})
    assert r.status_code == 422 and error_code(r) == "invalid_dataset"
    r = client.post("/jobs", json={"task": "../etc", "epochs": 1})
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    r = client.post("/jobs", json={"task": "x", "method": "full"})
    assert r.status_code == 422
    r = client.post("/jobs", json={"task": "x", "surprise": 1})
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert client.get("/jobs/0123456789abcdef").status_code == 404
    assert client.get("/jobs/not-hex!").status_code == 422
    r = client.post("/jobs", json={"task": "x"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
