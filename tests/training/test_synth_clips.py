"""Source clips rendered straight into tensors: the same clips and transforms as the mp4 path, split and seeded."""

from __future__ import annotations

import numpy as np
import torch

from training.synth_clips import render_clip_tensors
from vpetl.backbones.registry import DEMO_SPEC
from vpetl.data.synth import PRESETS, render_clip
from vpetl.video import preprocess, sample_indices


def test_splits_shapes_and_labels() -> None:
    train, val = render_clip_tensors("source", 3, DEMO_SPEC, size=80, frames=(16, 20), val_fraction=0.3, workers=1)
    classes = len(PRESETS["source"].classes)
    assert train.clips.shape == (2 * classes, 1, 3, DEMO_SPEC.num_frames, DEMO_SPEC.size, DEMO_SPEC.size)
    assert val.clips.shape[0] == classes and train.train and not val.train
    assert train.clips.dtype == torch.float16 and torch.isfinite(train.clips.float()).all()
    assert train.label_list() == [c for c in range(classes) for _ in range(2)]
    assert val.label_list() == list(range(classes)) and val.classes == list(PRESETS["source"].classes)


def test_validation_clip_is_the_centred_view_of_the_rendered_clip() -> None:
    _, val = render_clip_tensors("source", 2, DEMO_SPEC, seed=5, size=80, frames=(16, 20), val_fraction=0.5,
                                 workers=1)
    video = render_clip("source", 4, 1, seed=5, size=80, frames=(16, 20))  # class 4's validation clip (index 1)
    indices = sample_indices(len(video), DEMO_SPEC.num_frames, sampling=DEMO_SPEC.sampling,
                             sampling_rate=DEMO_SPEC.sampling_rate)
    expected = preprocess(video[indices], DEMO_SPEC).astype(np.float16)
    assert torch.equal(val.clips[4, 0], torch.from_numpy(expected))


def test_training_clip_is_its_augmented_draw_of_the_rendered_clip() -> None:
    # the frame sampling and crop of vpetl.video with the clip's own augmentation stream, on the whole clip
    train, _ = render_clip_tensors("source", 3, DEMO_SPEC, seed=2, size=80, frames=(16, 20), val_fraction=0.34,
                                   workers=1)
    video = render_clip("source", 3, 1, seed=2, size=80, frames=(16, 20))  # class 3's second training clip
    rng = np.random.default_rng([2, 7, 3, 1])
    indices = sample_indices(len(video), DEMO_SPEC.num_frames, sampling=DEMO_SPEC.sampling,
                             sampling_rate=DEMO_SPEC.sampling_rate, train=True, rng=rng)
    expected = preprocess(video[indices], DEMO_SPEC, train=True, rng=rng).astype(np.float16)
    assert torch.equal(train.clips[3 * 2 + 1, 0], torch.from_numpy(expected))


def test_same_seed_same_tensors_whatever_the_worker_count() -> None:
    one = render_clip_tensors("source", 2, DEMO_SPEC, seed=1, size=64, frames=(16, 16), workers=1)
    two = render_clip_tensors("source", 2, DEMO_SPEC, seed=1, size=64, frames=(16, 16), workers=2)
    other = render_clip_tensors("source", 2, DEMO_SPEC, seed=2, size=64, frames=(16, 16), workers=1)
    assert torch.equal(one[0].clips, two[0].clips) and torch.equal(one[1].clips, two[1].clips)
    assert not torch.equal(one[0].clips, other[0].clips)
