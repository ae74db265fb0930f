"""Torch data loading for training and evaluation (the only module of ``vpetl.data`` that imports torch).

Augmentation is reproducible whatever the number of workers: sample ``i`` of epoch ``e`` draws from
``numpy.random.default_rng([seed, e, i])``, and the shuffling order from ``default_rng([seed, e])``. The sampler
hands ``(epoch, index)`` keys to the dataset, so even persistent workers see the right epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from vpetl.data.readers import VideoDataset
from vpetl.errors import InvalidVideo
from vpetl.protocol import InputSpec
from vpetl.video import VideoLimits, load_clip, load_views

__all__ = ["ClipDataset", "ClipLoader", "EpochSampler", "collate_clips", "make_loader"]

Key = int | tuple[int, int]


class ClipDataset(Dataset):
    """``(clip, label)`` pairs: clip is a float32 tensor (C, T, H, W), or (V, C, T, H, W) with ``views``.

    ``train=True`` samples a random clip position and multi-scale crop per item (seeded per item and epoch);
    ``train=False`` takes the centred clip and centre crop (or ``views = (num_clips, num_crops)`` test views).
    ``on_error="resample"`` replaces an unreadable clip by another (deterministically chosen) one instead of failing
    the epoch; ``"raise"`` (default) raises :class:`InvalidVideo` naming the file.
    """

    def __init__(self, dataset: VideoDataset, spec: InputSpec, *, train: bool = False, seed: int = 0,
                 views: tuple[int, int] | None = None, on_error: Literal["raise", "resample"] = "raise",
                 limits: VideoLimits | None = None) -> None:
        self.dataset = dataset
        self.spec = spec
        self.train = train
        self.seed = seed
        self.views = views
        self.on_error = on_error
        self.limits = limits or VideoLimits()
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset.items)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer keys (the sampler passes it explicitly)."""
        self.epoch = epoch

    def _load(self, index: int, epoch: int) -> np.ndarray:
        item = self.dataset.items[index]
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            return load_clip(item.source(), self.spec, train=True, rng=rng, limits=self.limits)
        if self.views is not None:
            return load_views(item.source(), self.spec, *self.views, limits=self.limits)
        return load_clip(item.source(), self.spec, limits=self.limits)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, int(key))
        try:
            clip = self._load(index, epoch)
        except InvalidVideo as exc:
            if self.on_error == "raise":
                raise InvalidVideo(f"{self.dataset.items[index].path}: {exc.message}") from exc
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            for _ in range(10):  # a bounded number of tries: a dataset of only bad clips still fails
                index = int(rng.integers(len(self)))
                try:
                    clip = self._load(index, epoch)
                    break
                except InvalidVideo:
                    continue
            else:
                raise
        return torch.from_numpy(clip), self.dataset.items[index].label


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys; shuffled from ``default_rng([seed, epoch])`` when ``shuffle``."""

    def __init__(self, length: int, *, shuffle: bool, seed: int = 0) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.length) if self.shuffle
                 else np.arange(self.length))
        return iter([(self.epoch, int(i)) for i in order])


class ClipLoader(DataLoader):
    """A DataLoader over a :class:`ClipDataset` with ``set_epoch`` (new shuffle and new augmentation draws)."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        self.dataset.set_epoch(epoch)  # type: ignore[union-attr]


def collate_clips(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(clip, label)`` pairs into ``(B, ...)`` float32 clips and int64 labels.

    In the main process the clips are stacked with numpy: ``torch.stack`` into a fresh multi-MB buffer was 8×
    slower here (page faults on a new allocation, and intra-op threads fighting the training step for 2 cores).
    Workers keep torch's collate, which stacks straight into shared memory for the trip to the main process.
    """
    if get_worker_info() is not None:
        return default_collate(batch)
    clips = np.stack([clip.numpy() for clip, _ in batch])  # (B, C, T, H, W) or (B, V, C, T, H, W)
    return torch.from_numpy(clips), torch.tensor([label for _, label in batch], dtype=torch.int64)


def _worker_init(_: int) -> None:
    # Each worker decodes one clip at a time: intra-op threads would only fight over the cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: VideoDataset | ClipDataset,
    spec: InputSpec | None = None,
    batch_size: int = 8,
    train: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    *,
    views: tuple[int, int] | None = None,
    drop_last: bool | None = None,
    on_error: Literal["raise", "resample"] = "raise",
) -> ClipLoader:
    """A loader of ``(clips (B, C, T, H, W) float32, labels (B,) int64)`` batches.

    Training shuffles (seeded) and drops the last partial batch unless ``drop_last=False``; evaluation keeps the
    order. Call ``loader.set_epoch(e)`` before each epoch for fresh (still reproducible) augmentation.
    """
    if isinstance(dataset, ClipDataset):
        clips = dataset
    else:
        if spec is None:
            raise ValueError("make_loader needs an InputSpec for a VideoDataset")
        clips = ClipDataset(dataset, spec, train=train, seed=seed, views=views, on_error=on_error)
    sampler = EpochSampler(len(clips), shuffle=train, seed=seed)
    if drop_last is None:
        drop_last = train and len(clips) > batch_size
    return ClipLoader(
        clips,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_clips,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=False,
    )
