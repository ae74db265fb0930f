"""The training worker (``vpetl worker``): consume jobs, train on the task's uploaded clips, publish if good enough.

One job: read the task's clips from the clip store (train split; the val split, or a deterministic 20 % of train
when no val clips were uploaded), train the requested method on the frozen backbone, evaluate on val, and publish
the adapter as the task's next version — by default only if its val top-1 is not worse than the current version's
on the same clips (the job result says which). The job is acknowledged last, so a worker that dies mid-job leaves
it to another worker (XAUTOCLAIM) and never a half-published adapter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vpetl.backbones.base import Backbone
from vpetl.data.readers import ClipItem, VideoDataset
from vpetl.errors import DatasetError, UnknownTask, VpetlError
from vpetl.store import AdapterStore, ClipStore, StoredClip
from vpetl.store.jobs import JobQueue, job_params

logger = logging.getLogger(__name__)

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

    def run(self, *, max_jobs: int | None = None, stop: threading.Event | None = None) -> int:
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
            self.run_one(*claimed)
            done += 1
        return done

    def run_one(self, entry_id: str, job_id: str) -> None:
        try:
            job = self.queue.start(job_id, self.consumer)
        except VpetlError as e:  # the record vanished: nothing to do
            logger.warning("job %s: %s", job_id, e)
            self.queue.ack(entry_id)
            return
        try:
            result = self._train_and_publish(job_id, entry_id, job["params"])
            self.queue.update(
                job_id, state="succeeded", result=result, finished_at=time.time(), version=result.get("version")
            )
        except VpetlError as e:
            self.queue.update(job_id, state="failed", error=f"[{e.code}] {e.message}", finished_at=time.time())
        except Exception as e:  # a bug: fail the job with the reason, keep the worker alive
            logger.exception("job %s crashed", job_id)
            self.queue.update(job_id, state="failed", error=f"[internal_error] {e}", finished_at=time.time())
        self.queue.ack(entry_id)  # last: a worker dying before this leaves the job to be reclaimed

    def _train_and_publish(self, job_id: str, entry_id: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        from training.trainer import TrainConfig, train_adapter
        from vpetl.petl.io import adapter_bytes

        params = job_params(raw)
        task = params["task"]
        train, val = task_datasets(self.clips, task)
        config = TrainConfig(
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            optimizer=str(params["optimizer"]),
            lr=params["lr"],
            seed=int(params["seed"]),
            warmup_epochs=min(2.0, int(params["epochs"]) / 5),
            train_views=1,
            device="auto",
        )
        last_touch = [time.monotonic()]

        def on_progress(event: Any) -> None:
            if event.kind != "epoch" and time.monotonic() - last_touch[0] < 1.0:
                return
            self.queue.update(job_id, progress=event.to_dict())
            if time.monotonic() - last_touch[0] > 5.0:  # keep the claim of a long job fresh
                self.queue.touch(entry_id, self.consumer)
            last_touch[0] = time.monotonic()

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
        record = self.store.publish(task, data, meta)
        outcome.update(published=True, version=record.version, sha256=record.sha256)
        outcome["reason"] = (
            "published: first version" if current is None else f"published: val top-1 {top1:.3f} ≥ {current:.3f}"
        )
        return outcome

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
