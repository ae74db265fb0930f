"""The training worker (``vpetl worker``): consume jobs, train on the task's uploaded clips, publish if good enough.

One job: read the task's clips from the clip store (train split; the val split, or a deterministic 20 % of train
when no val clips were uploaded), train the requested method on the frozen backbone, evaluate on val, and publish
the adapter as the task's next version — by default only if its val top-1 is not worse than the current version's
on the same clips (the job result says which).

Exactly once, as far as anyone can see (queue mechanics in ``vpetl.store.jobs``):

- while a job runs, a heartbeat thread re-claims its stream entry every ``claim_idle_ms / 3`` — independently of
  training progress, which can be minutes apart — so XAUTOCLAIM never hands a live worker's job to another;
- a worker that dies leaves its entry pending and idle; another takes it over after ``claim_idle_ms``, up to
  ``max_attempts`` starts in all, after which the job is ``failed`` and dead-lettered instead of killing worker
  after worker;
- a redelivered job that already finished is acknowledged and skipped, and one that already published (its worker
  died right after) is finished without retraining; the publish itself is idempotent per job id, so even a race
  cannot make a second version. The state and the ack are written together, last.

Test hooks (fault injection for tests/training/test_worker_processes.py; never set in production):
``VPETL_TEST_CRASH_TASK=<task>`` makes the worker SIGKILL itself when it starts training a job of that task (a job
that kills its worker, like an OOM kill), ``VPETL_TEST_EPOCH_DELAY_S=<s>`` sleeps after every epoch (a long job on
a tiny model).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from vpetl.backbones.base import Backbone
from vpetl.data.readers import ClipItem, VideoDataset
from vpetl.errors import DatasetError, IncompatibleAdapter, InvalidRequest, UnknownTask, UnknownVersion, VpetlError
from vpetl.store import AdapterStore, ClipStore, StoredClip
from vpetl.store.backbones import BackboneRegistry, describe
from vpetl.store.jobs import MAX_ATTEMPTS, JobQueue, job_params

logger = logging.getLogger(__name__)


class JobLost(Exception):
    """This worker no longer owns the job (it stalled past the claim timeout and another worker took it over)."""


class Heartbeat:
    """Keeps a running job's stream entry fresh from a daemon thread until the ``with`` block ends.

    Three beats fit in one claim timeout, so a beat lost to a Redis hiccup or a busy CPU does not cost the claim.
    ``lost`` is set once the entry turns out to belong to someone else (or to nobody): the job must then stop
    without writing anything, the new owner finishes it.
    """

    def __init__(self, queue: JobQueue, entry_id: str, consumer: str, claim_idle_ms: int) -> None:
        self.queue, self.entry_id, self.consumer = queue, entry_id, consumer
        self.interval_s = max(0.05, claim_idle_ms / 3000)
        self.lost = threading.Event()
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{entry_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.queue.heartbeat(self.entry_id, self.consumer):
                    self.lost.set()
                    return
                self.beats += 1
            except Exception as e:  # Redis briefly away: the next beat may get through before the claim expires
                logger.warning("heartbeat of entry %s failed (%s); retrying", self.entry_id, e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def _test_hooks(task: str) -> float:
    """Apply the fault-injection hooks of the module docstring; returns the per-epoch delay (0: none)."""
    if task and os.environ.get("VPETL_TEST_CRASH_TASK") == task:
        logger.error("test hook: job of task %s kills its worker", task)
        os.kill(os.getpid(), signal.SIGKILL)
    return float(os.environ.get("VPETL_TEST_EPOCH_DELAY_S") or 0.0)


def _method_config(params: Mapping[str, Any]) -> Any:
    from vpetl.petl.registry import make_config

    config = make_config(str(params["method"]))
    options: dict[str, Any] = {}
    if params.get("bottleneck") is not None and config.size_field:
        options[config.size_field] = int(params["bottleneck"])
    if params.get("scale") is not None and "scale" in config.field_names():
        options["scale"] = float(params["scale"])
    return config.with_options(**options) if options else config


def task_datasets(clips: ClipStore, task: str) -> tuple[VideoDataset, VideoDataset]:
    """Train/val datasets of a task's uploaded clips; classes are the sorted union of labels.

    Items are clip-store objects, fetched when decoded: the worker needs no local copy, so it may run on another
    node than the API that stored them."""
    train = clips.list_clips(task, "train")
    val = clips.list_clips(task, "val")
    if not train:
        raise DatasetError(f"task {task!r} has no training clips: upload some with `vpetl-edge upload`")
    classes = sorted({clip.label for clip in train + val})
    index = {c: i for i, c in enumerate(classes)}
    if not val:  # hold out every 5th clip of each class, deterministically
        per_class: dict[str, list[StoredClip]] = {}
        for item in sorted(train, key=lambda clip: (clip.label, clip.sha256)):
            per_class.setdefault(item.label, []).append(item)
        train, val = [], []
        for items in per_class.values():
            # every 5th clip; a class with 2–5 clips still gives its last one (a single clip stays in train)
            held = {j for j in range(len(items)) if j % 5 == 4} or ({len(items) - 1} if len(items) > 1 else set())
            for j, item in enumerate(items):
                (val if j in held else train).append(item)
        if not val:  # too few clips to hold any out: evaluate on the training clips (optimistic, but defined)
            val = list(train)
    make = lambda items, split: VideoDataset(  # noqa: E731
        [ClipItem(clip, index[clip.label]) for clip in items], classes, split=split, layout="clip-store"
    )
    return make(train, "train"), make(val, "val")


def check_device(device: str) -> str:
    """``device`` if this machine can train on it, else InvalidRequest saying what is there instead."""
    from training.trainer import resolve_device

    try:
        resolved = resolve_device(device)
    except (RuntimeError, ValueError) as e:
        raise InvalidRequest(f"invalid training device {device!r}: {e}") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidRequest(f"training device {device!r} asked for, but this machine has no usable CUDA GPU: "
                                 "use --device cpu (or auto)")  # fmt: skip
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidRequest(f"training device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


# What the job record keeps of each epoch (its progress.history): the curves' points, not the whole event.
HISTORY_KEYS = ("epoch", "loss", "val_loss", "val_top1", "val_top5", "elapsed_s")


@dataclass
class Worker:
    """Runs jobs from ``queue`` with ``backbone``; adapters go to ``store``."""

    backbone: Backbone
    queue: JobQueue
    store: AdapterStore
    clips: ClipStore
    consumer: str
    claim_idle_ms: int = 60_000
    progress: bool = False
    max_attempts: int = MAX_ATTEMPTS
    device: str = "auto"  # training device (auto: cuda when present); checked at start by check_device
    # told (job id, outcome of run_one, or "redelivered") after each handled entry: `vpetl worker --json` lines
    on_job: Callable[[str, str], None] | None = None

    def run(self, *, max_jobs: int | None = None, stop: threading.Event | None = None) -> int:
        """Handle jobs until ``max_jobs`` entries were handled (run, skipped or given up) or ``stop`` is set."""
        done = 0
        while (max_jobs is None or done < max_jobs) and not (stop and stop.is_set()):
            try:
                claimed = self.queue.claim_next(self.consumer, block_ms=1000, claim_idle_ms=self.claim_idle_ms)
            except Exception as e:  # Redis away: wait and retry rather than die
                logger.warning("job queue unavailable (%s); retrying", e)
                time.sleep(1.0)
                continue
            if claimed is None:
                continue
            try:
                outcome = self.run_one(*claimed)
            except Exception as e:  # Redis went away mid-job: the entry stays pending and is redelivered (publish
                # is idempotent per job, so a redelivery that already published makes no second version)
                logger.warning("job %s: could not complete (%s); it will be redelivered", claimed[1], e)
                outcome = "redelivered"
                time.sleep(1.0)
            done += 1
            if self.on_job is not None:
                self.on_job(claimed[1], outcome)
        return done

    def run_one(self, entry_id: str, job_id: str) -> str:
        """Handle one claimed entry; returns what happened: ``succeeded`` / ``failed`` (this attempt ran), ``done``
        (already finished: skipped), ``dead`` (out of attempts: failed + dead-lettered), ``missing``, ``lost``."""
        outcome, job = self.queue.begin(entry_id, job_id, self.consumer, max_attempts=self.max_attempts)
        if outcome != "run" or job is None:
            if outcome == "dead":
                logger.error("job %s: %s", job_id, job["error"] if job else "out of attempts")
            else:
                logger.info("job %s (entry %s): %s; acknowledged, skipped", job_id, entry_id, outcome)
            return outcome
        logger.info("job %s: attempt %d of %d on %s", job_id, job["attempts"], self.max_attempts, self.consumer)
        fields: dict[str, Any]
        with Heartbeat(self.queue, entry_id, self.consumer, self.claim_idle_ms) as heartbeat:
            try:
                result = self._train_and_publish(job_id, job["params"], heartbeat.lost)
                state, fields = "succeeded", {"result": result, "version": result.get("version")}
            except JobLost:
                state, fields = "lost", {}
            except VpetlError as e:  # the job's own fault (no clips, bad params): retrying would not help
                state, fields = "failed", {"error": f"[{e.code}] {e.message}"}
            except Exception as e:  # a bug: fail the job with the reason, keep the worker alive
                logger.exception("job %s crashed", job_id)
                state, fields = "failed", {"error": f"[internal_error] {e}"}
        if state == "lost" or heartbeat.lost.is_set():
            # another worker owns the entry now and will finish the job (finding our version, if we published)
            logger.warning("job %s: taken over by another worker; leaving it to them", job_id)
            return "lost"
        self.queue.finish(job_id, entry_id, state, **fields)  # last: state and ack together
        return state

    def _train_and_publish(self, job_id: str, raw: Mapping[str, Any], lost: threading.Event) -> dict[str, Any]:
        from training.trainer import TrainConfig, train_adapter
        from vpetl.petl.io import adapter_bytes

        params = job_params(raw)
        task = params["task"]
        earlier = self._published_earlier(task, job_id)
        if earlier is not None:  # an earlier attempt published, then its worker died before recording it
            return earlier
        epoch_delay_s = _test_hooks(task)
        train, val = task_datasets(self.clips, task)
        config = TrainConfig(
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            optimizer=str(params["optimizer"]),
            lr=params["lr"],
            seed=int(params["seed"]),
            warmup_epochs=min(2.0, int(params["epochs"]) / 5),
            train_views=1,
            device=self.device,
        )
        last_write = [0.0]
        # every epoch so far (loss, val metrics): the job record carries its curves, for the console's charts
        history: list[dict[str, Any]] = []

        def on_progress(event: Any) -> None:
            if lost.is_set():  # stop spending the CPU on a job someone else is running now
                raise JobLost(job_id)
            if event.kind == "epoch":
                history.append({key: value for key, value in event.to_dict().items() if key in HISTORY_KEYS})
                if epoch_delay_s:
                    time.sleep(epoch_delay_s)
            # progress is for people watching: at most one write a second, plus every epoch (the claim is kept by
            # the heartbeat, not here)
            if event.kind != "epoch" and time.monotonic() - last_write[0] < 1.0:
                return
            self.queue.update(job_id, progress={**event.to_dict(), "history": history})
            last_write[0] = time.monotonic()

        result = train_adapter(
            self.backbone,
            _method_config(params),
            train,
            val,
            config,
            task=task,
            progress=self.progress,
            callback=on_progress,
            extra={"job_id": job_id},
        )
        if lost.is_set():
            raise JobLost(job_id)
        top1 = float(result.metrics.get("val_top1", result.metrics.get("top1", 0.0)))
        current = self._current_top1(task, result.labels, val)
        outcome: dict[str, Any] = {"val_top1": top1, "current_val_top1": current, "metrics": result.metrics}
        if current is not None and top1 < current and not params["publish_if_worse"]:
            outcome["published"] = False
            outcome["reason"] = (
                f"not published: val top-1 {top1:.3f} is worse than the current version's {current:.3f} on the same "
                "clips (set publish_if_worse to publish anyway)"
            )
            return outcome
        data = adapter_bytes(
            result.model, task=task, labels=result.labels, metrics={k: v for k, v in result.metrics.items() if v == v}
        )
        meta = record_meta(result, self.backbone)
        self._check_deployment_backbone()
        # idempotent per job: should another attempt have published meanwhile, this returns its version
        record = self.store.publish(task, data, meta, job_id=job_id)
        outcome.update(published=True, version=record.version, sha256=record.sha256)
        outcome["reason"] = (
            "published: first version" if current is None else f"published: val top-1 {top1:.3f} ≥ {current:.3f}"
        )
        return outcome

    def _check_deployment_backbone(self) -> None:
        """Refuse to publish an adapter for another backbone than the deployment's registered one (the pointer
        would move to a version no replica can load). The worker resolved the registered backbone at start, so this
        fires only if the registration changed under a running worker."""
        registered = BackboneRegistry(self.store.redis).get()
        if registered is not None and registered.sha256 != self.backbone.sha256():
            raise IncompatibleAdapter(
                f"not published: this worker's backbone ({self.backbone.sha256()[:12]}…) is not the deployment's "
                f"registered backbone {describe(registered)}; restart the worker so it loads the registered one"
            )

    def _published_earlier(self, task: str, job_id: str) -> dict[str, Any] | None:
        """The result of an earlier attempt of this job that published (``None``: none did)."""
        version = self.store.job_version(task, job_id)
        if version is None:
            return None
        try:
            record = self.store.get_record(task, version)
        except (UnknownTask, UnknownVersion):  # deleted since: the publish script would publish anew
            return None
        logger.info("job %s: version %d was published by an earlier attempt; not training again", job_id, version)
        return {
            "published": True,
            "version": version,
            "sha256": record.sha256,
            "metrics": record.metrics,
            "val_top1": record.metrics.get("val_top1"),
            "reason": f"published: version {version}, by an earlier attempt of this job (its worker stopped before "
            "recording the result)",
        }

    def _current_top1(self, task: str, labels: list[str], val: VideoDataset) -> float | None:
        """Val top-1 of the task's current adapter on the same clips (None: no version, or other labels)."""
        try:
            _, data = self.store.get_bytes(task)
        except UnknownTask:
            return None
        from vpetl.petl.io import load_adapter
        from vpetl.video import load_clip

        try:
            model = load_adapter(data, self.backbone)
        except VpetlError as e:
            logger.info("current adapter of %s cannot be compared (%s)", task, e)
            return None
        if _labels_of(data) != labels:
            return None  # another label set: accuracies are not comparable
        correct = 0
        with torch.no_grad():
            for item in val.items:
                clip = load_clip(item.source(), self.backbone.input_spec)
                x = torch.from_numpy(clip).unsqueeze(0)  # (1, C, T, H, W)
                correct += int(model(x).argmax(-1).item() == item.label)
        return correct / max(1, len(val.items))


def _labels_of(data: bytes) -> list[str]:
    from vpetl.artifact import read_adapter_meta

    return list(read_adapter_meta(data).labels)


def record_meta(result: Any, backbone: Backbone) -> dict[str, Any]:
    counts = result.model.parameter_counts()
    return {
        "method": result.model.config.method,
        "trainable_params": int(counts["trainable"]),
        "num_classes": len(result.labels),
        "labels": list(result.labels),
        "metrics": {k: float(v) for k, v in result.metrics.items() if v == v},
        "backbone": backbone.name,
        "backbone_sha256": backbone.sha256(),
    }
