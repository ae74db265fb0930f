"""Pretrain the demo backbone: the small ``vpetl-demo`` video ViT, trained fully on the synthetic ``source`` domain.

The real backbones (VideoMAE, Video Swin) are pretrained on Kinetics; the demo needs one that runs on 2 CPU cores,
so vpetl pretrains its own, end to end in under 4 minutes including data generation (README, "Demo backbone"):

1. render the ``source`` preset (11 kinds of motion, direction and event order included, of source-only objects;
   ``vpetl.data.synth``) straight into tensors
   (:mod:`training.synth_clips`: the same generator and transforms as the mp4 path, without the codec round trip,
   which would take longer than the training), or decode a given dataset directory;
2. train every parameter of the backbone plus a temporary Linear head and a linear pixel decoder (class loss +
   per-token reconstruction loss; AdamW, warmup + cosine) with the same loop as the adapters
   (:func:`training.trainer.fit`), two passes over ~15,300 fresh clips; the conv stem trains with BatchNorm;
3. fold the stem's BatchNorm into its convolutions, drop the head and the decoder, and write the backbone as
   ``.safetensors`` (vpetl's own layout, loadable with
   ``create_backbone("vpetl-demo", checkpoint=path)``), with a JSON sidecar holding the metrics.

``PretrainConfig(objective="mae")`` (``vpetl pretrain --objective mae``) replaces step 2's losses by VideoMAE's
masked-video reconstruction (:mod:`training.mae`), which needs no labels.

The file is cached under ``cache_dir`` by a content hash of everything that determines it (this recipe, the seed,
the synthetic preset's parameters and version, the backbone architecture, or the bytes of a given dataset, and
the torch thread count), so a second call with the same inputs returns at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.clips import load_clip_tensors
from training.progress import count_bar
from training.trainer import TrainConfig, fit, prefer_native_bf16, resolve_amp, resolve_device
from vpetl.backbones.base import Backbone
from vpetl.backbones.checkpoint import save_backbone
from vpetl.backbones.layers import ConvStem3D
from vpetl.backbones.registry import create_backbone
from vpetl.data.readers import VideoDataset, detect_layout, open_dataset
from vpetl.errors import DatasetError

PRETRAIN_VERSION = 5  # 3: the 11-class source domain with direction and event order (synth version 3); 4: the
# conv stem (trained with BatchNorm, folded before saving), the pixel-reconstruction loss, and the torch thread
# count in the cache key; 5: the stem as 2-D convolutions + a Linear (other float rounding), the autocast in the key
BACKBONE = "vpetl-demo"


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining recipe; every field is part of the cache key.

    The defaults fit the 4-minute budget on 2 CPU cores (measured figures in README, "Demo backbone").
    Tests pass a reduced config (few clips, one epoch, ``backbone_overrides={"depth": 1, "embed_dim": 32, ...}``).
    """

    seed: int = 0  # backbone init, data generation, order and augmentation
    # 1,460 clips per class × 11 classes, 5% held out: ~15,300 fresh training clips. Fresh clips beat epochs: 8,000
    # clips × 4 epochs overfit (train 84%, val 71%) where 16,000 × 2 reach the same in the same time; 1,200 per
    # class (to save the conv stem's extra step time) fell from 72% to 59% source top-1 (README, "Demo backbone").
    clips_per_class: int = 1460
    data_size: int = 80  # rendered frame side; the input spec crops 64 from its 73-pixel short-side resize
    val_fraction: float = 0.05
    # Short clips: the synthetic motions span the whole clip, so 8 frames at stride 2 of a 16–20-frame clip see
    # all of it (of a 24–48-frame clip, only a third to two thirds).
    frames: tuple[int, int] = (16, 20)
    train_views: int = 1  # augmented decodes per training clip, for a given ``data`` directory
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-3  # AdamW peak lr
    weight_decay: float = 0.05
    warmup_epochs: float = 0.2
    label_smoothing: float = 0.0
    # weight of the tokens' own-pixel reconstruction loss beside the class loss (0: class loss only); it keeps
    # appearance in the features (see _Classifier)
    reconstruction_weight: float = 1.0
    # "supervised": the class loss on the source classes (+ the reconstruction above); "mae": VideoMAE's masked
    # reconstruction only (training/mae.py), no labels needed: the class loss and reconstruction_weight are unused
    objective: str = "supervised"
    mask_ratio: float = 0.75  # "mae": the share of spatial positions hidden in every time slice (tube masking)
    num_workers: int = 2  # processes for synthesis and decoding
    device: str = "auto"  # cuda when available (bf16 autocast), else cpu
    # "auto": bf16 autocast on CUDA and on CPUs with native bf16 (training.trainer.prefer_native_bf16: 20–26% faster
    # steps there), fp32 on other CPUs; or "bf16" / "none" (TrainConfig.amp)
    amp: str = "auto"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)  # architecture changes (tests)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["frames"] = list(self.frames)
        return out

    def key_dict(self) -> dict[str, Any]:
        """The recipe as the cache key sees it: the masked-video fields only when that objective is chosen, so
        the supervised recipe keeps the key (and the cached files) it had before they existed."""
        out = self.to_dict()
        if self.objective == "supervised":
            del out["objective"], out["mask_ratio"]
        return out


