"""The device's local cache: the backbone ONNX graph (downloaded once) and one adapter file per task.

Layout under the root (``VPETL_EDGE_CACHE``, default ``~/.cache/vpetl-edge``)::

    backbone/<family>.onnx      the graph (``default`` when the server picked the family)
    backbone/<family>.json      {etag, size, family, downloaded_at}
    adapters/<task>/<sha256>.safetensors
    adapters/<task>/current.json {task, version, sha256, size, method, updated_at}

- **Conditional GETs**: an adapter is re-downloaded only when its ETag changed (``If-None-Match`` → 304), and
  :meth:`EdgeCache.sync` does not even ask for a task whose listed sha256 is the one on disk, so a sync with nothing
  new moves no adapter bytes.
- **Atomic writes**: every file goes to a temp file in the same directory, then ``os.replace``; the pointer
  (``current.json``) is written after the blob, so a reader never sees a pointer to a missing or partial file.
- **Integrity**: an adapter's identity is the sha256 of its bytes, which is also its ETag; bytes whose hash differs
  from the ETag are refused, and a cached file is re-hashed when it is read.
- Task names are checked against the server's pattern before they become path components.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_client.sdk import Client, Progress
from vpetl.artifact import AdapterFile, atomic_write, read_adapter, read_adapter_meta
from vpetl.errors import InvalidAdapter, InvalidRequest, UnknownTask, VpetlError
from vpetl.protocol import is_valid_task_name

logger = logging.getLogger(__name__)

DEFAULT_FAMILY = "default"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> Path:
    """``VPETL_EDGE_CACHE``, else ``$XDG_CACHE_HOME/vpetl-edge``, else ``~/.cache/vpetl-edge``."""
    env = os.environ.get("VPETL_EDGE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vpetl-edge"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_task(task: str) -> str:
    if not is_valid_task_name(task):
        raise InvalidRequest(f"invalid task name {task!r}: use ^[a-z0-9][a-z0-9_.-]{{0,63}}$")
    return task


_GRAPH_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


def _check_family(family: str) -> str:
    """A graph key (a family, ``bapat-int8``, ``merged-<task>``): one safe path component."""
    if not _GRAPH_KEY.fullmatch(family) or ".." in family:
        raise InvalidRequest(f"invalid ONNX family {family!r}")
    return family


def graph_key(family: str | None = None, quant: str | None = None, task: str | None = None) -> str:
    """The cache name of a graph: ``bapat``, ``bapat-int8``, ``merged-<task>``, ``merged-<task>-int8``."""
    base = f"merged-{_check_task(task)}" if task else (family or DEFAULT_FAMILY)
    return _check_family(base if quant in (None, "fp32") else f"{base}-{quant}")


def _device_id() -> dict[str, str]:
    """What an ORT-optimised graph is tied to: onnxruntime's version and this CPU (its fused kernels)."""
    import platform

    import onnxruntime as ort

    return {"ort": ort.__version__, "machine": platform.machine(), "processor": platform.processor()}


@dataclass
class CachedAdapter:
    """The pointer of one cached task."""

    task: str
    version: int | None
    sha256: str
    size: int
    method: str | None = None
    updated_at: str = field(default_factory=_now)
    dtype: str | None = None  # the dtype asked of the server (None: as stored there)
    source_sha256: str | None = None  # the server's artifact sha256 (differs from ``sha256`` after a conversion)

    @property
    def server_sha256(self) -> str:
        """The sha256 the server lists for this adapter."""
        return self.source_sha256 or self.sha256


