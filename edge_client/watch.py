"""``vpetl-edge watch DIR``: predict every clip that appears in a folder (a camera writing segments), offline-first.

- **New clips**: the folder is polled; a file counts once its size and mtime held still across one poll (a segment
  still being written is not read half-way), hidden and ``.part``/``.tmp`` files are skipped, and each file is
  handled once (by path, size and mtime: a rewritten file is a new clip).
- **Where it runs**: through the server (default) with a short timeout, or on the device (``--local``). When the
  server is unreachable — refused, or accepting connections and never answering — the clip is predicted locally
  from the cached adapter and graph after at most the timeout (1.5 s by default), and the server is tried again
  only every ``retry_every`` seconds, so later clips go straight to the device. The cached adapter and graph are
  fetched at start while the server is there and the adapter re-checked every ``retry_every`` seconds (a 304 when
  it is current), so the fallback runs the current version.
- **Output**: one JSON line per clip (stdout or ``--out FILE``, appended and flushed per line): the prediction in
  the server's shape plus ``clip``, ``source`` (``server`` / ``local``) and ``fallback``; or ``error``.
- **Labelled uploads** (``--upload-label L``): each clip is copied into an on-disk queue and sent when the server is
  reachable; an entry is deleted only after the server answered for it (201, or ``duplicate``: the server dedups
  by the clip's sha256), so delivery is at-least-once and a resend is harmless. The queue is bounded (clips and
  bytes); a clip that does not fit is not queued and a one-line message says so. A clip the server refuses (4xx)
  moves to ``rejected/`` with the error beside it, so it is not retried forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge_client.cache import EdgeCache, _now
from edge_client.local import FALLBACK_TIMEOUT_S, LocalTask
from edge_client.sdk import Client, ConnectionFailed
from vpetl.errors import VpetlError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
UPLOAD_TIMEOUT_S = 5.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- upload queue
@dataclass
class QueueEntry:
    sha256: str
    blob: Path
    meta: dict[str, Any]


class UploadQueue:
    """Labelled clips waiting for the server, one ``<sha256><suffix>`` file + ``<sha256>.json`` each, bounded.

    The blob is written first (temp file, rename) and the record last, so a crash leaves no record without its
    clip; ``pending`` lists only complete entries, oldest first.
    """

    def __init__(self, root: Path, *, max_bytes: int, max_clips: int) -> None:
        self.root, self.max_bytes, self.max_clips = Path(root), int(max_bytes), int(max_clips)
        self.root.mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[QueueEntry]:
        entries = []
        for record in sorted(self.root.glob("*.json")):
            try:
                meta = json.loads(record.read_text())
                blob = self.root / f"{record.stem}{meta['suffix']}"
            except (OSError, ValueError, KeyError):
                continue
            if blob.is_file():
                entries.append(QueueEntry(record.stem, blob, meta))
        return sorted(entries, key=lambda e: str(e.meta.get("queued_at", "")))

    def usage(self) -> tuple[int, int]:
        """(clips, bytes) queued."""
        entries = self.pending()
        return len(entries), sum(e.blob.stat().st_size for e in entries if e.blob.is_file())

    def put(self, clip: Path, task: str, label: str, split: str) -> str:
        """Queue ``clip``: ``queued``, ``already queued`` or ``full`` (nothing written then)."""
        sha = _sha256(clip)
        if (self.root / f"{sha}.json").is_file():
            return "already queued"
        count, size = self.usage()
        if count + 1 > self.max_clips or size + clip.stat().st_size > self.max_bytes:
            return "full"
        suffix = clip.suffix.lower() if clip.suffix.lower() in VIDEO_SUFFIXES else ".mp4"
        tmp = self.root / f".{sha}.{os.getpid()}.tmp"
        shutil.copyfile(clip, tmp)
        os.replace(tmp, self.root / f"{sha}{suffix}")
        meta = {
            "task": task,
            "label": label,
            "split": split,
            "clip": str(clip),
            "suffix": suffix,
            "queued_at": _now(),
            "queued_ns": time.time_ns(),
        }
        tmp_meta = self.root / f".{sha}.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, self.root / f"{sha}.json")
        return "queued"

    def _drop(self, entry: QueueEntry) -> None:
        (self.root / f"{entry.sha256}.json").unlink(missing_ok=True)  # the record first: no orphan record
        entry.blob.unlink(missing_ok=True)

    def flush(self, client: Client) -> dict[str, int]:
        """Send what is queued, oldest first, until the server is unreachable. Returns counts of ``sent``,
        ``duplicate`` and ``rejected``."""
        done = {"sent": 0, "duplicate": 0, "rejected": 0}
        for entry in self.pending():
            m = entry.meta
            try:
                answer = client.upload_clip(entry.blob, m["task"], m["label"], m["split"])
            except ConnectionFailed:
                break  # stays queued; the next flush resends it (the server dedups by sha256)
            except VpetlError as e:
                if e.http_status and 400 <= e.http_status < 500 and e.http_status not in (408, 429):
                    rejected = self.root / "rejected"
                    rejected.mkdir(exist_ok=True)
                    shutil.move(entry.blob, rejected / entry.blob.name)
                    (rejected / f"{entry.sha256}.json").write_text(
                        json.dumps({**m, "error": e.message, "code": e.code})
                    )
                    (self.root / f"{entry.sha256}.json").unlink(missing_ok=True)
                    done["rejected"] += 1
                    continue
                break  # 5xx / 429: try again later
            done["duplicate" if answer.duplicate else "sent"] += 1
            self._drop(entry)
        return done


# ---------------------------------------------------------------------------------------------------- watcher
@dataclass
class WatchConfig:
    folder: Path
    task: str
    local: bool = False
    upload_label: str | None = None
    split: str = "train"
    topk: int = 5
    interval: float = 0.5
    timeout: float = FALLBACK_TIMEOUT_S
    retry_every: float = 10.0
    max_clips: int | None = None
    once: bool = False
    queue_dir: Path | None = None
    queue_max_bytes: int = 512 * 2**20
    queue_max_clips: int = 10_000


@dataclass
class Watcher:
    """The watch loop (``run``); ``say`` prints one-line notices (stderr in the CLI)."""

    config: WatchConfig
    cache: EdgeCache
    server: str
    token: str | None
    out: IO[str]
    say: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    handled: int = 0
    online: bool = True
    _next_try: float = 0.0
    _next_refresh: float = 0.0
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict)
    _done: set[tuple[Path, int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        c = self.config
        self.quick = Client(self.server, token=self.token, timeout=c.timeout, retries=0)
        self.full = Client(self.server, token=self.token)
        self.uploader = Client(self.server, token=self.token, timeout=max(c.timeout, UPLOAD_TIMEOUT_S), retries=0)
        self.local = LocalTask(self.cache, c.task, warn=self.say)
        self.queue = (UploadQueue(c.queue_dir or self.cache.root / "upload-queue", max_bytes=c.queue_max_bytes,
                                  max_clips=c.queue_max_clips) if c.upload_label else None)  # fmt: skip
        self._local_ready = False
        self._warned = False

    def close(self) -> None:
        for client in (self.quick, self.full, self.uploader):
            client.close()

    # ------------------------------------------------------------------------------------------------ steps
    def _went_offline(self, why: str) -> None:
        if self.online:
            self.say(
                f"server unreachable ({why}); predicting on this device, retrying every {self.config.retry_every:g} s"
            )
        self.online, self._next_try = False, self.clock() + self.config.retry_every

    def _maybe_back(self) -> None:
        if self.online and self.clock() >= self._next_refresh:
            self._next_refresh = self.clock() + self.config.retry_every
            self._prepare_local()  # keep the cached adapter current for the fallback (a 304 when it is)
        if self.online or self.clock() < self._next_try:
            return
        if self.quick.health():
            self.online = True
            self.say("server reachable again")
            self._prepare_local()  # a newer adapter may have been published meanwhile
            self._flush()
        else:
            self._next_try = self.clock() + self.config.retry_every

    def _prepare_local(self) -> None:
        try:
            state = self.local.refresh(self.full, self.quick, offline=not self.online)
            self._local_ready = True
            if state == "offline" and self.online:
                self._went_offline("adapter check failed")
        except ConnectionFailed as e:
            self._went_offline(e.message.split(";")[0])
        except VpetlError as e:
            if self.config.local:
                raise
            if not self._warned:  # once, not at every periodic refresh
                self._warned = True
                self.say(f"no local fallback for {self.config.task}: [{e.code}] {e.message}")

    def _flush(self) -> None:
        if self.queue is None or not self.online:
            return
        done = self.queue.flush(self.uploader)
        if done["rejected"]:
            self.say(f"{done['rejected']} queued clip(s) refused by the server: moved to {self.queue.root}/rejected")
        if self.queue.pending():  # something is still queued: the server went away mid-flush (or a 5xx)
            self._went_offline("uploads pending")

    def _predict(self, clip: Path) -> dict[str, Any]:
        c = self.config
        fallback = False
        if not c.local and self.online:
            try:
                r = self.quick.predict(clip, c.task, topk=c.topk)
                return {
                    "clip": str(clip),
                    "source": "server",
                    "fallback": False,
                    "local": False,
                    **r.model_dump(mode="json"),
                }
            except ConnectionFailed as e:
                self._went_offline(type(e.__cause__).__name__ if e.__cause__ else "connection failed")
                fallback = True
        elif not c.local:
            fallback = True
        if not self._local_ready:
            self._prepare_local()
        if not self._local_ready:
            raise ConnectionFailed(f"the server is unreachable and task {c.task!r} is not cached on this device")
        return {"clip": str(clip), "source": "local", "fallback": fallback, **self.local.predict(clip, c.topk)}

    def _emit(self, line: dict[str, Any]) -> None:
        self.out.write(json.dumps(line, default=str) + "\n")
        self.out.flush()

    def handle(self, clip: Path) -> dict[str, Any]:
        """Predict one clip, emit its line, queue it for upload (and send the queue when online)."""
        try:
            line = self._predict(clip)
        except VpetlError as e:
            line = {"clip": str(clip), "error": {"code": e.code, "message": e.message}}
        if self.queue is not None and self.config.upload_label:
            state = self.queue.put(clip, self.config.task, self.config.upload_label, self.config.split)
            line["upload"] = state
            if state == "full":
                count, size = self.queue.usage()
                self.say(
                    f"upload queue full ({count} clips, {size / 2**20:.1f} MiB; limits "
                    f"{self.queue.max_clips} clips, {self.queue.max_bytes / 2**20:.1f} MiB): {clip.name} not "
                    f"queued for upload — it is still predicted; free {self.queue.root} or raise --queue-max-mb"
                )
        self._emit(line)
        self.handled += 1
        self._flush()
        return line

    def ready_files(self) -> Iterator[Path]:
        """Files under the folder whose size and mtime held since the last poll and that were not handled yet."""
        now: dict[Path, tuple[int, int]] = {}
        for path in sorted(self.config.folder.iterdir()) if self.config.folder.is_dir() else []:
            name = path.name
            if name.startswith(".") or path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # removed between the listing and the stat
            now[path] = (st.st_size, st.st_mtime_ns)
        ready = [p for p, sig in now.items() if sig[0] > 0 and self._seen.get(p) == sig
                 and (p, *sig) not in self._done]  # fmt: skip
        self._seen = now
        yield from sorted(ready, key=lambda p: (now[p][1], p.name))

    def run(self) -> int:
        """Poll until ``max_clips`` clips were handled (or, with ``once``, until the folder is done)."""
        c = self.config
        self._prepare_local()  # while the server is there: the fallback needs the adapter and graph cached
        self._next_refresh = self.clock() + c.retry_every
        if self.online:
            self._flush()  # what an earlier run left queued
        idle_polls = 0
        while c.max_clips is None or self.handled < c.max_clips:
            self._maybe_back()
            found = False
            for clip in self.ready_files():
                found = True
                size, mtime = self._seen[clip]
                self._done.add((clip, size, mtime))
                self.handle(clip)
                if c.max_clips is not None and self.handled >= c.max_clips:
                    break
            idle_polls = 0 if found else idle_polls + 1
            if c.once and idle_polls >= 2:  # two quiet polls: every file there has settled and been handled
                break
            time.sleep(c.interval)
        if self.online:
            self._flush()
        return self.handled


__all__ = ["QueueEntry", "UploadQueue", "WatchConfig", "Watcher"]