@dataclass
class PretrainResult:
    """The cached backbone file and how it was made."""

    path: Path
    cached: bool
    backbone_sha256: str
    val_top1: float | None  # None for the masked-video objective (no classes)
    val_top5: float | None
    data_time_s: float
    train_time_s: float
    total_time_s: float
    key: str
    config: dict[str, Any]
    # the masked-video objective: reconstruction loss of the masked tubelets on the held-out clips (fixed masks;
    # 1.0 is what predicting every tubelet's mean scores), before and after pretraining
    val_reconstruction_loss: float | None = None
    initial_val_reconstruction_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        return out


def _architecture(config: PretrainConfig) -> dict[str, Any]:
    backbone = create_backbone(BACKBONE, **config.backbone_overrides)
    return {"config": dataclasses.asdict(backbone.config), "input_spec": backbone.input_spec.model_dump(mode="json")}


def _dataset_digest(root: Path, *, unlabelled: bool) -> str:
    digest = hashlib.sha256()
    for split, dataset in zip(("train", "val"), _splits(root, unlabelled=unlabelled), strict=True):
        for item in dataset.items:
            digest.update(f"{split}|{item.label}|".encode())
            digest.update(hashlib.sha256(Path(item.path).read_bytes()).digest())
    return digest.hexdigest()


def _runtime(config: PretrainConfig) -> dict[str, Any]:
    device = resolve_device(config.device)
    amp = resolve_amp(prefer_native_bf16(config.amp, config.device), device)
    out: dict[str, Any] = {"device": device.type, "amp": amp}
    if device.type == "cpu":
        out["torch_threads"] = torch.get_num_threads()
    return out


