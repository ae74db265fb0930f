"""The bank's device data path (vpetl/petl/data_path.py): batch buckets and torch.compile keep every clip's logits
equal to that clip run alone through its own trainable model (the reference, not the bank); the CUDA-only parts
(pinned staging, own stream) are exercised where a GPU exists and are no-ops on CPU."""

from __future__ import annotations

import pytest
import torch

from tests.vpetl.petl.test_bank import _clip, _perturbed_model
from vpetl.backbones import create_backbone
from vpetl.petl.bank import AdapterBank
from vpetl.petl.data_path import DataPath, Stager, pad_to_bucket, parse_buckets
from vpetl.petl.io import adapter_bytes

torch.set_num_threads(2)

MIX = [("bapat", {"bottleneck": 8}), ("lora", {"rank": 4, "targets": ("q", "v")}), ("prefix", {"num_tokens": 3})]


def test_buckets_are_parsed_sorted_and_chosen() -> None:
    assert parse_buckets("32, 1,8,8") == (1, 8, 32)
    assert parse_buckets("") == () and parse_buckets(None) == ()
    path = DataPath(buckets=(8, 1, 32))
    assert [path.bucket(b) for b in (1, 2, 8, 9, 32, 40)] == [1, 8, 8, 32, 32, 40]
    assert DataPath().bucket(5) == 5
    with pytest.raises(ValueError, match="comma-separated"):
        parse_buckets("1,eight")
    with pytest.raises(ValueError, match=">= 1"):
        DataPath(buckets=(0, 4))


def test_pad_to_bucket_repeats_the_last_clip() -> None:
    x = torch.arange(3 * 2, dtype=torch.float32).reshape(3, 2)  # (B=3, 2)
    padded = pad_to_bucket(x, 5)
    assert padded.shape == (5, 2) and torch.equal(padded[:3], x)
    assert torch.equal(padded[3], x[2]) and torch.equal(padded[4], x[2])
    assert pad_to_bucket(x, 2) is x  # a batch above its bucket is left alone


def _loaded_bank(data_path: DataPath) -> tuple[AdapterBank, dict]:
    bank = AdapterBank(create_backbone("videomae-tiny"), data_path=data_path)
    models = {}
    for t, (method, options) in enumerate(MIX):
        task = f"task{t}"
        models[task] = _perturbed_model("videomae-tiny", method, options, num_classes=3 + t, seed=t)
        bank.load(task, 1, adapter_bytes(models[task], task=task, labels=[f"c{i}" for i in range(3 + t)]))
    return bank, models


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_padded_batches_give_each_clip_its_own_logits(batch: int) -> None:
    bank, models = _loaded_bank(DataPath(buckets=(4, 8)))
    calls: list[int] = []
    bank.backbone.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    keys = [(f"task{i % 2}", 1) for i in range(batch)] + [("task2", 1)]  # bapat/lora mix + a per-task prefix clip
    clips = _clip("videomae-tiny", len(keys), seed=11)
    out = bank.forward(clips, keys)
    assert calls[0] == DataPath(buckets=(4, 8)).bucket(batch)  # the mixed forward ran at the bucket's size
    for i, (task, _) in enumerate(keys):
        with torch.no_grad():
            alone = models[task](clips[i : i + 1])[0]
        assert out[i].shape == alone.shape
        assert torch.allclose(out[i], alone, atol=1e-4), (task, (out[i] - alone).abs().max())


def test_compiled_forward_matches_each_clip_alone() -> None:
    bank, models = _loaded_bank(DataPath(buckets=(4,), compile=True))
    keys = [("task0", 1), ("task1", 1), ("task0", 1)]
    for seed in (3, 4):  # a second batch of the same bucket reuses the compiled graph
        clips = _clip("videomae-tiny", len(keys), seed=seed)
        out = bank.forward(clips, keys)
        for i, (task, _) in enumerate(keys):
            with torch.no_grad():
                alone = models[task](clips[i : i + 1])[0]
            assert torch.allclose(out[i], alone, atol=1e-4), (task, (out[i] - alone).abs().max())


def test_stager_is_plain_on_cpu() -> None:
    stager = Stager(torch.device("cpu"), DataPath())
    assert stager.stream is None and not stager.pin
    clips = [torch.randn(3, 4, 8, 8) for _ in range(2)]
    batch = stager.stack(clips)
    assert batch.shape == (2, 3, 4, 8, 8) and not batch.is_pinned()
    assert stager.to_device(batch, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned staging and CUDA streams need a CUDA device")
def test_stager_pins_and_reuses_buffers_on_cuda() -> None:
    stager = Stager(torch.device("cuda"), DataPath())
    clips = [torch.randn(3, 4, 8, 8) for _ in range(2)]
    first = stager.stack(clips)
    assert first.is_pinned() and stager.stream is not None
    assert stager.stack(clips).data_ptr() == first.data_ptr()  # the same shape reuses its pinned buffer
    with stager.context():
        on_device = stager.to_device(first, torch.float32)
    torch.cuda.synchronize()
    assert torch.equal(on_device.cpu(), torch.stack(clips))
