"""Scoped API keys on a real ``vpetl serve`` (uvicorn, real Redis): every scope × every route, task patterns (404
outside them), anonymous 401s, the key routes, rate limits (429 + Retry-After, other keys unaffected), quotas
and the audit trail."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from server.auth import is_public
from server.settings import Settings
from tests.server.conftest import BACKBONE, ServerProcess, db_url, error_code, flush, make_adapter

pytestmark = pytest.mark.integration

TOKEN = "auth-routes-admin-token"
MP4 = {"Content-Type": "video/mp4"}
OCTET = {"Content-Type": "application/octet-stream"}
INSIDE, OUTSIDE = "site-1-a", "other-b"  # the keys' patterns are site-1-*
SCOPES = ("predict", "read", "upload", "train", "publish", "admin")


@dataclass
class World:
    server: ServerProcess
    admin: httpx.Client
    clips: dict[str, bytes]
    adapter: bytes
    jobs: dict[str, str]  # task -> id of a job of that task
    keys: dict[str, str]  # scope -> token of a key with only that scope, tasks site-1-*

    def as_key(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.server.url, timeout=60.0, headers=headers)

    def fresh_task(self, name: str) -> str:
        """A task published just now (for DELETE, which removes it)."""
        r = self.admin.put(f"/adapters/{name}", content=self.adapter, headers=OCTET)
        assert r.status_code == 201, r.text
        return name


@pytest.fixture(scope="module")
def world(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory, clips: dict[str, bytes]) -> Iterator[World]:
    url = db_url(redis_server_url, 15)
    flush(url)
    tmp = tmp_path_factory.mktemp("auth_routes")
    args = ["--redis-url", url, "--backbone", BACKBONE, "--data-dir", str(tmp / "data")]
    proc = ServerProcess(args, tmp / "server.log", env={"VPETL_ADMIN_TOKEN": TOKEN}).start()
    admin = httpx.Client(base_url=proc.url, timeout=60.0, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        adapter = make_adapter("x", seed=3)
        jobs = {}
        for task in (INSIDE, OUTSIDE):
            assert admin.put(f"/adapters/{task}", content=adapter, headers=OCTET).status_code == 201
            r = admin.post(f"/datasets/{task}/clips", params={"label": "walk"}, content=clips["ok"], headers=MP4)
            assert r.status_code == 201, r.text
            r = admin.post("/jobs", json={"task": task, "epochs": 1})
            assert r.status_code == 202, r.text
            jobs[task] = r.json()["job_id"]
        keys = {}
        for scope in SCOPES:
            r = admin.post("/keys", json={"name": f"only {scope}", "scopes": [scope], "tasks": ["site-1-*"]})
            assert r.status_code == 201, r.text
            keys[scope] = r.json()["token"]
        yield World(proc, admin, clips, adapter, jobs, keys)
    finally:
        admin.close()
        proc.stop()
        flush(url)


Call = Callable[[httpx.Client, World, str], httpx.Response]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: str | None  # None: any valid key
    call: Call
    tasked: bool = True  # the request names a task (inside or outside the key's patterns)
    ok: int = 200


def _delete(c: httpx.Client, w: World, task: str) -> httpx.Response:
    if task == INSIDE:  # deleting the shared task would break the other rows: delete one made for this call
        task = w.fresh_task(f"site-1-gone-{time.monotonic_ns() % 10**9}")
    return c.delete(f"/adapters/{task}")


ROUTES = [
    Route("POST", "/predict", "predict",
          lambda c, w, t: c.post("/predict", params={"task": t}, content=w.clips["ok"], headers=MP4)),
    Route("GET", "/adapters", "read", lambda c, w, t: c.get("/adapters"), tasked=False),
    Route("GET", "/adapters/{task}", "read", lambda c, w, t: c.get(f"/adapters/{t}")),
    Route("GET", "/adapters/{task}/download", "read", lambda c, w, t: c.get(f"/adapters/{t}/download")),
    Route("PUT", "/adapters/{task}", "publish",
          lambda c, w, t: c.put(f"/adapters/{t}", content=w.adapter, headers=OCTET), ok=201),
    Route("POST", "/adapters/{task}/rollback", "publish",
          lambda c, w, t: c.post(f"/adapters/{t}/rollback", json={"version": 1})),
    Route("DELETE", "/adapters/{task}", "admin", _delete),
    Route("POST", "/datasets/{task}/clips", "upload",
          lambda c, w, t: c.post(f"/datasets/{t}/clips", params={"label": "run"}, content=w.clips["ok2"],
                                 headers=MP4), ok=201),  # fmt: skip
    Route("GET", "/datasets/{task}", "read", lambda c, w, t: c.get(f"/datasets/{t}")),
    Route("POST", "/jobs", "train", lambda c, w, t: c.post("/jobs", json={"task": t, "epochs": 1}), ok=202),
    Route("GET", "/jobs", "read", lambda c, w, t: c.get("/jobs"), tasked=False),
    Route("GET", "/jobs/{job_id}", "read", lambda c, w, t: c.get(f"/jobs/{w.jobs.get(t, 'ab' * 8)}")),
    Route("GET", "/backbone", None, lambda c, w, t: c.get("/backbone"), tasked=False),
    Route("GET", "/backbone/onnx", None, lambda c, w, t: c.get("/backbone/onnx", params={"family": "linear"}),
          tasked=False),
    Route("GET", "/backbone/onnx/agreement", "read",
          lambda c, w, t: c.get("/backbone/onnx/agreement", params={"task": t, "quant": "int8"})),
    Route("GET", "/metrics", "admin", lambda c, w, t: c.get("/metrics"), tasked=False),
    Route("POST", "/keys", "admin", lambda c, w, t: c.post("/keys", json={"name": "made", "scopes": ["read"]}),
          tasked=False, ok=201),
    Route("GET", "/keys", "admin", lambda c, w, t: c.get("/keys"), tasked=False),
    Route("DELETE", "/keys/{key_id}", "admin", lambda c, w, t: c.delete(f"/keys/{_spare_key(w)}"), tasked=False),
    Route("GET", "/audit", "admin", lambda c, w, t: c.get("/audit"), tasked=False),
]  # fmt: skip


def _spare_key(w: World) -> str:
    r = w.admin.post("/keys", json={"name": "to revoke", "scopes": ["read"]})
    assert r.status_code == 201
    return str(r.json()["key"]["id"])


def test_the_table_covers_every_route(world: World) -> None:
    spec = world.admin.get("/openapi.json").json()
    public = Settings(metrics_public=False)  # the allow-list (/healthz, /readyz, /ui …) is not in the table
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if not is_public(p, public)}
    assert served == {(r.method, r.path) for r in ROUTES}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
def test_every_scope_on_every_route(world: World, route: Route, scope: str) -> None:
    with world.as_key(world.keys[scope]) as client:
        r = route.call(client, world, INSIDE)
        allowed = route.scope is None or scope in (route.scope, "admin")
        if not allowed:
            assert (r.status_code, error_code(r)) == (403, "insufficient_scope"), r.text
            return
        assert r.status_code == route.ok, r.text
        if route.tasked:
            # outside the key's patterns the task does not exist for it: the same 404 as a task nobody made
            hidden, missing = route.call(client, world, OUTSIDE), route.call(client, world, "site-2-nothing")
            assert hidden.status_code == 404, hidden.text
            assert error_code(hidden) in ("unknown_task", "unknown_job"), hidden.text
            assert missing.status_code == 404 and error_code(missing) == error_code(hidden)


def test_anonymous_requests_get_401_everywhere_but_the_probes(world: World) -> None:
    with world.as_key(None) as anon:
        for route in ROUTES:
            r = route.call(anon, world, INSIDE)
            assert (r.status_code, error_code(r)) == (401, "unauthorized"), (route.path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert anon.get(path).status_code == 200, path
        assert anon.get("/no/such/route").status_code == 401  # not even the route map is shown


def test_listings_show_only_the_keys_tasks(world: World) -> None:
    with world.as_key(world.keys["read"]) as client:
        tasks = [a["task"] for a in client.get("/adapters").json()["adapters"]]
        assert tasks and all(t.startswith("site-1-") for t in tasks)
        page = client.get("/adapters", params={"limit": 1}).json()
        assert [a["task"] for a in page["adapters"]] == sorted(tasks)[:1] and page["total"] == len(tasks)
        jobs = client.get("/jobs").json()["jobs"]
        assert jobs and all(j["params"]["task"].startswith("site-1-") for j in jobs)
    every = [a["task"] for a in world.admin.get("/adapters").json()["adapters"]]
    assert OUTSIDE in every


def test_bad_credentials(world: World) -> None:
    revoked_token = world.admin.post("/keys", json={"name": "gone", "scopes": ["read"]}).json()
    assert world.admin.delete(f"/keys/{revoked_token['key']['prefix']}").json()["state"] == "revoked"
    expiring = world.admin.post("/keys", json={"name": "brief", "scopes": ["read"], "expires_in_s": 0.5}).json()
    time.sleep(0.6)
    token = world.keys["read"]
    cases = {
        token[:-1] + ("A" if token[-1] != "A" else "B"): "forbidden",  # one character of the secret wrong
        "vpk_000000000000_" + "A" * 43: "forbidden",  # a key id that does not exist
        "not-a-key": "forbidden",
        revoked_token["token"]: "key_revoked",
        expiring["token"]: "key_expired",
    }
    for bad, code in cases.items():
        with world.as_key(bad) as client:
            r = client.get("/backbone")
            assert (r.status_code, error_code(r)) == (403, code), bad
            assert bad not in r.text


def test_key_management_validates_and_never_shows_a_secret(world: World) -> None:
    bodies = [{"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": []},
              {"name": "x", "scopes": ["read"], "tasks": ["Bad*"]}, {"name": "", "scopes": ["read"]},
              {"name": "x", "scopes": ["read"], "rps": 0}, {"name": "x", "scopes": ["read"], "extra": 1}]  # fmt: skip
    for body in bodies:
        before = world.admin.get("/keys").json()
        r = world.admin.post("/keys", json=body)
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), body
        assert world.admin.get("/keys").json() == before
    listing = world.admin.get("/keys").text
    assert not any(token in listing for token in world.keys.values())
    assert "secret_sha256" not in listing
    assert world.admin.get("/audit", params={"task": "a" * 65}).status_code == 422
    assert world.admin.get("/audit", params={"task": "a..b"}).status_code == 422
    assert (world.admin.delete("/keys/0123456789ab").status_code, world.admin.delete("/keys/zz").status_code) == (
        404, 422,
    )  # fmt: skip


def test_a_rate_limited_key_gets_429s_and_the_others_do_not(world: World) -> None:
    limited = world.admin.post("/keys", json={"name": "slow", "scopes": ["read"], "rps": 1, "burst": 2}).json()
    with world.as_key(limited["token"]) as slow, world.as_key(world.keys["read"]) as other:
        codes = [slow.get("/backbone") for _ in range(5)]
        assert [r.status_code for r in codes[:2]] == [200, 200]
        refused = [r for r in codes[2:] if r.status_code == 429]
        assert refused, [r.status_code for r in codes]
        assert error_code(refused[0]) == "rate_limited" and 1 <= int(refused[0].headers["retry-after"]) <= 1
        assert all(other.get("/backbone").status_code == 200 for _ in range(10))  # its own bucket: none
        time.sleep(1.05)
        assert slow.get("/backbone").status_code == 200  # refilled at 1/s


def test_quotas_on_uploads_and_jobs(world: World) -> None:
    size = len(world.clips["ok3"])
    body = {"name": "quota", "scopes": ["upload", "train"], "tasks": ["site-1-*"],
            "upload_mb_per_day": (size * 1.5) / (1024 * 1024), "jobs_per_hour": 1}  # fmt: skip
    token = world.admin.post("/keys", json=body).json()["token"]
    with world.as_key(token) as client:
        ok = client.post(
            f"/datasets/{INSIDE}/clips", params={"label": "jump"}, content=world.clips["ok3"], headers=MP4
        )
        assert ok.status_code == 201, ok.text
        # a clip that cannot be decoded is refused and not counted: the quota still has room for nothing bigger
        bad = client.post(f"/datasets/{INSIDE}/clips", params={"label": "jump"}, content=b"x" * 100, headers=MP4)
        assert bad.status_code == 400
        over = client.post(f"/datasets/{INSIDE}/clips", params={"label": "jump"}, content=world.clips["ok4"],
                           headers=MP4)  # fmt: skip
        assert (over.status_code, error_code(over)) == (429, "quota_exceeded"), over.text
        assert 1 <= int(over.headers["retry-after"]) <= 86_400
        assert client.post("/jobs", json={"task": INSIDE, "epochs": 1}).status_code == 202
        second = client.post("/jobs", json={"task": INSIDE, "epochs": 1})
        assert (second.status_code, error_code(second)) == (429, "quota_exceeded")
        assert 1 <= int(second.headers["retry-after"]) <= 3_600


def test_state_changes_are_audited_with_the_key_prefix(world: World) -> None:
    key = world.admin.post("/keys", json={"name": "auditor", "scopes": ["publish"], "tasks": [INSIDE]}).json()
    with world.as_key(key["token"]) as client:
        assert client.post(f"/adapters/{INSIDE}/rollback", json={"version": 1}).status_code == 200
        assert client.put(f"/adapters/{OUTSIDE}", content=world.adapter, headers=OCTET).status_code == 404
        assert client.post("/predict", params={"task": INSIDE}, content=b"", headers=MP4).status_code == 403
    entries = world.admin.get("/audit", params={"count": 20}).json()["entries"]
    mine = [e for e in entries if e["key"] == key["key"]["prefix"]]
    assert [(e["method"], e["route"], e["task"], e["status"]) for e in mine] == [
        ("PUT", "/adapters/{task}", OUTSIDE, 404),
        ("POST", "/adapters/{task}/rollback", INSIDE, 200),
    ]  # newest first; /predict is not a state change
    made = [e for e in entries if e["route"] == "/keys" and e["method"] == "POST"]
    assert made[0]["key"] == "admin" and made[0]["path"] == f"/keys/{key['key']['id']}" and made[0]["status"] == 201
    assert key["token"] not in world.admin.get("/audit").text
    only = world.admin.get("/audit", params={"task": OUTSIDE}).json()["entries"]
    assert only and all(e["task"] == OUTSIDE for e in only)


def test_the_edge_sdk_with_a_device_key(world: World) -> None:
    """``vpetl-edge``'s client with a key (``--token`` / ``VPETL_TOKEN``): it sees and predicts only its tasks."""
    from edge_client.sdk import Client
    from vpetl import errors as E

    body = {"name": "edge device", "scopes": ["predict", "read"], "tasks": ["site-1-*"]}
    token = world.admin.post("/keys", json=body).json()["token"]
    with Client(world.server.url, token=token, retries=0) as device:
        seen = {a.task for a in device.adapters()}
        assert INSIDE in seen and OUTSIDE not in seen and all(t.startswith("site-1-") for t in seen)
        assert device.predict(world.clips["ok"], INSIDE).task == INSIDE
        assert device.download_adapter(INSIDE) is not None
        with pytest.raises(E.VpetlError) as hidden:
            device.predict(world.clips["ok"], OUTSIDE)
        assert hidden.value.code == "unknown_task"
        with pytest.raises(E.VpetlError) as refused:
            device.push_adapter(world.adapter, INSIDE)
        assert refused.value.code == "insufficient_scope"


def test_the_public_readiness_probe_names_no_tasks(world: World) -> None:
    with world.as_key(world.keys["predict"]) as client:  # the task's adapter is loaded: its name is in the stats
        r = client.post("/predict", params={"task": INSIDE}, content=world.clips["ok"], headers=MP4)
        assert r.status_code == 200
    (full,) = world.admin.get("/readyz").json()["replicas"]
    assert INSIDE in full["tasks"] and "load_failures" in full  # the admin token sees every task
    for token in (None, world.keys["read"], "wrong"):  # anonymous, a key limited to site-1-*, a bad token
        with world.as_key(token) as client:
            r = client.get("/readyz")
            assert r.status_code == 200
            (replica,) = r.json()["replicas"]
            assert "tasks" not in replica and "load_failures" not in replica and INSIDE not in r.text
            assert replica["backbone_sha256"] == full["backbone_sha256"]
