"""vpetl.data.loader: tensors and labels, seeded augmentation per (seed, epoch, index), worker independence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vpetl.data.loader import ClipDataset, make_loader
from vpetl.data.readers import open_dataset
from vpetl.errors import InvalidVideo
from vpetl.protocol import InputSpec

SPEC = InputSpec(num_frames=4, sampling_rate=2, size=48)


def test_clip_dataset_items(tiny_synth: Path) -> None:
    data = open_dataset(tiny_synth, "train")
    train = ClipDataset(data, SPEC, train=True, seed=1)
    clip, label = train[(0, 3)]
    assert clip.dtype == torch.float32 and clip.shape == (3, 4, 48, 48) and label == data.items[3].label
    assert torch.equal(clip, train[(0, 3)][0])  # same seed, epoch, index: same augmentation
    assert torch.equal(clip, ClipDataset(data, SPEC, train=True, seed=1)[(0, 3)][0])
    assert any(not torch.equal(train[(0, i)][0], train[(1, i)][0]) for i in range(6))  # a new epoch re-draws
    test = ClipDataset(data, SPEC)
    assert torch.equal(test[(0, 3)][0], test[(5, 3)][0])  # evaluation ignores the epoch
    views = ClipDataset(data, SPEC, views=(2, 3))[0][0]
    assert views.shape == (6, 3, 4, 48, 48)


def test_loader_is_reproducible_across_workers(tiny_synth: Path) -> None:
    data = open_dataset(tiny_synth, "train")

    def run(workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = make_loader(data, SPEC, batch_size=4, train=True, num_workers=workers, seed=11)
        loader.set_epoch(epoch)
        return list(loader)

    serial, parallel = run(0, 0), run(2, 0)
    assert len(serial) == 5 and serial[0][0].shape == (4, 3, 4, 48, 48) and serial[0][1].dtype == torch.int64
    for (x0, y0), (x1, y1) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other = run(0, 1)
    assert [y.tolist() for _, y in other] != [y.tolist() for _, y in serial]  # a new epoch reshuffles


def test_eval_loader_keeps_order_and_partial_batch(tiny_synth: Path) -> None:
    data = open_dataset(tiny_synth, "val")
    batches = list(make_loader(data, SPEC, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == [item.label for item in data.items]


def test_unreadable_clip_raises_or_resamples(tiny_synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tiny_synth, root)
    data = open_dataset(root, "train")
    data.items[0].path.write_bytes(b"not a video at all")
    with pytest.raises(InvalidVideo, match=data.items[0].path.name):
        ClipDataset(data, SPEC, train=True)[(0, 0)]
    clip, label = ClipDataset(data, SPEC, train=True, on_error="resample")[(0, 0)]
    assert clip.shape == (3, 4, 48, 48) and 0 <= label < data.num_classes
