"""The method comparison of V-PETL Table 3 / Fig. 1, on the demo backbone and two synthetic tasks.

``run_experiment("mini", out)`` trains every row below on the ``temporal`` (Something-Something-like) and
``appearance`` (HMDB-like) presets and writes ``results.csv`` (one line per run), ``results.md`` (Table 3's shape:
method, d, trainable params and top-1 per task; mean ± spread over seeds for the headline rows) and ``results.png``
(top-1 against trainable parameters, log x, like Fig. 1). See :mod:`training.report`.

Rows: the headline methods (linear probe, BitFit, LoRA r16, AdaptMLP d64, prefix d128, full tuning, PATT and BAPAT
at each d) with ``headline_seeds`` seeds, and one-seed ablations of PATT's positions and scale at the largest d.

What keeps 60+ runs in ~30 minutes on 2 CPU cores:
- each split is decoded once into tensors (``training.clips``): ``train_views`` augmented draws per training clip,
  one test view per validation clip (no augmentation), cached on disk between processes;
- the linear probe never runs the backbone twice on a clip: frozen features are computed once per task and the
  head is trained on them (the same head init, optimiser and schedule as every other row);
- validation runs once, after the last epoch.

Runs are appended to ``results.csv`` as they finish, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.clips import ClipTensors, load_clip_tensors
from training.pretrain import PretrainConfig, ensure_demo_backbone
from training.progress import count_bar
from training.report import CSV_FIELDS, write_markdown, write_plot
from training.trainer import (
    TrainConfig,
    check_datasets,
    fit,
    prefer_native_bf16,
    resolve_amp,
    resolve_device,
    train_adapter,
)
from vpetl.backbones.base import Backbone
from vpetl.backbones.registry import create_backbone
from vpetl.data.readers import open_dataset
from vpetl.errors import InvalidRequest
from vpetl.petl.model import create_model
from vpetl.petl.registry import make_config


@dataclass(frozen=True)
class Row:
    """One configuration (a table row): ``key`` is unique, ``group`` is headline / positions / scale."""

    key: str
    label: str
    method: str
    options: dict[str, Any]
    d: int | None
    group: str = "headline"


@dataclass(frozen=True)
class Preset:
    """Sizes of an experiment; everything else (the recipe) is TrainConfig's defaults."""

    name: str
    tasks: tuple[str, ...] = ("temporal", "appearance")
    clips_per_class: int = 80  # 20% of them validate (16 per class: 160–200 validation clips per task) …
    # … unless val_clips is set: then clips_per_class clips per class train and ⌈val_clips / classes⌉ per class
    # validate (at least val_clips per task, whatever its class count)
    val_clips: int | None = None
    data_size: int = 80  # rendered frame side (the demo spec crops 64)
    frames: tuple[int, int] = (16, 24)  # short clips: the 8×2-frame window sees most of each motion
    epochs: int = 12
    batch_size: int = 16
    train_views: int = 2  # augmented draws decoded per training clip
    eval_views: tuple[int, int] = (1, 1)
    bottlenecks: tuple[int, ...] = (32, 64, 128)
    headline_seeds: int = 2
    positions: tuple[tuple[str, ...], ...] = (("q", "k"), ("q", "v"), ("q", "k", "v"))  # PATT ablation ((k, v) is
    scales: tuple[float, ...] = (0.2, 0.5, 1.0)  # the default row), scale ablation (0.8 is the default row)
    methods: tuple[str, ...] = ("linear", "bitfit", "lora", "adaptmlp", "prefix", "full")
    ablation_seeds: bool = False  # ablations on every seed (paired comparisons) instead of seed 0 only
    # paired claims (label, row a, row b, tasks): "a beats b", judged by the 95% interval of a − b over seeds
    claims: tuple[tuple[str, str, str, tuple[str, ...]], ...] = ()
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # TrainConfig.amp of every run; "auto": bf16 autocast on a CPU with native bf16, as the pretraining (the
    # resolved value and the torch thread count enter the fingerprint and experiment.json)
    amp: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["pretrain"] = self.pretrain.key_dict()  # as the backbone's cache key sees it (and the fingerprint)
        return out


_TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
_TIME_TASKS = ("temporal", "order")
_ALL_TASKS = ("temporal", "order", "appearance")
# the seed paper's (V-PETL) central claims, each a paired difference at d = 64 (AdaptMLP d64 is AdaptFormer's row)
STANDARD_CLAIMS = (
    ("PATT (k,v) beats AdaptFormer on temporal tasks", "patt-d64", "adaptmlp-d64", _TIME_TASKS),
    ("BAPAT ≥ PATT", "bapat-d64", "patt-d64", _ALL_TASKS),
    ("PATT ≥ AdaptMLP", "patt-d64", "adaptmlp-d64", _ALL_TASKS),
    ("AdaptMLP ≥ linear probe", "adaptmlp-d64", "linear", _ALL_TASKS),
    ("PATT (k,v) ≫ concatenated prefix", "patt-d64", "prefix-d128", _ALL_TASKS),
    ("s = 0.8 beats s = 0.5", "patt-d64", "patt-d64-s0.5", _ALL_TASKS),
    ("s = 0.8 beats s = 1.0", "patt-d64", "patt-d64-s1.0", _ALL_TASKS),
)
PRESETS: dict[str, Preset] = {
    "mini": Preset("mini"),
    # enough validation clips and seeds to tell methods apart: only the rows the claims need, every one on 3
    # seeds (same data, paired by seed), three tasks (two that need time, the appearance control); 96 training
    # clips per class (mini: 64) × 2 views × 8 epochs: the 63 runs took 24 minutes in all on 2 cores (README there)
    "standard": Preset(
        "standard",
        tasks=_ALL_TASKS,
        clips_per_class=96,
        val_clips=400,
        epochs=8,
        bottlenecks=(64,),
        headline_seeds=3,
        positions=(),
        scales=(0.5, 1.0),
        methods=("linear", "adaptmlp", "prefix"),
        ablation_seeds=True,
        claims=STANDARD_CLAIMS,
    ),
    # plumbing only (tests): a 2-block, 32-wide demo ViT pretrained for one epoch, 3 clips per class, one epoch
    "smoke": Preset(
        "smoke",
        clips_per_class=3,
        data_size=80,
        frames=(16, 20),
        epochs=1,
        batch_size=4,
        train_views=1,
        bottlenecks=(8,),
        headline_seeds=2,
        positions=(("q", "v"),),
        scales=(0.5,),
        methods=("linear", "bitfit", "full"),
        backbone_overrides=_TINY,
        val_clips=20,
        ablation_seeds=True,
        claims=(
            ("BAPAT ≥ PATT", "bapat-d8", "patt-d8", ("temporal", "appearance")),
            ("s = 0.8 beats s = 0.5", "patt-d8", "patt-d8-s0.5", ("appearance",)),
        ),
        pretrain=PretrainConfig(
            clips_per_class=2, frames=(16, 20), epochs=1, batch_size=8, num_workers=1, backbone_overrides=_TINY
        ),
    ),
}

LABELS = {
    "linear": "Linear probe (tune FC)",
    "bitfit": "BitFit",
    "lora": "LoRA",
    "adaptmlp": "AdaptMLP (AdaptFormer)",
    "prefix": "Prefix-tuning",
    "full": "Full tuning",
    "patt": "PATT (BAPAT w/o Adapter)",
    "bapat": "BAPAT",
}
FIXED_SIZE = {"lora": 16, "adaptmlp": 64, "prefix": 128}  # the sizes of the paper's baseline rows


def plan_rows(preset: Preset) -> list[Row]:
    """The table's rows, headline first."""
    rows = []
    for method in preset.methods:
        size = FIXED_SIZE.get(method)
        if size is not None and preset.name == "smoke":
            size = min(preset.bottlenecks)
        opts = {make_config(method).size_field: size} if size is not None else {}
        rows.append(Row(method if size is None else f"{method}-d{size}", LABELS[method], method, opts, size))
    for method in ("patt", "bapat"):
        for d in preset.bottlenecks:
            rows.append(Row(f"{method}-d{d}", LABELS[method], method, {"bottleneck": d}, d))
    d = max(preset.bottlenecks)
    for pos in preset.positions:
        rows.append(
            Row(
                f"patt-d{d}-{''.join(pos)}",
                f"PATT on {','.join(pos)}",
                "patt",
                {"bottleneck": d, "positions": pos},
                d,
                "positions",
            )
        )
    for s in preset.scales:
        rows.append(Row(f"patt-d{d}-s{s}", f"PATT s={s}", "patt", {"bottleneck": d, "scale": s}, d, "scale"))
    return rows


