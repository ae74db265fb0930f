"""API key records, the per-key limit scripts and the audit stream on a real Redis (standalone and Cluster)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from vpetl.errors import InvalidRequest
from vpetl.store import keys as k
from vpetl.store.apikeys import ApiKeyStore, Limits, UnknownKey, load_keys, matches, parse_token
from vpetl.store.clients import async_redis_client, redis_client


def test_a_key_is_stored_as_a_hash_of_its_token_and_revoked_for_good(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        store = ApiKeyStore(client)
        token, record = store.create("site 12 camera", ["predict", "read"], ["site-12-*"], expires_in_s=3600)
        assert parse_token(token) == record.id and token.startswith(record.prefix + "_")
        # the independent reference: sha256 of the token's UTF-8 bytes; the secret itself is nowhere in Redis
        assert record.secret_sha256 == hashlib.sha256(token.encode()).hexdigest()
        secret = token.split("_", 2)[2].encode()
        for key in client.scan_iter(match="vpetl:*"):
            kind = client.type(key)
            values = client.hvals(key) if kind == b"hash" else [client.get(key)] if kind == b"string" else []
            assert not any(secret in (v or b"") for v in values), key
        assert [r.id for r in store.list()] == [record.id]
        assert store.list()[0].public()["state"] == "active" and "secret_sha256" not in store.list()[0].public()
        before = int(client.get(k.API_KEYS_GENERATION))
        revoked = store.revoke(record.prefix)  # by prefix or id
        assert revoked.state() == "revoked" and int(client.get(k.API_KEYS_GENERATION)) == before + 1
        assert store.revoke(record.id).revoked_at == revoked.revoked_at  # idempotent: no second change
        assert int(client.get(k.API_KEYS_GENERATION)) == before + 1
        with pytest.raises(UnknownKey):
            store.revoke("0123456789ab")
        generation, records = asyncio.run(_load(redis_url))
        assert generation == before + 1 and records[record.id].state() == "revoked"
    finally:
        client.close()


async def _load(url: str) -> tuple[int, dict]:
    client = async_redis_client(url)
    try:
        return await load_keys(client)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("scopes", "tasks"),
    [([], ["*"]), (["write"], ["*"]), (["read"], []), (["read"], ["Site"]), (["read"], ["a[bc]"]), (["read"], ["a?"])],
)
def test_bad_scopes_and_patterns_are_refused_before_anything_is_stored(
    redis_url: str, scopes: list[str], tasks: list[str]
) -> None:
    client = redis_client(redis_url)
    try:
        with pytest.raises(InvalidRequest):
            ApiKeyStore(client).create("x", scopes, tasks)
        assert client.hlen(k.API_KEYS) == 0 and client.get(k.API_KEYS_GENERATION) is None
    finally:
        client.close()


def test_patterns_use_star_as_the_only_wildcard() -> None:
    assert matches(["site-12-*"], "site-12-cam") and matches(["site-12-*"], "site-12-")
    assert not matches(["site-12-*"], "site-123") and not matches(["site-12-*"], "xsite-12-a")
    assert matches(["a", "b*"], "bz") and not matches(["a"], "ab")


def test_expiry(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        _, record = ApiKeyStore(client).create("short", ["read"], expires_in_s=0.2)
        assert record.state() == "active"
        assert record.state(now=record.created_at + 0.25) == "expired"
    finally:
        client.close()


def test_token_bucket_allows_the_burst_then_refills_at_the_rate(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        _, record = ApiKeyStore(client).create("bucket", ["read"], rps=4.0, burst=3)
    finally:
        client.close()

    async def run() -> tuple[list[float], float]:
        aclient = async_redis_client(redis_url)
        try:
            limits = Limits(aclient)
            waits = [await limits.take(record) for _ in range(4)]
            await asyncio.sleep(0.3)  # 0.3 s at 4 tokens/s refills 1.2 tokens
            return waits, await limits.take(record)
        finally:
            await aclient.aclose()

    started = time.monotonic()
    waits, after = asyncio.run(run())
    assert time.monotonic() - started < 1.0, "the test's timing assumptions need the four takes to be quick"
    assert waits[:3] == [0.0, 0.0, 0.0]  # the burst
    # the fourth finds (almost) no token: it must wait up to 1/rate = 0.25 s for the next one
    assert 0.2 < waits[3] <= 0.25
    assert after == 0.0


def test_quota_counts_until_the_limit_and_refunds(redis_url: str) -> None:
    async def run() -> list[object]:
        aclient = async_redis_client(redis_url)
        try:
            limits = Limits(aclient)
            counter = k.key_upload_key("0123456789ab", 20_000)
            out: list[object] = [await limits.count(counter, 600, 1000, 60)]
            out.append(await limits.count(counter, 500, 1000, 60))
            out.append(int(await aclient.get(counter)))
            await limits.refund(counter, 600)
            out.append(await limits.count(counter, 1000, 1000, 60))
            out.append(await aclient.ttl(counter))
            return out
        finally:
            await aclient.aclose()

    first, second, total, third, ttl = asyncio.run(run())
    assert (first, second, total, third) == (True, False, 600, True)
    assert 0 < ttl <= 60


def test_audit_stream_is_bounded(redis_url: str) -> None:
    async def run() -> int:
        aclient = async_redis_client(redis_url)
        try:
            limits = Limits(aclient)
            for i in range(1500):
                await limits.audit({"ts": i, "key": "admin", "status": 200}, max_len=200)
            return int(await aclient.xlen(k.AUDIT_STREAM))
        finally:
            await aclient.aclose()

    length = asyncio.run(run())
    # MAXLEN ~ trims whole stream nodes (stream-node-max-entries, 100 by default): near 200, far below 1500
    assert 200 <= length <= 300


def test_key_layout_puts_each_keys_counters_in_one_slot() -> None:
    from redis.crc import key_slot

    key_id = "0123456789ab"
    slots = {key_slot(name.encode()) for name in (k.key_bucket_key(key_id), k.key_upload_key(key_id, 1),
                                                  k.key_jobs_key(key_id, 2))}  # fmt: skip
    assert len(slots) == 1
    assert key_slot(k.API_KEYS.encode()) == key_slot(k.API_KEYS_GENERATION.encode())  # one MULTI/EXEC
    with pytest.raises(InvalidRequest):
        k.key_bucket_key("../x")


def test_a_servers_key_cache_follows_key_events(redis_url: str) -> None:
    """server.auth.KeyCache on this Redis (standalone and Cluster: pub/sub and the {auth} slot): a created and a
    revoked key reach a started cache through the event, well before its periodic check (set to 30 s here)."""
    from server.auth import KeyCache

    async def run() -> tuple[float, float]:
        aclient = async_redis_client(redis_url)
        cache = KeyCache(aclient, check_s=30.0)
        sync = redis_client(redis_url)
        try:
            await cache.start()
            await asyncio.sleep(0.3)  # the listener subscribes
            started = time.monotonic()
            _, record = ApiKeyStore(sync).create("watched", ["read"])
            while record.id not in cache.records:
                assert time.monotonic() - started < 2.0, "the create event never arrived"
                await asyncio.sleep(0.01)
            created = time.monotonic() - started
            started = time.monotonic()
            ApiKeyStore(sync).revoke(record.id)
            while cache.records[record.id].state() != "revoked":
                assert time.monotonic() - started < 2.0, "the revoke event never arrived"
                await asyncio.sleep(0.01)
            return created, time.monotonic() - started
        finally:
            await cache.stop()
            await aclient.aclose()
            sync.close()

    created, revoked = asyncio.run(run())
    assert created < 1.0 and revoked < 1.0
