"""The deployment's backbone identity, registered once in Redis: every server, replica and worker loads *that*
backbone, and its weights reach every node through Redis itself (no shared local path).

Keys (one hash tag, so on Redis Cluster they all live in one slot)::

    vpetl:{backbone}:identity           string  JSON BackboneRecord; written SET NX, last (after the weights)
    vpetl:{backbone}:weights:<sha>:<i>  string  chunk i of the safetensors file whose sha256 is <sha>

Registration writes the weight chunks first and the identity last with SET NX, so a reader that sees an identity
always finds every chunk, and of two processes registering at once exactly one wins (the other compares its own
backbone with the winner's and refuses to start if they differ). A backbone built from its seeded initialisation
(no checkpoint: tests, benchmarks) is registered without weights (``weights="seeded"``): every node rebuilds the
same tensors from the seed, and the sha256 check proves it.

Torch-free: the caller turns a backbone into bytes and back (:mod:`vpetl.backbones.identity`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import redis
from pydantic import Field

from vpetl.artifact import atomic_write
from vpetl.errors import VpetlError
from vpetl.protocol import BackboneInfo

TAG = "vpetl:{backbone}"
IDENTITY_KEY = TAG + ":identity"
# 8 MiB: one SET of this size is ≈25 ms on loopback (ENVIRONMENT.md); a ViT-B file (≈350 MB) is ≈42 chunks.
CHUNK_BYTES = 8 << 20


class BackboneMismatch(VpetlError):
    """This process's backbone is not the one registered for the deployment (a start-up refusal)."""

    code = "backbone_mismatch"
    http_status = 409


class BackboneNotRegistered(VpetlError):
    code = "backbone_not_registered"
    http_status = 503


class BackboneRecord(BackboneInfo):
    """What ``GET /backbone`` answers, plus where the weights are."""

    weights: Literal["blob", "seeded"] = Field(
        ..., description="blob: safetensors chunks in Redis; seeded: rebuilt from the named backbone's seeded init"
    )
    weights_sha256: str | None = Field(None, description="sha256 of the safetensors file (blob weights)")
    weights_size: int = Field(0, ge=0)
    chunks: int = Field(0, ge=0)
    source: str = Field("", description="where the registering process got the weights (file name, 'seeded init')")
    registered_at: float = 0.0

    def info(self) -> BackboneInfo:
        return BackboneInfo(**self.model_dump(include=set(BackboneInfo.model_fields)))


def chunk_key(weights_sha256: str, index: int) -> str:
    return f"{TAG}:weights:{weights_sha256}:{index}"


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_BYTES):
        yield bytes(view[start : start + CHUNK_BYTES])


class BackboneRegistry:
    """Blocking access to the registered backbone (start-up only: never on a request path)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def get(self) -> BackboneRecord | None:
        raw = self.redis.get(IDENTITY_KEY)
        return None if raw is None else BackboneRecord.model_validate_json(raw)

    def wait(self, timeout_s: float, poll_s: float = 0.5) -> BackboneRecord | None:
        """The record, waiting up to ``timeout_s`` for another process to register it."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get()
            if record is not None or time.monotonic() >= deadline:
                return record
            time.sleep(poll_s)

    def register(self, info: BackboneInfo, *, weights: bytes | None, source: str) -> tuple[BackboneRecord, bool]:
        """Register ``info`` (and its safetensors ``weights``; None for a seeded init) unless a backbone is
        already registered. Returns (the registered record, whether this call registered it)."""
        fields: dict[str, object] = {"weights": "seeded", "source": source, "registered_at": time.time()}
        if weights is not None:
            sha = hashlib.sha256(weights).hexdigest()
            count = 0
            for count, chunk in enumerate(_chunks(weights), start=1):
                self.redis.set(chunk_key(sha, count - 1), chunk)
            fields.update(weights="blob", weights_sha256=sha, weights_size=len(weights), chunks=count)
        record = BackboneRecord(**info.model_dump(), **fields)  # type: ignore[arg-type]
        if self.redis.set(IDENTITY_KEY, record.model_dump_json(), nx=True):
            return record, True
        winner = self.get()
        if winner is None:  # unregistered between our SET NX and GET: try once more
            return self.register(info, weights=weights, source=source)
        if weights is not None and winner.weights_sha256 != record.weights_sha256:
            self._drop_chunks(record)  # lost the race with other bytes: ours would be orphans
        return winner, False

    def read_weights(self, record: BackboneRecord) -> bytes:
        """The registered safetensors bytes, checked against the record's sha256."""
        if record.weights != "blob" or not record.weights_sha256:
            raise BackboneNotRegistered("the registered backbone has no weights blob (seeded init)")
        sha = record.weights_sha256
        parts = self.redis.mget([chunk_key(sha, i) for i in range(record.chunks)])
        missing = [i for i, part in enumerate(parts) if part is None]
        if missing:
            raise BackboneNotRegistered(
                f"backbone weights in Redis are incomplete ({len(missing)} of {record.chunks} chunks missing): "
                "re-register with `vpetl backbone register --force`"
            )
        data = b"".join(parts)  # type: ignore[arg-type]
        if hashlib.sha256(data).hexdigest() != sha:
            raise BackboneNotRegistered("backbone weights in Redis do not match their sha256: re-register them")
        return data

    def fetch_to(self, record: BackboneRecord, cache_dir: Path) -> Path:
        """The registered weights as a local file under ``cache_dir`` (downloaded once, keyed by sha256)."""
        path = Path(cache_dir) / f"{record.name}-{record.weights_sha256}.safetensors"
        if path.is_file() and _file_sha256(path) == record.weights_sha256:
            return path
        atomic_write(path, self.read_weights(record))
        return path

    def unregister(self) -> BackboneRecord | None:
        """Remove the identity (and its chunks): an operator's reset, e.g. before serving another backbone."""
        record = self.get()
        self.redis.delete(IDENTITY_KEY)
        if record is not None:
            self._drop_chunks(record)
        return record

    def _drop_chunks(self, record: BackboneRecord) -> None:
        if record.weights_sha256:
            for i in range(record.chunks):
                self.redis.delete(chunk_key(record.weights_sha256, i))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def describe(record: BackboneRecord) -> str:
    """One line for logs and refusals."""
    return f"{record.name} (sha256 {record.sha256[:12]}…, {record.weights} weights from {record.source or '?'})"


def record_json(record: BackboneRecord) -> str:
    return json.dumps(record.model_dump(mode="json"), indent=2)
