"""``vpetl keys`` and ``vpetl audit`` on a real Redis (in-process CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from server.cli import app as cli_app


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.output


def test_create_list_revoke_and_audit(redis_url: str) -> None:
    code, out = _run("keys", "create", "site 12", "-s", "predict", "-s", "read", "-t", "site-12-*", "--rps", "5",
                     "--redis-url", redis_url)  # fmt: skip
    assert code == 0, out
    token = out.strip().splitlines()[-1]
    assert token.startswith("vpk_") and "site-12-*" in out
    code, out = _run("keys", "list", "--redis-url", redis_url, "--json")
    listed = json.loads(out)["keys"]
    assert [(k["name"], k["scopes"], k["tasks"], k["rps"], k["state"]) for k in listed] == [
        ("site 12", ["predict", "read"], ["site-12-*"], 5.0, "active")
    ]
    assert token not in out and "secret_sha256" not in out
    code, table = _run("keys", "list", "--redis-url", redis_url)
    assert code == 0 and listed[0]["prefix"] in table and token not in table
    code, out = _run("keys", "revoke", listed[0]["prefix"], "--redis-url", redis_url)
    assert code == 0 and "revoked" in out
    entries = json.loads(_run("audit", "--redis-url", redis_url, "--json")[1])["entries"]
    assert [(e["key"], e["method"], e["path"]) for e in entries] == [
        ("cli", "DELETE", f"/keys/{listed[0]['id']}"), ("cli", "POST", f"/keys/{listed[0]['id']}"),
    ]  # fmt: skip
    assert json.loads(_run("audit", "--task", "site-12-a", "--redis-url", redis_url, "--json")[1]) == {"entries": []}


def test_refusals_exit_2_with_the_error_code(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VPETL_REDIS_URL", raising=False)
    code, out = _run("keys", "create", "x", "-s", "root", "--redis-url", redis_url)
    assert code == 2 and "invalid_request" in out
    code, out = _run("keys", "revoke", "0123456789ab", "--redis-url", redis_url)
    assert code == 2 and "unknown_key" in out
    assert json.loads(_run("keys", "list", "--redis-url", redis_url, "--json")[1]) == {"keys": []}
    code, out = _run("keys", "list", "--data-dir", str(tmp_path))  # no --redis-url and no embedded Redis there
    assert code == 2 and "--redis-url" in out


def test_the_embedded_redis_of_vpetl_up_is_found_by_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --redis-url: the unix socket of the redis-server `vpetl up` / `vpetl serve` start under --data-dir."""
    from vpetl.store import EmbeddedRedis

    monkeypatch.delenv("VPETL_REDIS_URL", raising=False)
    with EmbeddedRedis(tmp_path / "redis"):
        code, out = _run("keys", "create", "lab", "-s", "read", "--data-dir", str(tmp_path), "--json")
        assert code == 0, out
        listed = json.loads(_run("keys", "list", "--data-dir", str(tmp_path), "--json")[1])["keys"]
        assert [k["name"] for k in listed] == ["lab"]
