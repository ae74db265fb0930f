"""A bounded pool of decoder *processes*: a hung or crashing decoder costs one request, never the server.

Why processes and not threads: ffmpeg runs native code on untrusted bytes. In a thread, a pathological clip can
take the server's memory (an 8K-frame clip once raised a server's RSS by 10 GB), hang a thread forever, or crash
the whole process. Here each slot is a one-process ``ProcessPoolExecutor`` (spawn context: no forked torch or
event-loop state), started with an address-space cap (``RLIMIT_AS``) so an allocation past it fails inside the
worker. A decode past ``timeout_s`` kills its worker (400 ``invalid_video``); a worker that dies (killed, OOM,
segfault) answers that request 503 ``overloaded``; in both cases only that slot is replaced, so other in-flight
decodes are untouched. At most ``workers`` decodes run at once; the rest wait for a slot (bounded by admission in
the route). ``workers=0`` decodes in a thread of this process (the old behaviour, for debugging).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from server.decoding import decode_clip
from vpetl.errors import InvalidVideo, Overloaded
from vpetl.protocol import InputSpec
from vpetl.video import VideoLimits

if TYPE_CHECKING:
    from server.settings import Settings

logger = logging.getLogger(__name__)

#: Fault injection for tests (never set in production): a file holding seconds each decode sleeps before work,
#: read on every decode so a test can make one decode slow without restarting the server.
FAULT_DELAY_ENV = "VPETL_FAULT_DECODE_DELAY_FILE"


def _init_worker(memory_bytes: int | None) -> None:
    if memory_bytes:
        # Address space, not RSS: ffmpeg's allocations fail (MemoryError / a decoder error) instead of the kernel
        # OOM-killing a random process of the machine.
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it shuts the pool down itself
    import vpetl.video as video

    video._decord()  # import decord now: the first request should not pay for it


def _fault_delay() -> None:
    path = os.environ.get(FAULT_DELAY_ENV)
    if not path:
        return
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            delay = float(f.read().strip() or 0)
        time.sleep(delay)


def _decode_job(data: bytes, spec: InputSpec, limits: VideoLimits) -> np.ndarray:
    _fault_delay()
    try:
        return decode_clip(data, spec, limits)
    except MemoryError:
        raise InvalidVideo("the clip needs more memory to decode than a decoder process may use") from None


def _ping() -> int:
    return os.getpid()


@dataclass
class _Slot:
    """One decoder process (its executor starts it on the first submit)."""

    executor: cf.ProcessPoolExecutor
    created: float = field(default_factory=time.monotonic)

    def pids(self) -> list[int]:
        return [p.pid for p in (self.executor._processes or {}).values() if p.pid is not None]

    def kill(self) -> None:
        for proc in list((self.executor._processes or {}).values()):
            with contextlib.suppress(Exception):
                proc.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)


class DecodePool:
    """``await pool.decode(data, spec)`` → (C, T, H, W) float32, in a worker process with ``limits`` applied.

    Args:
        workers: decoder processes (0: decode in a thread of this process).
        timeout_s: one decode's limit (the worker is killed past it: 400 invalid_video).
        memory_mb: RLIMIT_AS of each worker process.
        limits: the :class:`~vpetl.video.VideoLimits` every clip is checked against before decoding.
    """

    def __init__(self, workers: int = 2, *, timeout_s: float = 10.0, memory_mb: float | None = 2048.0,
                 limits: VideoLimits | None = None) -> None:
        if workers < 0 or timeout_s <= 0:
            raise ValueError("workers must be >= 0 and timeout_s > 0")
        self.workers, self.timeout_s = workers, timeout_s
        self.memory_bytes = int(memory_mb * 1024 * 1024) if memory_mb else None
        self.limits = limits or VideoLimits(max_frame_pixels=1920 * 1080)
        self._slots: list[_Slot] = []
        self._idle: asyncio.Queue[_Slot] | None = None
        self.replaced = 0  # workers killed or lost and replaced (for stats)

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodePool:
        """The pool a predictor uses: the ``/predict`` limits and the decode settings."""
        limits = VideoLimits(
            max_frame_pixels=settings.predict_max_frame_pixels,
            max_frames=settings.predict_max_frames,
            max_duration_s=settings.predict_max_duration_s,
        )
        return cls(settings.decode_workers, timeout_s=settings.decode_timeout_s, memory_mb=settings.decode_memory_mb,
                   limits=limits)

    # ------------------------------------------------------------------------------------------- lifecycle
    def _new_slot(self) -> _Slot:
        executor = cf.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(self.memory_bytes,),
        )  # fmt: skip
        return _Slot(executor)

    def _ensure(self) -> asyncio.Queue[_Slot]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            self._slots = [self._new_slot() for _ in range(self.workers)]
            for slot in self._slots:
                self._idle.put_nowait(slot)
        return self._idle

    async def start(self) -> None:
        """Spawn the workers now (≈0.3 s each, in the background) so the first requests do not pay for it."""
        if self.workers == 0:
            return
        self._ensure()
        for slot in self._slots:
            slot.executor.submit(_ping)

    def close(self) -> None:
        """Kill every worker (a decode in flight fails its caller); a later decode starts a fresh pool."""
        for slot in self._slots:
            slot.kill()
        self._slots, self._idle = [], None

    def pids(self) -> list[int]:
        return [pid for slot in self._slots for pid in slot.pids()]

    def _replace(self, slot: _Slot) -> _Slot:
        slot.kill()
        self.replaced += 1
        fresh = self._new_slot()
        self._slots = [fresh if s is slot else s for s in self._slots]
        fresh.executor.submit(_ping)  # respawn now, not on the next request
        return fresh

    # ---------------------------------------------------------------------------------------------- decode
    async def decode(self, data: bytes, spec: InputSpec) -> np.ndarray:
        if self.workers == 0:
            return await asyncio.wait_for(asyncio.to_thread(decode_clip, data, spec, self.limits), self.timeout_s)
        idle = self._ensure()
        slot = await idle.get()
        replace = False
        future: cf.Future[np.ndarray] | None = None
        try:
            try:
                future = slot.executor.submit(_decode_job, data, spec, self.limits)
            except (BrokenProcessPool, RuntimeError):  # the worker died while idle: replace it, try once more
                slot = self._replace(slot)
                future = slot.executor.submit(_decode_job, data, spec, self.limits)
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            replace = True  # the decode may never end: only killing its process frees the slot
            logger.warning("a decode ran past %.1f s; its worker was killed", self.timeout_s)
            raise InvalidVideo(f"the clip took longer than {self.timeout_s:g} s to decode") from None
        except BrokenProcessPool:
            replace = True
            logger.warning("a decoder process died mid-decode; replaced")
            raise Overloaded("the decoder process handling this clip died; retry shortly") from None
        except asyncio.CancelledError:
            # the caller gave up (deadline, disconnect): a decode still running would hold the slot for nothing
            replace = future is not None and not future.done()
            raise
        finally:
            if replace:
                slot = self._replace(slot)
            idle.put_nowait(slot)
