"""``vpetl keys create|list|revoke`` and ``vpetl audit``: API key management and the audit trail, straight on the
deployment's Redis (the same records ``POST/GET/DELETE /keys`` and ``GET /audit`` serve; servers pick a change up
within a second through the key events and the periodic check)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from server.cli.app import app, console, fail, print_json
from vpetl.errors import VpetlError

keys_app = typer.Typer(help="API keys: scoped (predict, read, upload, train, publish, admin) and task-limited.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(keys_app, name="keys")

REDIS_HELP = "the deployment's Redis (default VPETL_REDIS_URL, else the embedded redis-server under --data-dir)"


def _store(redis_url: str | None, data_dir: Path) -> Any:
    from vpetl.store.apikeys import ApiKeyStore
    from vpetl.store.clients import redis_client
    from vpetl.store.embedded import _socket_path

    if redis_url is None:
        socket = _socket_path(data_dir / "redis")  # where `vpetl up` / `vpetl serve` start their embedded Redis
        if not socket.exists():
            fail(f"no Redis: pass --redis-url (or VPETL_REDIS_URL), or run this where `vpetl up` keeps {data_dir}")
        redis_url = f"unix://{socket}"
    return ApiKeyStore(redis_client(redis_url))


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


RedisOpt = typer.Option(None, "--redis-url", envvar="VPETL_REDIS_URL", help=REDIS_HELP)
DataDirOpt = typer.Option(Path(".vpetl"), "--data-dir", envvar="VPETL_DATA_DIR", help="data dir of `vpetl up`")
JsonOpt = typer.Option(False, "--json", help="machine-readable output")


@keys_app.command("create")
def create(
    name: str = typer.Argument(..., help="who holds the key: a device, a site, a tenant"),
    scope: list[str] = typer.Option(..., "--scope", "-s", help="predict | read | upload | train | publish | admin"),
    task: list[str] = typer.Option(["*"], "--task", "-t", help="task pattern ('*' the only wildcard): site-12-*"),
    expires_in_s: float | None = typer.Option(None, "--expires-in-s", help="lifetime in seconds (default: none)"),
    rps: float | None = typer.Option(None, "--rps", help="requests per second (shared by every replica)"),
    burst: int | None = typer.Option(None, "--burst", help="token bucket size (default max(1, 2 * rps))"),
    upload_mb_per_day: float | None = typer.Option(None, "--upload-mb-per-day", help="clip upload MiB per UTC day"),
    jobs_per_hour: int | None = typer.Option(None, "--jobs-per-hour", help="training jobs per UTC hour"),
    redis_url: str | None = RedisOpt,
    data_dir: Path = DataDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a key and print its token once (Redis keeps only its sha256)."""
    store = _store(redis_url, data_dir)
    try:
        token, record = store.create(name, scope, task, actor="cli", expires_in_s=expires_in_s, rps=rps, burst=burst,
                                     upload_mb_per_day=upload_mb_per_day, jobs_per_hour=jobs_per_hour)  # fmt: skip
    except VpetlError as e:
        fail(e)
    finally:
        store.redis.close()
    if as_json:
        print_json({"token": token, "key": record.public()})
        return
    console.print(f"[green]created[/] {record.prefix} ({name}): scopes {', '.join(record.scopes)}; "
                  f"tasks {', '.join(record.tasks)}; expires {_when(record.expires_at)}")  # fmt: skip
    console.print("token (shown once; give it to the device as --token / VPETL_TOKEN):")
    typer.echo(token)


@keys_app.command("list")
def list_keys(redis_url: str | None = RedisOpt, data_dir: Path = DataDirOpt, as_json: bool = JsonOpt) -> None:
    """Every key: prefix, name, state, scopes, task patterns, limits (never a secret)."""
    store = _store(redis_url, data_dir)
    try:
        records = [r.public() for r in store.list()]
    finally:
        store.redis.close()
    if as_json:
        print_json({"keys": records})
        return
    table = Table("name", "state", "scopes", "tasks", "limits", "expires")
    table.columns.insert(0, Column("prefix", no_wrap=True))  # what `vpetl keys revoke` takes: never cut short
    for r in records:
        limits = ", ".join(f"{n}={r[n]:g}" for n in ("rps", "upload_mb_per_day", "jobs_per_hour") if r[n] is not None)
        table.add_row(r["prefix"], r["name"], r["state"], ",".join(r["scopes"]), ",".join(r["tasks"]), limits or "-",
                      _when(r["expires_at"]))  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key: str = typer.Argument(..., help="key id or prefix (vpk_…)"),
    redis_url: str | None = RedisOpt,
    data_dir: Path = DataDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Revoke a key: every server refuses it within a second."""
    store = _store(redis_url, data_dir)
    try:
        record = store.revoke(key, actor="cli")
    except VpetlError as e:
        fail(e)
    finally:
        store.redis.close()
    if as_json:
        print_json(record.public())
        return
    console.print(f"[yellow]revoked[/] {record.prefix} ({record.name}) at {_when(record.revoked_at)}")


@app.command("audit")
def audit(
    count: int = typer.Option(50, "--count", "-n", min=1, max=10_000, help="newest entries to show"),
    task: str | None = typer.Option(None, "--task", help="only this task's entries (among the newest --count)"),
    redis_url: str | None = RedisOpt,
    data_dir: Path = DataDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The audit trail (newest first): every state change with the key that made it, its route, task and result."""
    store = _store(redis_url, data_dir)
    try:
        entries = store.audit(count, task)
    finally:
        store.redis.close()
    if as_json:
        print_json({"entries": entries})
        return
    table = Table("time", "key", "method", "route", "task", "status")
    for e in entries:
        table.add_row(_when(e.get("ts")), e.get("key", ""), e.get("method", ""), e.get("route", ""),
                      e.get("task", "") or "-", str(e.get("status", "")))  # fmt: skip
    console.print(table)