def plan_runs(preset: Preset, seeds: int | None = None) -> list[tuple[str, Row, int]]:
    """(task, row, seed) for every run: headline rows get ``seeds`` seeds, ablations one (or ``seeds`` with
    ``ablation_seeds``)."""
    n = seeds or preset.headline_seeds
    # task by task, each task's seeds in turn: an interrupted run leaves whole tasks with every seed (the paired
    # claims of those tasks complete) rather than every task with seed 0 only
    return [
        (task, row, seed)
        for task in preset.tasks
        for seed in range(n)
        for row in plan_rows(preset)
        if seed == 0 or row.group == "headline" or preset.ablation_seeds
    ]


# ----------------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    train: ClipTensors
    val: ClipTensors
    features: tuple[ClipTensors, ClipTensors] | None = None  # frozen features for the linear probe


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_task(task: str, preset: Preset, spec: Any, cache_dir: Path) -> TaskData:
    """Synthesize the task's clips (cached by parameters) and decode both splits once (cached by content)."""
    from vpetl.data.synth import PRESETS as SYNTH
    from vpetl.data.synth import SYNTH_VERSION, synthesize

    total, val_fraction = preset.clips_per_class, 0.2
    if preset.val_clips:
        n_val = -(-preset.val_clips // len(SYNTH[task].classes))  # ceil: at least val_clips per task
        total = preset.clips_per_class + n_val
        val_fraction = (n_val - 0.25) / total  # synthesize rounds total·fraction: this lands on n_val exactly
    params = {
        "task": task,
        "cpc": total,
        "val": val_fraction,
        "size": preset.data_size,
        "frames": preset.frames,
        "synth": SYNTH_VERSION,
    }
    root = synthesize(
        task,
        cache_dir / "data" / f"{task}-{_digest(params)}",
        total,
        0,
        preset.data_size,
        val_fraction=val_fraction,
        frames=preset.frames,
        workers=2,
    )
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    check_datasets(train, val)
    clips = cache_dir / "clips"
    return TaskData(
        train=load_clip_tensors(train, spec, train=True, views=preset.train_views, cache_dir=clips, num_workers=2),
        val=load_clip_tensors(val, spec, train=False, views=preset.eval_views, cache_dir=clips, num_workers=2),
    )


@torch.no_grad()
def frozen_features(backbone: Backbone, clips: ClipTensors, batch_size: int = 32) -> ClipTensors:
    """(N, V, C, T, H, W) clips -> (N, V, F) pooled features of the frozen backbone (the linear probe's input)."""
    backbone.eval()
    n, v = clips.clips.shape[:2]
    flat = clips.clips.reshape(n * v, *clips.clips.shape[2:])  # (N·V, C, T, H, W)
    feats = torch.cat([backbone(flat[i : i + batch_size].float()) for i in range(0, n * v, batch_size)])
    return ClipTensors(feats.reshape(n, v, -1), clips.labels, clips.classes, clips.train, clips.spec)


# ----------------------------------------------------------------------------------------------------- runs
def run_one(backbone: Backbone, task: str, row: Row, seed: int, data: TaskData, preset: Preset) -> dict[str, Any]:
    """Train one row on one task with one seed; return its CSV record."""
    started = time.perf_counter()
    config = TrainConfig(
        epochs=preset.epochs, batch_size=preset.batch_size, seed=seed, eval_every=0, eval_views=preset.eval_views,
        amp=prefer_native_bf16(preset.amp),
    )
    method_config = make_config(row.method, **row.options)
    if row.method == "linear":
        # same head init (create_model's seed), optimiser and schedule; the backbone runs once per clip view
        model = create_model(backbone, method_config, data.train.num_classes, seed=seed, share_backbone=True)
        if data.features is None:
            data.features = (frozen_features(backbone, data.train), frozen_features(backbone, data.val))
        metrics, _ = fit(
            model.head,
            {"head.weight": model.head.weight, "head.bias": model.head.bias},
            data.features[0],
            data.features[1],
            config,
            spec=backbone.input_spec,
            progress=False,
        )
        trainable = model.parameter_counts()["trainable"]
        model.remove_adapters()
    else:
        result = train_adapter(backbone, method_config, data.train, data.val, config, task=task, progress=False)
        metrics, trainable = result.metrics, result.model.parameter_counts()["trainable"]
    options = method_config.to_dict()
    return {
        "task": task,
        "row": row.key,
        "label": row.label,
        "method": row.method,
        "group": row.group,
        "d": row.d if row.d is not None else "",
        "positions": ",".join(options.get("positions", [])),
        "scale": options.get("scale", ""),
        "seed": seed,
        "trainable_params": int(trainable),
        "top1": round(metrics["top1"], 5),
        "top5": round(metrics["top5"], 5),
        "val_loss": round(metrics["val_loss"], 5),
        "train_loss": round(metrics["train_loss"], 5),
        "epochs": preset.epochs,
        "val_clips": len(data.val),
        "train_time_s": round(metrics["train_time_s"], 2),
        "run_time_s": round(time.perf_counter() - started, 2),
    }


def _load_done(csv_path: Path, stamp: Path, fingerprint: str) -> list[dict[str, Any]]:
    """Rows of an earlier, interrupted run of the same experiment (same fingerprint), else none."""
    if not (csv_path.is_file() and stamp.is_file()) or json.loads(stamp.read_text()).get("fingerprint") != fingerprint:
        return []
    with csv_path.open() as fh:
        return list(csv.DictReader(fh))


def run_experiment(
    preset: str | Preset,
    out: Path,
    *,
    seeds: int | None = None,
    data_dir: Path = Path(".vpetl"),
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) an experiment preset; write results.csv, results.md and results.png under ``out``.

    The demo backbone is cached under ``data_dir/backbones`` (as ``vpetl up`` does), the synthetic task data and
    decoded clip tensors under ``data_dir/cache``.

    Returns a summary: paths, run count, total and per-method mean run times, backbone hash and pretrain metrics.
    """

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InvalidRequest(f"unknown experiment preset {preset!r}: choose from {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = data_dir / "cache"
    backbone_file = ensure_demo_backbone(data_dir / "backbones", progress=progress, config=preset.pretrain)
    backbone = create_backbone("vpetl-demo", checkpoint=backbone_file, **preset.backbone_overrides)
    pretrain_info = json.loads(backbone_file.with_suffix(".json").read_text())
    data = {task: prepare_task(task, preset, backbone.input_spec, cache_dir) for task in preset.tasks}
    prep_time = time.perf_counter() - started

    runs = plan_runs(preset, seeds)
    # the floats of every run depend on the autocast and the thread count, as the backbone's do
    runtime = {"amp": resolve_amp(prefer_native_bf16(preset.amp), resolve_device("auto")),
               "torch_threads": torch.get_num_threads()}
    fingerprint = _digest({"preset": preset.to_dict(), "seeds": seeds, "backbone": backbone.sha256(),
                           "runtime": runtime})
    csv_path, stamp = out / "results.csv", out / "experiment.json"
    done = _load_done(csv_path, stamp, fingerprint)
    finished = {(r["task"], r["row"], int(r["seed"])) for r in done}
    stamp.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "preset": preset.to_dict(),
                "seeds": seeds,
                "backbone_sha256": backbone.sha256(),
                "runtime": runtime,
                "pretrain": pretrain_info,
            },
            indent=2,
        )
        + "\n"
    )
    if not done:
        with csv_path.open("w", newline="") as fh:
            csv.DictWriter(fh, fieldnames=CSV_FIELDS).writeheader()
    records: list[dict[str, Any]] = list(done)
    todo = [r for r in runs if (r[0], r[1].key, r[2]) not in finished]
    with count_bar(progress, transient=False) as bar:
        job = bar.add_task(f"experiment {preset.name}", total=len(runs), completed=len(runs) - len(todo))
        for task, row, seed in todo:
            bar.update(job, description=f"{task} · {row.key} · seed {seed}")
            record = run_one(backbone, task, row, seed, data[task], preset)
            records.append(record)
            with csv_path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerow(record)
            bar.advance(job)

    total = time.perf_counter() - started
    per_method: dict[str, list[float]] = {}
    for r in records:
        per_method.setdefault(str(r["method"]), []).append(float(r["run_time_s"]))
    summary = {
        "preset": preset.name,
        "runs": len(records),
        "total_time_s": round(total, 1),
        "prep_time_s": round(prep_time, 1),
        "mean_run_time_s": {m: round(sum(v) / len(v), 2) for m, v in sorted(per_method.items())},
        "backbone_sha256": backbone.sha256(),
        "runtime": runtime,
        "pretrain": {k: pretrain_info.get(k) for k in ("val_top1", "val_top5", "total_time_s")},
    }
    summary["markdown"] = str(write_markdown(records, out / "results.md", preset=preset.to_dict(), summary=summary))
    summary["plot"] = str(write_plot(records, out / "results.png"))
    summary["csv"] = str(csv_path)
    return summary
