"""Synthetic clips rendered straight into model-input tensors, for pretraining the demo backbone.

``vpetl data synth`` writes mp4 files, and training decodes them; for the demo backbone's pretraining that round
trip would cost more than the training itself (encoding and decoding ~20,000 clips takes about five minutes on 2
cores, rendering them about half a minute). So pretraining renders the ``source`` preset in memory with the same
generator (:func:`vpetl.data.synth.render_clip`) and the same sampling and transforms as
:func:`vpetl.video.load_clip` (training: random clip position + multi-scale crop; validation: centred clip and
crop), and skips only the lossy codec.

Clip ``(class c, index i)`` is the clip ``vpetl data synth`` would write for the same seed, size and frame range;
its augmentation draws from ``default_rng([seed, 7, c, i])``. Results do not depend on the number of workers.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
from collections.abc import Callable

import numpy as np
import torch

from training.clips import ClipTensors
from vpetl.data.synth import PRESETS, render_clip
from vpetl.protocol import InputSpec
from vpetl.video import preprocess, sample_indices

_AUGMENT_STREAM = 7  # keeps the augmentation generator apart from the renderer's
# the (N, C, T, H, W) float16 output, in anonymous shared memory, while a pool of forked workers renders into it
_OUTPUT: np.ndarray | None = None


def _render_input(job: tuple[str, int, int, int, int, tuple[int, int], InputSpec, bool]) -> np.ndarray:
    """Worker: one clip as a model input (C, T, size, size) float16."""
    preset, label, index, seed, size, frames, spec, train = job
    rng = np.random.default_rng([seed, _AUGMENT_STREAM, label, index]) if train else None

    def sampled(length: int) -> np.ndarray:
        return sample_indices(length, spec.num_frames, sampling=spec.sampling, sampling_rate=spec.sampling_rate,
                              train=train, rng=rng)

    # only the sampled frames are rendered (the same pixels as those frames of the whole clip, at about half the
    # cost of all 16–20)
    video = render_clip(preset, label, index, seed=seed, size=size, frames=frames, select=sampled)  # (F, S, S, 3)
    return preprocess(video, spec, train=train, rng=rng).astype(np.float16)


def _render_into_output(numbered: tuple[int, tuple[str, int, int, int, int, tuple[int, int], InputSpec, bool]]) -> int:
    """Worker: render clip ``j`` straight into the shared output (returning ~200 KB per clip through a pipe cost
    the parent a core's worth of unpickling); returns ``j``."""
    j, job = numbered
    assert _OUTPUT is not None
    _OUTPUT[j] = _render_input(job)
    return j


def render_clip_tensors(
    preset: str,
    clips_per_class: int,
    spec: InputSpec,
    *,
    seed: int = 0,
    size: int = 80,
    frames: tuple[int, int] = (16, 20),
    val_fraction: float = 0.05,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ClipTensors, ClipTensors]:
    """Render ``clips_per_class`` clips of every class of ``preset`` into (train, val) tensors.

    The last ``round(clips_per_class × val_fraction)`` indices of each class validate (at least one). Training
    clips carry one augmented draw each (fresh clips teach more than repeated crops of fewer clips).
    ``workers`` processes render in parallel (default: up to 2); ``progress(done, total)`` after every clip.
    """
    classes = PRESETS[preset].classes
    n_val = min(max(int(round(clips_per_class * val_fraction)), 1), clips_per_class - 1)
    n_train = clips_per_class - n_val
    # training clips first, so both splits are views of one tensor (no copy of several GB)
    jobs = [(preset, label, i, seed, size, tuple(frames), spec, True)
            for label in range(len(classes)) for i in range(n_train)]
    jobs += [(preset, label, i, seed, size, tuple(frames), spec, False)
             for label in range(len(classes)) for i in range(n_train, clips_per_class)]
    split = n_train * len(classes)
    labels = torch.tensor([job[1] for job in jobs], dtype=torch.int64)
    shape = (len(jobs), 3, spec.num_frames, spec.size, spec.size)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        clips = torch.empty(shape, dtype=torch.float16)
        for j, job in enumerate(jobs):
            clips[j] = torch.from_numpy(_render_input(job))
            if progress:
                progress(j + 1, len(jobs))
    else:
        clips = _render_shared(jobs, shape, workers, progress)
    names = list(classes)
    clips = clips.unsqueeze(1)  # (N, 1, C, T, H, W): one draw (train) or one view (val) per clip
    train = ClipTensors(clips[:split], labels[:split], names, True, spec)
    val = ClipTensors(clips[split:], labels[split:], names, False, spec)
    return train, val


def _render_shared(jobs: list, shape: tuple[int, ...], workers: int,
                   progress: Callable[[int, int], None] | None) -> torch.Tensor:
    """Render ``jobs`` in ``workers`` forked processes into one anonymous shared mapping (not /dev/shm, which
    is 64 MB in a default container), returned as a float16 tensor of ``shape``."""
    global _OUTPUT
    buffer = mmap.mmap(-1, int(np.prod(shape)) * 2)  # MAP_SHARED | MAP_ANONYMOUS: forked children write into it
    output = np.frombuffer(buffer, dtype=np.float16).reshape(shape)  # (N, C, T, H, W)
    _OUTPUT = output
    try:
        # fork: children run numpy only, start in milliseconds and inherit the mapping
        with mp.get_context("fork").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_render_into_output, enumerate(jobs), chunksize=16), 1):
                if progress:
                    progress(done, len(jobs))
    finally:
        _OUTPUT = None
    return torch.from_numpy(output)  # shares the mapping, which lives as long as the tensor