def pretrain_key(config: PretrainConfig, data: str | Path | None = None) -> str:
    """Content hash of the inputs: recipe + seed, synthetic preset parameters (or the given data's bytes),
    architecture and input spec, device kind and (on CPU) the torch thread count."""
    from vpetl.data.synth import SYNTH_VERSION

    payload = {
        "version": PRETRAIN_VERSION,
        "backbone": BACKBONE,
        "architecture": _architecture(config),
        "recipe": config.key_dict(),
        # the floats a CPU run produces depend on the torch thread count (its reductions split differently) and
        # on the autocast (bf16 where the CPU has it), so a file pretrained with 2 threads is not the one a
        # 1-thread or fp32 run would write: each gets its own key
        "runtime": _runtime(config),
        "data": {"dataset_sha256": _dataset_digest(Path(data), unlabelled=config.objective == "mae")}
        if data is not None
        else {
            "preset": "source",
            "synth_version": SYNTH_VERSION,
            "size": config.data_size,
            "clips_per_class": config.clips_per_class,
            "val_fraction": config.val_fraction,
            "frames": list(config.frames),
            "seed": config.seed,
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def tubelets(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, 3, T, H, W) clips -> (B, N, pt·ph·pw·3) pixels of each token's tubelet, in the ViT's t-major token
    order (token t'·H'W' + h'·W' + w')."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)  # (B, C, T', pt, H', ph, W', pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', H', W', pt, ph, pw, C)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)  # (B, N, pt·ph·pw·C)


class _Classifier(nn.Module):
    """Backbone + temporary head (+ a linear pixel decoder); only the backbone survives pretraining.

    With ``reconstruction_weight > 0`` every output token also reconstructs its own tubelet's (normalised) pixels
    through one Linear, and training adds ``weight × MSE`` to the class loss (:func:`training.trainer.fit` asks
    :meth:`pop_auxiliary_loss`). Why: the source classes are kinds of motion of randomly coloured objects, so a
    class loss alone teaches the backbone to discard colour, texture and shape — what the ``appearance`` target
    task needs (measured in README, "Demo backbone"). The decoder sees every token (no masking: it keeps
    appearance in the features, it is not VideoMAE's masked pretraining).
    """

    def __init__(self, backbone: Backbone, num_classes: int, reconstruction_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.reconstruction_weight = reconstruction_weight
        patch = getattr(getattr(backbone, "patch_embed", None), "patch", None)
        self.patch: tuple[int, int, int] | None = tuple(patch) if reconstruction_weight > 0 and patch else None
        self.decoder = nn.Linear(backbone.num_features, 3 * math.prod(self.patch)) if self.patch else None
        self._auxiliary: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder is None or not self.training:
            return self.head(self.backbone(x))
        tokens = self.backbone.forward_tokens(x)  # (B, N, C)
        target = tubelets(x.float(), self.patch)  # (B, N, pt·ph·pw·3)
        self._auxiliary = self.reconstruction_weight * F.mse_loss(self.decoder(tokens).float(), target)
        return self.head(self.backbone.pool_tokens(tokens))

    def pop_auxiliary_loss(self) -> torch.Tensor:
        """The reconstruction loss of the last training forward (zero when there is none)."""
        loss, self._auxiliary = self._auxiliary, None
        return loss if loss is not None else torch.zeros(())


def _cached(path: Path, sidecar: Path) -> PretrainResult | None:
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        info = json.loads(sidecar.read_text())
        return PretrainResult(**{**info, "path": path, "cached": True})
    except (ValueError, TypeError):
        return None  # an unreadable sidecar: pretrain again


def _render(config: PretrainConfig, spec: Any, progress: bool) -> tuple:

    from training.synth_clips import render_clip_tensors
    from vpetl.data.synth import PRESETS

    total = config.clips_per_class * len(PRESETS["source"].classes)
    with count_bar(progress) as bar:
        task = bar.add_task("render source clips", total=total)
        return render_clip_tensors(
            "source",
            config.clips_per_class,
            spec,
            seed=config.seed,
            size=config.data_size,
            frames=config.frames,
            val_fraction=config.val_fraction,
            workers=config.num_workers,
            progress=lambda done, _: bar.update(task, completed=done),
        )


def _splits(root: Path, *, unlabelled: bool) -> tuple[VideoDataset, VideoDataset]:
    """The train and val splits of a dataset directory. Unlabelled clips (the masked-video objective) may come as
    one folder of videos in a subfolder, ``root/any_name/*.mp4``, without split files: every 20th clip validates."""
    if not unlabelled or (root / "train.txt").is_file() or detect_layout(root) != "folder":
        return open_dataset(root, "train"), open_dataset(root, "val")
    every = open_dataset(root, "all")
    if len(every) < 2:
        raise DatasetError(f"{root}: masked-video pretraining needs at least 2 clips, found {len(every)}")
    held = set(range(19, len(every), 20)) or {len(every) - 1}
    val = [item for i, item in enumerate(every.items) if i in held]
    train = [item for i, item in enumerate(every.items) if i not in held]
    return dataclasses.replace(every, items=train, split="train"), dataclasses.replace(every, items=val, split="val")


def _decode(train: VideoDataset, val: VideoDataset, spec: Any, config: PretrainConfig, progress: bool) -> tuple:

    with count_bar(progress) as bar:
        task = bar.add_task("decode clips", total=len(train) + len(val))
        train_t = load_clip_tensors(
            train,
            spec,
            train=True,
            views=config.train_views,
            seed=config.seed,
            num_workers=config.num_workers,
            progress=lambda done, _: bar.update(task, completed=done),
        )
        val_t = load_clip_tensors(
            val,
            spec,
            train=False,
            num_workers=config.num_workers,
            progress=lambda done, _: bar.update(task, completed=len(train) + done),
        )
    return train_t, val_t


def pretrain_demo(
    config: PretrainConfig | None = None,
    cache_dir: str | Path = ".vpetl/cache/backbones",
    *,
    data: str | Path | None = None,
    progress: bool = True,
    log_path: str | Path | None = None,
) -> PretrainResult:
    """Pretrain ``vpetl-demo`` on the source domain, or return the cached result for the same inputs.

    Args:
        config: the recipe (default :class:`PretrainConfig`: embed 128, depth 4, 2 heads, max pooling, 8×64² clips; see
            ``vpetl.backbones.registry``).
        cache_dir: where the backbone file (``vpetl-demo-<key>.safetensors``) and its ``.json`` sidecar live.
        data: a source-domain dataset directory with train and val splits (default: render the ``source``
            preset in memory).
        progress: rich progress for synthesis, decoding and training.
        log_path: JSON-lines training log.
    """
    started = time.perf_counter()
    config = config or PretrainConfig()
    cache = Path(cache_dir)
    key = pretrain_key(config, data)
    path = cache / f"{BACKBONE}-{key[:16]}.safetensors"
    sidecar = path.with_suffix(".json")
    hit = _cached(path, sidecar)
    if hit is not None:
        return hit

    if config.objective not in ("supervised", "mae"):
        raise ValueError(f"objective must be 'supervised' or 'mae', got {config.objective!r}")
    if not 0.0 < config.mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be between 0 and 1 (exclusive), got {config.mask_ratio}")
    cache.mkdir(parents=True, exist_ok=True)
    backbone = create_backbone(BACKBONE, seed=config.seed, freeze=False, **config.backbone_overrides)
    stem = backbone.patch_embed if isinstance(backbone.patch_embed, ConvStem3D) else None
    if stem is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            stem.add_batch_norm()  # trains fast with it; folded away below, so the saved backbone has none
    spec = backbone.input_spec
    if data is None:
        train_t, val_t = _render(config, spec, progress)
    else:
        train_set, val_set = _splits(Path(data), unlabelled=config.objective == "mae")
        train_t, val_t = _decode(train_set, val_set, spec, config, progress)
    data_time = time.perf_counter() - started

    backbone.requires_grad_(True)
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer="adamw",
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        label_smoothing=config.label_smoothing,
        seed=config.seed,
        device=config.device,
        amp=prefer_native_bf16(config.amp, config.device),
        eval_every=0,
    )
    if config.objective == "mae":
        from training.mae import MaeConfig, MaskedVideoAutoencoder, fit_mae

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            autoencoder = MaskedVideoAutoencoder(backbone, MaeConfig(mask_ratio=config.mask_ratio))
        mae = fit_mae(autoencoder, train_t, val_t, train_config, progress=progress, title="pretrain vpetl-demo (mae)")
        metrics = {"top1": None, "top5": None, "train_time_s": mae["train_time_s"]}
        reconstruction = {"val_reconstruction_loss": mae["val_loss"],
                          "initial_val_reconstruction_loss": mae["initial_val_loss"]}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = _Classifier(backbone, train_t.num_classes, config.reconstruction_weight)
        metrics, _ = fit(model, dict(model.named_parameters()), train_t, val_t, train_config, spec=spec,
                         log_path=log_path, progress=progress, title="pretrain vpetl-demo")
        reconstruction = {}

    backbone.to("cpu").eval()
    if stem is not None:
        stem.fold_batch_norm()
    backbone.freeze()
    partial = path.with_suffix(".part")
    save_backbone(backbone, partial)
    result = PretrainResult(
        path=path,
        cached=False,
        backbone_sha256=backbone.sha256(refresh=True),
        val_top1=metrics["top1"],
        val_top5=metrics["top5"],
        data_time_s=data_time,
        train_time_s=metrics["train_time_s"],
        total_time_s=time.perf_counter() - started,
        key=key,
        config=config.to_dict(),
        **reconstruction,
    )
    info = {k: v for k, v in result.to_dict().items() if k not in ("path", "cached")}
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    partial.replace(path)  # the backbone file appears last: its presence (with the sidecar) marks a complete run
    return result


def ensure_demo_backbone(cache_dir: Path, *, progress: bool = True, config: PretrainConfig | None = None) -> Path:
    """The cached pretrained demo backbone file under ``cache_dir``, pretraining it on the first call.

    ``vpetl up`` and ``vpetl train --backbone vpetl-demo`` call this; load the result with
    ``create_backbone("vpetl-demo", checkpoint=path)``.
    """
    return pretrain_demo(config, cache_dir, progress=progress).path
