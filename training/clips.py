"""Decoded, preprocessed clips held as tensors, so a training run does not decode video every epoch.

Decoding and resampling a clip costs about as much as a forward pass of the demo backbone on 2 CPU cores; an
experiment of 60 runs over the same two datasets would spend most of its time in the decoder. So each dataset split
is decoded once into a :class:`ClipTensors`:

- training splits hold ``V`` augmented draws per clip (random clip position + multi-scale crop, exactly what
  :func:`vpetl.video.load_clip` does with ``train=True``); epoch ``e`` shows each clip one of its draws, chosen by a
  seeded generator, so augmentation survives the cache and runs stay reproducible;
- evaluation splits hold the test views (``num_clips × num_crops``, no augmentation); logits are averaged over them.

Clips are stored as float16 (half the memory; the rounding is far below the pixel noise of the videos) and cast
back to float32 per batch. With ``cache_dir`` the tensors are also written to a ``.safetensors`` file named by the
hash of everything that determines them (file contents, labels, input spec, views, seed), so a second process
reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vpetl.data.loader import ClipDataset
from vpetl.data.readers import ClipBlob, VideoDataset
from vpetl.protocol import InputSpec

Tensor = torch.Tensor
CACHE_VERSION = 1


@dataclass
class ClipTensors:
    """In-memory clips of one split.

    Attributes:
        clips: (N, V, C, T, H, W) float16; V augmented draws (``train``) or V test views (eval). (Or (N, V, F)
            frozen features, for a linear probe that never runs the backbone twice on the same clip.)
        labels: (N,) int64 label indices into ``classes``.
        classes: class names.
        train: True when the views are augmented draws (one is used per epoch), False for test views (averaged).
        spec: the input spec the clips were made with.
    """

    clips: Tensor
    labels: Tensor
    classes: list[str]
    train: bool
    spec: InputSpec

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def sample_dims(self) -> int:
        """Rank of one model input: 4 for clips (C, T, H, W), 1 for cached features."""
        return self.clips.dim() - 2

    @property
    def num_views(self) -> int:
        return int(self.clips.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_list(self) -> list[int]:
        return [int(v) for v in self.labels.tolist()]

    def batches(self, batch_size: int, *, epoch: int = 0, seed: int = 0, shuffle: bool | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """``(clips, labels)`` float32 batches: (B, C, T, H, W) for training splits (one draw per clip, shuffled),
        (B, V, C, T, H, W) for evaluation splits (in order). ``drop_last`` drops a last partial batch."""
        shuffle = self.train if shuffle is None else shuffle
        n = len(self)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        # one augmented draw per clip and epoch, from its own stream so the order and the draw are independent
        draws = np.random.default_rng([seed, epoch, 1]).integers(self.num_views, size=n)
        stop = n - n % batch_size if drop_last and n > batch_size else n
        for start in range(0, stop, batch_size):
            idx = torch.from_numpy(order[start : start + batch_size].copy())
            if self.train:
                x = self.clips[idx, torch.from_numpy(draws[idx.numpy()])]  # (B, C, T, H, W)
            else:
                x = self.clips[idx]  # (B, V, C, T, H, W)
            yield x.float(), self.labels[idx]

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last and n > batch_size else -(-n // batch_size)


def _clip_digest(clip: Path | ClipBlob) -> str:
    if isinstance(clip, (str, os.PathLike)):
        return hashlib.sha256(Path(clip).read_bytes()).hexdigest()
    # a clip-store object is named by its sha256: no need to fetch it once more just to hash it
    sha256 = getattr(clip, "sha256", None)
    return sha256 if isinstance(sha256, str) else hashlib.sha256(clip.read_bytes()).hexdigest()


def cache_key(dataset: VideoDataset, spec: InputSpec, *, train: bool, views: int | tuple[int, int], seed: int) -> str:
    """Hash of everything the tensors depend on: clip bytes, labels, classes, spec, views, seed."""
    payload = {
        "version": CACHE_VERSION,
        "items": [[_clip_digest(it.path), it.label] for it in dataset.items],
        "classes": list(dataset.classes),
        "spec": spec.model_dump(mode="json"),
        "train": train,
        "views": list(views) if isinstance(views, tuple) else views,
        "seed": seed if train else 0,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _decode(dataset: VideoDataset, spec: InputSpec, *, train: bool, views: int | tuple[int, int], seed: int,
            num_workers: int, progress: Callable[[int, int], None] | None) -> Tensor:
    n = len(dataset.items)
    if train:
        draws = int(views)  # type: ignore[arg-type]
        source = ClipDataset(dataset, spec, train=True, seed=seed)
        # key (draw, index): ClipDataset seeds clip i's augmentation of "epoch" k from (seed, k, i)
        keys: list[tuple[int, int]] = [(k, i) for i in range(n) for k in range(draws)]
    else:
        clips_crops = views if isinstance(views, tuple) else (1, 1)
        draws = clips_crops[0] * clips_crops[1]
        source = ClipDataset(dataset, spec, views=None if draws == 1 else clips_crops)
        keys = [(0, i) for i in range(n)]
    loader = DataLoader(source, batch_size=None, sampler=keys, num_workers=num_workers)  # type: ignore[arg-type]
    out = torch.empty((n, draws, 3, spec.num_frames, spec.size, spec.size), dtype=torch.float16)
    for j, (clip, _) in enumerate(loader):
        i, k = (j // draws, j % draws) if train else (j, 0)
        if train:
            out[i, k] = clip
        else:
            out[i] = clip.reshape(draws, *clip.shape[-4:])
        if progress and (not train or k == draws - 1):
            progress(i + 1, n)
    return out


def load_clip_tensors(
    dataset: VideoDataset,
    spec: InputSpec,
    *,
    train: bool,
    views: int | tuple[int, int] = 1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ClipTensors:
    """Decode ``dataset`` once into tensors (or read them from ``cache_dir``).

    Args:
        dataset: the split to decode.
        spec: the backbone's input spec.
        train: augmented draws (True) or test views (False).
        views: training: the number of augmented draws per clip; evaluation: ``(num_clips, num_crops)`` or 1.
        seed: seeds the augmentation draws (ignored for evaluation views).
        cache_dir: where to keep the tensors between processes (None: memory only).
        num_workers: decoder processes (0: decode in this process).
        progress: ``progress(done, total)`` per decoded clip.
    """
    from safetensors.torch import load_file, save_file

    path = None
    if cache_dir is not None:
        key = cache_key(dataset, spec, train=train, views=views, seed=seed)
        path = Path(cache_dir) / f"clips-{key[:24]}.safetensors"
        if path.is_file():
            tensors = load_file(str(path))
            return ClipTensors(tensors["clips"], tensors["labels"], list(dataset.classes), train, spec)
    clips = _decode(dataset, spec, train=train, views=views, seed=seed, num_workers=num_workers, progress=progress)
    labels = torch.tensor([it.label for it in dataset.items], dtype=torch.int64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        save_file({"clips": clips, "labels": labels}, str(partial))
        partial.replace(path)  # readers never see a half-written cache file
    return ClipTensors(clips, labels, list(dataset.classes), train, spec)


class EpochBatches:
    """Training batches of one epoch, from a VideoDataset (decoded on the fly) or ClipTensors (in memory).

    Both paths shuffle with ``default_rng([seed, epoch])`` and drop the last partial batch, so the sample order does
    not depend on the batch size: that is what makes accumulate=2 at batch 2 equal batch 4.
    """

    def __init__(self, data: VideoDataset | ClipTensors, spec: InputSpec, batch_size: int, *, seed: int = 0,
                 num_workers: int = 0) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        if isinstance(data, VideoDataset):
            from vpetl.data.loader import make_loader

            self.loader = make_loader(data, spec, batch_size, train=True, num_workers=num_workers, seed=seed)

    def __len__(self) -> int:
        if isinstance(self.data, ClipTensors):
            return self.data.num_batches(self.batch_size, drop_last=True)
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        if isinstance(self.data, ClipTensors):
            return self.data.batches(self.batch_size, epoch=epoch, seed=self.seed, drop_last=True)
        self.loader.set_epoch(epoch)
        return iter(self.loader)


def eval_batches(data: VideoDataset | ClipTensors, spec: InputSpec, batch_size: int,
                 views: tuple[int, int] = (1, 1), num_workers: int = 0) -> Iterable[tuple[Tensor, Tensor]]:
    """Evaluation batches in order: ClipTensors as stored (their views), a VideoDataset decoded with ``views``."""
    if isinstance(data, ClipTensors):
        return data.batches(batch_size, shuffle=False)
    from vpetl.data.loader import make_loader

    return make_loader(data, spec, batch_size, train=False, num_workers=num_workers,
                       views=None if views == (1, 1) else views)
