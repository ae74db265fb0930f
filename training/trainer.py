"""Train one adapter on a frozen backbone: ``train_adapter(backbone, method_config, train, val, config, task=…)``.

The recipe follows V-PETL / AdaptFormer (PETL_SPEC §1.5, §2.6): cross-entropy, SGD with momentum 0.9 (AdamW as an
option), peak lr = base_lr × effective_batch / 256, linear warmup then a half-cosine to 0 *per optimiser step*,
AMP on GPU. What differs, and why:

- **base_lr defaults to 1.0 for SGD, not 0.1.** The papers train 70–90 epochs on 100k+ clips; vpetl trains on
  tens of clips per class for ~10–20 epochs. At 0.1 × 16/256 = 0.00625 the loss is still high after that many
  steps (measured on the demo backbone: see README "Demo backbone"); 1.0 × 16/256 = 0.0625 trains in time and is
  stable with 2 warmup epochs. AdamW defaults to base_lr 0.016 (peak 1e-3 at batch 16, the usual adapter rate).
- **warmup 2 epochs** (papers: 10 of 70+): the same share of a short run.
- **eval**: the final model (no best-epoch picking) on the validation split, views averaged per video.

Data comes as a :class:`~vpetl.data.readers.VideoDataset` (decoded every epoch by ``make_loader``, or once into
tensors when ``TrainConfig.train_views`` > 0) or as pre-decoded :class:`~training.clips.ClipTensors`.

Reproducibility: the same seed gives the same initialisation, data order, augmentation draws and, on CPU, the
same loss curve bit for bit (no nondeterministic kernels are used there).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.clips import ClipTensors, EpochBatches, eval_batches, load_clip_tensors
from training.evaluate import EvalResult, autocast, evaluate
from training.progress import ProgressEvent, TrainDisplay
from training.schedule import WarmupCosine, scaled_lr
from vpetl.backbones.base import Backbone
from vpetl.data.readers import VideoDataset
from vpetl.errors import DatasetError, InvalidRequest
from vpetl.petl.base import MethodConfig
from vpetl.petl.model import PetlModel, as_method_config, create_model

logger = logging.getLogger(__name__)
Tensor = torch.Tensor
Data = VideoDataset | ClipTensors

DEFAULT_BASE_LR = {"sgd": 1.0, "adamw": 0.016}


@dataclass
class TrainConfig:
    """How to train. Field comments say what each does; defaults suit small datasets on one machine."""

    epochs: int = 15
    batch_size: int = 16  # clips per forward pass; small batches are the point (works at 4)
    accumulate: int = 1  # micro-batches per optimiser step: effective batch = batch_size × accumulate
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, as the papers) or "adamw"
    base_lr: float | None = None  # peak lr = base_lr × effective_batch / 256; None: DEFAULT_BASE_LR[optimizer]
    lr: float | None = None  # absolute peak lr; overrides base_lr when set
    min_lr: float = 0.0  # end of the cosine
    warmup_epochs: float = 2.0  # linear warmup, in epochs (converted to optimiser steps)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # papers: 0 for SGD; never applied to biases / norms (1-d parameters)
    label_smoothing: float = 0.0  # papers: none
    clip_grad: float | None = None  # max grad norm; papers: none
    seed: int = 0  # init of adapters + head, data order, augmentation
    num_workers: int = 0  # decoder processes for VideoDataset inputs
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"…
    # "auto": bf16 on CUDA if supported (else fp16), fp32 on CPU; "bf16": bf16 autocast on CUDA and on CPU too (fast
    # only where the CPU has bf16 dot products: native_cpu_bf16()); "fp16": CUDA only (fp32 on CPU); "none": fp32
    amp: str = "auto"
    train_views: int = 0  # >0: decode each training clip this many times (augmented) once, then reuse the tensors
    eval_views: tuple[int, int] = (1, 1)  # (temporal clips, spatial crops) per validation video, logits averaged
    eval_every: int = 1  # validate every N epochs (0: only after the last); the final eval always runs
    cache_dir: str | None = None  # keep decoded clip tensors here across processes (train_views / eval)
    log_every: int = 1  # write a JSON-lines "step" record every N optimiser steps

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_BASE_LR:
            raise InvalidRequest(f"optimizer must be one of {sorted(DEFAULT_BASE_LR)}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "accumulate", "log_every"):
            if int(getattr(self, name)) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0 or self.eval_every < 0 or self.train_views < 0:
            raise InvalidRequest("warmup_epochs, eval_every and train_views must be >= 0")
        if (self.lr is not None and self.lr <= 0) or (self.base_lr is not None and self.base_lr <= 0):
            raise InvalidRequest("lr and base_lr must be positive")
        self.eval_views = tuple(self.eval_views)  # type: ignore[assignment]

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate

    def peak_lr(self) -> float:
        """``lr`` if given, else ``base_lr × effective_batch / 256``."""
        if self.lr is not None:
            return float(self.lr)
        base = self.base_lr if self.base_lr is not None else DEFAULT_BASE_LR[self.optimizer]
        return scaled_lr(base, self.effective_batch)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["eval_views"] = list(self.eval_views)
        out["peak_lr"] = self.peak_lr()
        return out


@dataclass
class TrainResult:
    """What :func:`train_adapter` returns: the trained model (eval mode), metrics, and the file written."""

    model: PetlModel
    metrics: dict[str, float]
    adapter_path: Path | None
    sha256: str | None
    labels: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- checks
def _labels_of(data: Data) -> list[int]:
    return data.label_list() if isinstance(data, ClipTensors) else [item.label for item in data.items]


def check_datasets(train: Data, val: Data | None, labels: Sequence[str] | None = None) -> list[str]:
    """Refuse data that cannot train a classifier; return the class names (the adapter's labels, index order).

    Raises:
        DatasetError: an empty training set, fewer than two classes with clips, labels out of range, a validation
            set with other class names, or classes that differ from ``labels`` (e.g. the task's existing adapter).
    """
    classes = list(train.classes)
    if len(train) == 0:
        raise DatasetError("the training set has no clips: add labelled clips (at least two classes) first")
    used = sorted(set(_labels_of(train)))
    if used[0] < 0 or used[-1] >= len(classes):
        raise DatasetError(f"training labels must be in 0..{len(classes) - 1}, found {used[0]}..{used[-1]}")
    if len(used) < 2:
        only = classes[used[0]] if classes else str(used[0])
        raise DatasetError(f"the training set has clips of one class only ({only!r}): a classifier needs at least two")
    if val is not None:
        if len(val) == 0:
            raise DatasetError("the validation set has no clips (pass no validation set to skip evaluation)")
        if list(val.classes) != classes:
            extra = sorted(set(val.classes) - set(classes))
            raise DatasetError(
                f"validation classes {list(val.classes)} differ from training classes {classes}"
                + (f" (unknown to training: {extra})" if extra else "")
            )
        vused = set(_labels_of(val))
        if min(vused) < 0 or max(vused) >= len(classes):
            raise DatasetError(f"validation labels must be in 0..{len(classes) - 1}")
    if labels is not None and list(labels) != classes:
        missing, unknown = sorted(set(labels) - set(classes)), sorted(set(classes) - set(labels))
        raise DatasetError(
            f"the dataset's classes {classes} do not match the adapter's labels {list(labels)}"
            + (f"; missing: {missing}" if missing else "") + (f"; not in the adapter: {unknown}" if unknown else "")
            + ("; same names in another order" if not missing and not unknown else "")
        )
    return classes


# ---------------------------------------------------------------------------------------------- components
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 autocast runs the demo
    backbone's pretraining step 20–26% faster than fp32 (BENCHMARKS.md, "Demo"); elsewhere it is emulated and
    slower."""
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def prefer_native_bf16(amp: str, device: str = "auto") -> str:
    """``amp`` with "auto" turned into "bf16" on a CPU that multiplies bf16 natively: the choice of the demo
    recipes (pretraining, ``vpetl up``'s adapters, ``vpetl experiment``), whose steps run 20–26% (pretraining) and
    9–15% (adapters) faster there (``benchmarks/pretrain_step.py``). TrainConfig's own "auto" stays fp32 on CPU."""
    if amp == "auto" and resolve_device(device).type == "cpu" and native_cpu_bf16():
        return "bf16"
    return amp


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast to train with: "bf16" / "fp16" on CUDA; on CPU "bf16" only when asked for ("auto" is fp32
    there: CPU autocast changes the numbers, and is slower on CPUs without native bf16), else "none"."""
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise InvalidRequest(f"amp must be auto, bf16, fp16 or none, got {amp!r}")
    if amp == "none":
        return "none"
    if device.type != "cuda":
        return "bf16" if amp == "bf16" and device.type == "cpu" else "none"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def build_optimizer(named: Mapping[str, torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters; 1-d tensors (biases, norms, scales) get no weight
    decay, as in the papers' code (V-PETL: "bn" params, ST-Adapter: ".bias")."""
    trainable = [(n, p) for n, p in named.items() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim > 1]
    no_decay = [p for n, p in trainable if p.ndim <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": config.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise InvalidRequest("the model has no trainable parameters")
    lr = config.peak_lr()
    if config.optimizer == "adamw":
        # the fused kernel updates all tensors in one pass: on 2 CPU cores an update of the demo backbone's ~80
        # tensors takes 0.7 ms fused against 4 ms for the per-tensor loop (BENCHMARKS.md, "Demo")
        fused = all(p.device.type in ("cpu", "cuda") for _, p in trainable)
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


# -------------------------------------------------------------------------------------------------- the loop
def fit(
    model: torch.nn.Module,
    named_params: Mapping[str, torch.nn.Parameter],
    train: Data,
    val: Data | None,
    config: TrainConfig,
    *,
    spec: Any,
    log_path: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[ProgressEvent], None] | None = None,
    title: str = "train",
    objective: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The training loop shared by adapters and the demo-backbone pretraining.

    ``objective(x, y)`` is one batch's loss (default: cross-entropy of ``model(x)`` against ``y``, with the
    config's label smoothing); the masked-video pretraining passes its reconstruction loss (and no ``val``).

    Returns ``(metrics, history)``: final metrics (val_top1, val_top5, val_loss, train_loss, epochs, steps,
    train_time_s, clips_per_s, peak_lr) and one dict per epoch.
    """
    device = resolve_device(config.device)
    amp = resolve_amp(config.amp, device)
    torch.manual_seed(config.seed)  # anything stochastic inside the model (none of vpetl's methods is, today)
    model.to(device)
    if isinstance(train, VideoDataset) and config.train_views > 0:
        train = load_clip_tensors(train, spec, train=True, views=config.train_views, seed=config.seed,
                                  cache_dir=config.cache_dir, num_workers=config.num_workers)
    batches = EpochBatches(train, spec, config.batch_size, seed=config.seed, num_workers=config.num_workers)
    micro_per_epoch = len(batches)
    steps_per_epoch = math.ceil(micro_per_epoch / config.accumulate)
    total_steps = steps_per_epoch * config.epochs
    optimizer = build_optimizer(named_params, config)
    schedule = WarmupCosine(optimizer, total_steps, config.peak_lr(), round(config.warmup_epochs * steps_per_epoch),
                            config.min_lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    params = [p for p in named_params.values() if p.requires_grad]
    display = TrainDisplay(title, config.epochs, total_steps, enabled=progress)
    log = Path(log_path).open("a") if log_path is not None else None

    def emit(event: ProgressEvent) -> None:
        display.update(event)
        if log is not None and (event.kind != "step" or event.step % config.log_every == 0):
            log.write(json.dumps(event.to_dict()) + "\n")
            log.flush()
        if callback is not None:
            callback(event)  # may raise (a cancelled job): training stops there

    history: list[dict[str, Any]] = []
    step, clips_seen, started = 0, 0, time.perf_counter()
    result: EvalResult | None = None
    train_loss = float("nan")
    try:
        with display:
            for epoch in range(config.epochs):
                model.train()
                loss_sum, loss_n, step_loss = 0.0, 0, 0.0
                for i, (x, y) in enumerate(batches.epoch(epoch)):
                    # micro-batches of this optimiser step: accumulate, fewer at the end of an epoch
                    group = min(config.accumulate, micro_per_epoch - (i // config.accumulate) * config.accumulate)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with autocast(device, amp):
                        if objective is not None:
                            loss = objective(x, y).float()
                        else:
                            loss = F.cross_entropy(model(x).float(), y, label_smoothing=config.label_smoothing)
                    auxiliary = getattr(model, "pop_auxiliary_loss", None)  # the pretraining's reconstruction
                    if auxiliary is not None:
                        loss = loss + auxiliary()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {step} (epoch {epoch + 1}): "
                                                 "lower the learning rate")
                    scaler.scale(loss / group).backward()
                    loss_sum, loss_n = loss_sum + loss.item() * len(y), loss_n + len(y)
                    step_loss += loss.item() / group  # the loss over the effective batch, for the step record
                    clips_seen += len(y)
                    if (i + 1) % config.accumulate and i + 1 < micro_per_epoch:
                        continue
                    lr = schedule.set(step)
                    if config.clip_grad is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    elapsed = time.perf_counter() - started
                    emit(ProgressEvent(kind="step", epoch=epoch + 1, epochs=config.epochs, step=step,
                                       total_steps=total_steps, loss=step_loss, lr=lr,
                                       clips_per_s=clips_seen / max(elapsed, 1e-9), elapsed_s=elapsed,
                                       eta_s=elapsed / step * (total_steps - step)))
                    step_loss = 0.0
                train_loss = loss_sum / max(loss_n, 1)
                last = epoch + 1 == config.epochs
                result = None
                if val is not None and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
                    views = config.eval_views if last else (1, 1)  # multi-view only for the reported figure
                    result = evaluate(model, eval_batches(val, spec, config.batch_size, views, config.num_workers),
                                      device=device, amp=amp,
                                      sample_dims=val.sample_dims if isinstance(val, ClipTensors) else 4)
                elapsed = time.perf_counter() - started
                record = ProgressEvent(
                    kind="epoch", epoch=epoch + 1, epochs=config.epochs, step=step, total_steps=total_steps,
                    loss=train_loss, lr=schedule.lr(max(step - 1, 0)), clips_per_s=clips_seen / max(elapsed, 1e-9),
                    elapsed_s=elapsed, eta_s=elapsed / (epoch + 1) * (config.epochs - epoch - 1),
                    val_top1=result.top1 if result else None, val_top5=result.top5 if result else None,
                    val_loss=result.loss if result else None,
                )
                history.append(record.to_dict())
                emit(record)
    finally:
        if log is not None:
            log.close()
    train_time = time.perf_counter() - started
    metrics = {"train_loss": train_loss, "epochs": float(config.epochs), "steps": float(step),
               "train_time_s": train_time, "clips_per_s": clips_seen / max(train_time, 1e-9),
               "peak_lr": config.peak_lr()}
    if result is not None:
        metrics.update(top1=result.top1, top5=result.top5, val_loss=result.loss, val_clips=float(result.count),
                       val_views=float(result.views))
    return metrics, history


def train_adapter(
    backbone: Backbone,
    method_config: MethodConfig | str | Mapping[str, Any],
    train_dataset: Data,
    val_dataset: Data | None,
    config: TrainConfig | None = None,
    *,
    task: str,
    out: str | Path | None = None,
    log_path: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[ProgressEvent], None] | None = None,
    labels: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``method_config`` on the frozen ``backbone`` and (with ``out``) write the adapter file.

    Args:
        backbone: the frozen backbone (not modified: the model adapts a private copy).
        method_config: a MethodConfig, a method name (its defaults) or a config dict.
        train_dataset, val_dataset: VideoDataset or ClipTensors; val may be None (no metrics but training ones).
        config: the recipe (default ``TrainConfig()``).
        task: the task name stored in the adapter.
        out: adapter file to write (``.safetensors``); None: do not write.
        log_path: JSON-lines log, one line per optimiser step (``kind: "step"``) and per epoch (``"epoch"``).
        progress: show a rich progress bar (epoch, loss, lr, clips/s, ETA).
        callback: called with every :class:`ProgressEvent` (a job worker reports epoch/loss/accuracy/ETA).
        labels: the label set the adapter must have (e.g. the task's current adapter); a dataset with other
            classes fails early.
        extra: free-form fields stored in the adapter file.

    Raises:
        DatasetError: empty data, a single class, or classes that do not match (before any training).
    """
    config = config or TrainConfig()
    classes = check_datasets(train_dataset, val_dataset, labels)
    spec = backbone.input_spec
    for data in (train_dataset, val_dataset):
        if isinstance(data, ClipTensors) and data.spec != spec:
            raise DatasetError(f"clip tensors were made for {data.spec}, the backbone expects {spec}")
    backbone.sha256()  # cache the hash of the untouched weights before any in-place training (BitFit, full)
    method_config = as_method_config(method_config)
    model = create_model(backbone, method_config, len(classes), seed=config.seed)
    counts = model.parameter_counts()
    metrics, history = fit(model, model.stable_named_parameters(), train_dataset, val_dataset, config, spec=spec,
                           log_path=log_path, progress=progress, callback=callback,
                           title=f"{task} · {method_config.method}")
    metrics["trainable_params"] = float(counts["trainable"])
    model.eval()
    path, sha = None, None
    if out is not None:
        from vpetl.petl.io import save_adapter

        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        sha = save_adapter(model, path, task=task, labels=classes, metrics=file_metrics,
                           extra={"train_config": config.to_dict(), **(extra or {})})
    return TrainResult(model=model, metrics=metrics, adapter_path=path, sha256=sha, labels=classes, history=history)