@dataclass
class SyncReport:
    """What a sync did: per task ``updated`` / ``unchanged`` / ``removed`` / ``failed: …``, the backbone's state,
    the adapter and graph bytes received, requests sent and seconds taken."""

    adapters: dict[str, str] = field(default_factory=dict)
    backbone: str = "skipped"
    graphs: dict[str, str] = field(default_factory=dict)  # merged single-task graphs: downloaded / unchanged
    adapter_bytes: int = 0
    onnx_bytes: int = 0
    requests: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EdgeCache:
    """The cache directory; every method is safe to call from several processes (atomic renames)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    # ------------------------------------------------------------------------------------------ backbone
    def backbone_path(self, family: str | None = None) -> Path:
        return self.root / "backbone" / f"{_check_family(family or DEFAULT_FAMILY)}.onnx"

    def backbone_record(self, family: str | None = None) -> dict[str, Any] | None:
        record = self.backbone_path(family).with_suffix(".json")
        if not record.is_file() or not self.backbone_path(family).is_file():
            return None
        try:
            return json.loads(record.read_text())
        except (OSError, ValueError):
            return None

    def backbones(self) -> dict[str, dict[str, Any]]:
        """Cached graphs by family key: their records (etag, family, components, backbone_sha256) plus ``path``."""
        folder = self.root / "backbone"
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
            record = self.backbone_record(path.stem)
            if record is not None:
                found[path.stem] = {**record, "path": path}
        return found

    def pull_backbone(
        self,
        client: Client,
        family: str | None = None,
        *,
        progress: Progress | None = None,
        check: bool = True,
        quant: str | None = None,
        task: str | None = None,
    ) -> tuple[Path, bool]:
        """Download a graph if missing (or, with ``check``, if its ETag changed). Returns (path, downloaded).

        ``quant="int8"``: the int8 variant; ``task``: that task's merged single-task graph. A downloaded graph is
        optimised once for this device (:func:`edge_client.runner.optimize_graph`) and the result kept beside it.
        """
        key = graph_key(family, quant, task)
        path = self.backbone_path(key)
        record = self.backbone_record(key)
        if record is not None and not check:
            return path, False
        got = client.download_onnx(
            record.get("etag") if record else None,
            dest=path,
            progress=progress,
            family=family,
            quant=quant if quant != "fp32" else None,
            task=task,
        )
        if got is None:
            return path, False
        from edge_client.runner import read_graph_info  # onnxruntime only once a graph is actually fetched

        info = read_graph_info(path)
        meta = {
            "etag": got.etag,
            "size": got.size,
            "family": info.family,
            "requested": key,
            "components": list(info.components),
            "backbone": info.backbone,
            "backbone_sha256": info.backbone_sha256,
            "quant": info.quant,
            "merged_task": info.merged_task,
            "merged_adapter_sha256": info.merged_adapter_sha256,
            "downloaded_at": _now(),
            "downloaded_ns": time.time_ns(),
            "optimized": self._optimize(path),
        }
        atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        return path, True

    @staticmethod
    def _optimize(path: Path) -> dict[str, str] | None:
        """Optimise the graph for this device once (at sync time, not at every start); None if that failed (the
        plain graph is then used and optimised in memory)."""
        from edge_client.runner import optimize_graph

        try:
            optimize_graph(path, path.with_suffix(".opt"))
        except Exception as e:  # noqa: BLE001 - an optimisation failure must not lose the download
            logger.warning("could not optimise %s for this device (%s); the plain graph will be used", path, e)
            return None
        return {"file": path.with_suffix(".opt").name, **_device_id()}

    def runner_graph(self, record: dict[str, Any]) -> tuple[Path, bool]:
        """(file, preoptimized) to build a Runner from a record of :meth:`backbones`: the device-optimised copy
        when it was made by this onnxruntime on this CPU, else the downloaded graph."""
        path = Path(record["path"])
        opt = record.get("optimized")
        if isinstance(opt, dict) and opt.get("file") == path.with_suffix(".opt").name:
            optimized = path.with_suffix(".opt")
            if optimized.is_file() and {k: v for k, v in opt.items() if k != "file"} == _device_id():
                return optimized, True
        return path, False

    def graph_for(self, adapter: AdapterFile) -> dict[str, Any] | None:
        """The cached graph to run ``adapter`` with: its own merged graph if there is one (zero adapter inputs),
        else the most recently downloaded graph whose backbone and family fit (so a ``sync --quant int8`` makes the
        int8 graph the one used)."""
        from edge_client.runner import graph_family_fits

        fits = []
        for record in self.backbones().values():
            if record.get("backbone_sha256") != adapter.meta.backbone_sha256:
                continue
            if record.get("merged_adapter_sha256"):
                if record["merged_adapter_sha256"] == adapter.sha256:
                    return record
                continue
            if graph_family_fits(tuple(record.get("components", ())), adapter.meta.method):
                fits.append(record)
        return max(fits, key=lambda r: int(r.get("downloaded_ns", 0))) if fits else None

    # ------------------------------------------------------------------------------------------ adapters
    def _task_dir(self, task: str) -> Path:
        return self.root / "adapters" / _check_task(task)

    def tasks(self) -> list[str]:
        folder = self.root / "adapters"
        if not folder.is_dir():
            return []
        return sorted(
            p.name for p in folder.iterdir() if is_valid_task_name(p.name) and (p / "current.json").is_file()
        )

    def adapter(self, task: str) -> CachedAdapter | None:
        """The pointer of a cached task, or None."""
        pointer = self._task_dir(task) / "current.json"
        if not pointer.is_file():
            return None
        try:
            entry = CachedAdapter(**json.loads(pointer.read_text()))
        except (OSError, ValueError, TypeError):
            return None  # a damaged pointer is as good as none: the next pull rewrites it
        # the sha256 becomes a file name: only ever 64 hex digits
        return entry if isinstance(entry.sha256, str) and _SHA256.fullmatch(entry.sha256) else None

    def adapter_path(self, task: str) -> Path:
        entry = self.adapter(task)
        if entry is None:
            raise UnknownTask(f"task {task!r} is not in the local cache ({self.root}); run `vpetl-edge sync`")
        return self._task_dir(task) / f"{entry.sha256}.safetensors"

    def read_adapter_bytes(self, task: str) -> bytes:
        """The cached file's bytes, re-hashed against its recorded sha256 (a damaged file is refused)."""
        path = self.adapter_path(task)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UnknownTask(f"task {task!r}: the cached file is missing ({e}); run `vpetl-edge sync`") from e
        entry = self.adapter(task)
        assert entry is not None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise InvalidAdapter(f"task {task!r}: the cached file is damaged (sha256 mismatch); pull it again")
        return data

    def load_adapter(self, task: str) -> AdapterFile:
        """The cached adapter, validated (format, dtypes, finiteness) by :func:`vpetl.artifact.read_adapter` and
        checked against its recorded sha256 (hashed once: read_adapter hashes the bytes anyway, and on ViT-B that
        hash is most of a task switch)."""
        path = self.adapter_path(task)
        entry = self.adapter(task)
        assert entry is not None
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UnknownTask(f"task {task!r}: the cached file is missing ({e}); run `vpetl-edge sync`") from e
        try:
            file = read_adapter(data)
        except InvalidAdapter as e:
            raise InvalidAdapter(f"task {task!r}: the cached file is damaged ({e.message}); pull it again") from e
        if file.sha256 != entry.sha256:
            raise InvalidAdapter(f"task {task!r}: the cached file is damaged (sha256 mismatch); pull it again")
        return file

    def put_adapter(
        self,
        task: str,
        data: bytes,
        *,
        version: int | None = None,
        etag: str | None = None,
        dtype: str | None = None,
        source_sha256: str | None = None,
    ) -> CachedAdapter:
        """Store adapter bytes as the task's current file (blob first, pointer last; older blobs removed).

        Raises InvalidAdapter when ``etag`` is given and is not the sha256 of ``data``, or the bytes are no adapter.
        """
        sha = hashlib.sha256(data).hexdigest()
        if etag is not None and etag != sha:
            raise InvalidAdapter(
                f"task {task!r}: downloaded bytes hash to {sha[:12]}… but the server's ETag is {etag[:12]}… "
                "(transfer corrupted?); nothing was stored"
            )
        meta = read_adapter_meta(data)  # a header check before anything is written
        folder = self._task_dir(task)
        atomic_write(folder / f"{sha}.safetensors", data)
        entry = CachedAdapter(
            task=task,
            version=version,
            sha256=sha,
            size=len(data),
            method=meta.method,
            dtype=dtype,
            source_sha256=source_sha256 if source_sha256 != sha else None,
        )
        atomic_write(folder / "current.json", json.dumps(asdict(entry), indent=2).encode())
        for old in folder.glob("*.safetensors"):
            if old.name != f"{sha}.safetensors":
                old.unlink(missing_ok=True)
        return entry

    def remove(self, task: str) -> bool:
        folder = self._task_dir(task)
        if not folder.exists():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def pull_adapter(
        self,
        client: Client,
        task: str,
        version: int | None = None,
        *,
        progress: Progress | None = None,
        listed_version: int | None = None,
        listed_sha256: str | None = None,
        dtype: str | None = None,
    ) -> tuple[CachedAdapter, bool]:
        """Fetch the task's adapter (current, or ``version``) unless the cached one is still it (304).

        ``dtype="float16"`` downloads half-precision tensors (half the bytes; the runner computes in fp32 anyway).
        Returns (pointer, downloaded). The version comes from the response header when the server sends one,
        else from the listing when the hashes agree, else from the task's version history.
        """
        cached = self.adapter(task)
        current = cached is not None and cached.dtype == dtype  # a copy in another dtype is not "current"
        blob = client.download_adapter(
            task, version=version, etag=cached.sha256 if current and cached else None, progress=progress, dtype=dtype
        )
        if blob is None:
            assert cached is not None
            return cached, False
        sha = blob.source_sha256 or hashlib.sha256(blob).hexdigest()
        found = blob.version or version
        if found is None and listed_sha256 == sha:
            found = listed_version
        if found is None:
            try:
                found = next((v.version for v in client.adapter(task).versions if v.sha256 == sha), None)
            except VpetlError:
                found = None
        return self.put_adapter(
            task, bytes(blob), version=found, etag=blob.etag, dtype=dtype, source_sha256=blob.source_sha256
        ), True

    # ---------------------------------------------------------------------------------------------- sync
    def sync(
        self,
        client: Client,
        *,
        backbone: bool = True,
        family: str | None = None,
        tasks: Iterable[str] | None = None,
        progress: Progress | None = None,
        prune: bool = True,
        dtype: str | None = None,
        quant: str | None = None,
        merged: Iterable[str] = (),
    ) -> SyncReport:
        """Pull every task's current adapter that changed, and the backbone graph if it is missing.

        Args:
            client: the server.
            backbone: also fetch the backbone graph when it is not cached (an existing one is kept as is).
            family: which graph (None: the server's default).
            tasks: only these tasks (default: every task the server lists).
            progress: byte progress of each download.
            prune: remove cached tasks the server no longer has.
            dtype: fetch adapters as this float type (``"float16"``: half the bytes); None: as stored.
            quant: the backbone graph variant (``"int8"``); None: fp32.
            merged: tasks whose merged single-task graph to keep current (re-fetched when its ETag changed, i.e.
                when the task's adapter did).
        """
        start = time.perf_counter()
        before = (client.stats.adapter_bytes, client.stats.onnx_bytes, client.stats.requests)
        report = SyncReport()
        listing = {info.task: info for info in client.adapters()}
        wanted = list(listing) if tasks is None else list(tasks)
        for task in wanted:
            info = listing.get(task)
            if info is None:
                report.adapters[task] = "failed: unknown task on the server"
                continue
            cached = self.adapter(task)
            if (
                cached is not None
                and cached.server_sha256 == info.sha256
                and cached.dtype == dtype
                and self.adapter_path(task).is_file()
            ):
                report.adapters[task] = "unchanged"  # not even a conditional GET: the listing says it is current
                continue
            try:
                _, changed = self.pull_adapter(
                    client,
                    task,
                    progress=progress,
                    listed_version=info.version,
                    listed_sha256=info.sha256,
                    dtype=dtype,
                )
            except VpetlError as e:
                report.adapters[task] = f"failed: [{e.code}] {e.message}"
                continue
            report.adapters[task] = "updated" if changed else "unchanged"
        if prune and tasks is None:
            for task in self.tasks():
                if task not in listing:
                    self.remove(task)
                    report.adapters[task] = "removed"
        if backbone:
            if self.backbone_record(graph_key(family, quant)) is not None:
                report.backbone = "present"
            else:
                _, changed = self.pull_backbone(client, family, progress=progress, quant=quant)
                report.backbone = "downloaded" if changed else "present"
        for task in merged:
            try:
                _, changed = self.pull_backbone(client, family, progress=progress, quant=quant, task=task)
            except VpetlError as e:
                report.graphs[task] = f"failed: [{e.code}] {e.message}"
                continue
            report.graphs[task] = "downloaded" if changed else "unchanged"
        report.adapter_bytes = client.stats.adapter_bytes - before[0]
        report.onnx_bytes = client.stats.onnx_bytes - before[1]
        report.requests = client.stats.requests - before[2]
        report.seconds = time.perf_counter() - start
        return report


__all__ = ["CachedAdapter", "EdgeCache", "SyncReport", "atomic_write", "default_cache_dir", "graph_key"]
