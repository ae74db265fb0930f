"""The trainer end to end on a tiny backbone: loss falls, the adapter reloads to the same accuracy, runs are
reproducible, gradient accumulation is equivalent to a bigger batch, bad data fails early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.clips import ClipTensors, load_clip_tensors
from training.evaluate import evaluate, topk_correct, video_logits
from training.progress import ProgressEvent
from training.trainer import TrainConfig, check_datasets, train_adapter
from vpetl.backbones import create_backbone
from vpetl.data.readers import ClipItem, VideoDataset, open_dataset
from vpetl.errors import DatasetError
from vpetl.petl.io import load_adapter
from vpetl.petl.registry import make_config


@pytest.fixture(scope="module")
def backbone():  # noqa: ANN201
    return create_backbone("videomae-tiny")


@pytest.fixture(scope="module")
def splits(tiny_data: Path) -> tuple[VideoDataset, VideoDataset]:
    return open_dataset(tiny_data, "train"), open_dataset(tiny_data, "val")


def test_training_lowers_the_loss_and_the_adapter_reloads_to_the_same_accuracy(
    backbone, splits: tuple[VideoDataset, VideoDataset], tmp_path: Path  # noqa: ANN001
) -> None:
    train, val = splits
    events: list[ProgressEvent] = []
    config = TrainConfig(epochs=6, batch_size=4, optimizer="adamw", lr=3e-3, warmup_epochs=1, eval_views=(2, 1))
    result = train_adapter(backbone, make_config("patt", bottleneck=8), train, val, config, task="tiny",
                           out=tmp_path / "tiny.safetensors", log_path=tmp_path / "log.jsonl", progress=False,
                           callback=events.append)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    m = result.metrics
    assert 0.0 <= m["top1"] <= m["top5"] <= 1.0 and m["epochs"] == 6 and m["val_views"] == 2
    assert result.sha256 and result.adapter_path.is_file() and result.labels == train.classes

    # the JSON-lines log: a line per step and per epoch; the callback saw the same events
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {line["kind"] for line in lines} == {"step", "epoch"}
    assert [e.kind for e in events].count("epoch") == 6 and events[-1].val_top1 == pytest.approx(m["top1"])
    assert lines[-1]["eta_s"] == 0 and lines[0]["lr"] < lines[len(lines) // 3]["lr"]  # warmup

    # the file carries labels, spec, metrics and the backbone hash; reloading gives the same accuracy
    reloaded = load_adapter(result.adapter_path, backbone)
    from vpetl.artifact import read_adapter

    meta = read_adapter(result.adapter_path).meta
    assert meta.labels == train.classes and meta.input_spec == backbone.input_spec
    assert meta.backbone_sha256 == backbone.sha256() and meta.metrics["top1"] == pytest.approx(m["top1"])
    assert {"top5", "val_loss", "epochs", "train_time_s"} <= set(meta.metrics)
    from vpetl.data.loader import make_loader

    again = evaluate(reloaded, make_loader(val, backbone.input_spec, 4, views=(2, 1)))
    assert again.top1 == pytest.approx(m["top1"]) and again.loss == pytest.approx(m["val_loss"], rel=1e-4)


def test_same_seed_gives_the_same_loss_curve(backbone, splits) -> None:  # noqa: ANN001
    train, val = splits
    config = TrainConfig(epochs=2, batch_size=4, seed=3, log_every=1)
    runs = []
    for _ in range(2):
        events: list[ProgressEvent] = []
        train_adapter(backbone, make_config("adaptmlp", bottleneck=8), train, None, config, task="t",
                      progress=False, callback=events.append)
        runs.append([e.loss for e in events if e.kind == "step"])
    assert runs[0] == runs[1] and len(runs[0]) == 2 * (len(train) // 4)
    other: list[ProgressEvent] = []
    train_adapter(backbone, make_config("adaptmlp", bottleneck=8), train, None,
                  TrainConfig(epochs=2, batch_size=4, seed=4), task="t", progress=False, callback=other.append)
    assert [e.loss for e in other if e.kind == "step"] != runs[0]


def _random_clips(n: int, spec, classes: int = 3, seed: int = 0) -> ClipTensors:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    clips = torch.randn(n, 2, 3, spec.num_frames, spec.size, spec.size, generator=g).half()
    labels = torch.arange(n) % classes
    return ClipTensors(clips, labels, [f"c{i}" for i in range(classes)], True, spec)


def test_gradient_accumulation_matches_the_bigger_batch(backbone) -> None:  # noqa: ANN001
    data = _random_clips(8, backbone.input_spec)
    results = []
    for batch, accumulate in ((4, 1), (2, 2)):
        config = TrainConfig(epochs=2, batch_size=batch, accumulate=accumulate, base_lr=4.0, warmup_epochs=0)
        assert config.effective_batch == 4
        result = train_adapter(backbone, make_config("patt", bottleneck=8), data, None, config, task="t",
                               progress=False)
        results.append(result)
    a, b = (r.model.trainable_state_dict() for r in results)
    assert results[0].metrics["steps"] == results[1].metrics["steps"] == 4
    for h0, h1 in zip(results[0].history, results[1].history, strict=True):
        assert h0["loss"] == pytest.approx(h1["loss"], rel=1e-5)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4)
    assert not torch.equal(a["head.weight"], results[0].model.head.weight.new_zeros(a["head.weight"].shape))


def test_clip_tensors_cache_is_reused(splits, backbone, tmp_path: Path) -> None:  # noqa: ANN001
    train, _ = splits
    first = load_clip_tensors(train, backbone.input_spec, train=True, views=2, cache_dir=tmp_path)
    assert first.clips.shape == (len(train), 2, 3, 4, 32, 32) and first.clips.dtype == torch.float16
    assert not torch.equal(first.clips[:, 0], first.clips[:, 1])  # two different augmented draws
    files = list(tmp_path.glob("clips-*.safetensors"))
    assert len(files) == 1
    again = load_clip_tensors(train, backbone.input_spec, train=True, views=2, cache_dir=tmp_path)
    assert torch.equal(first.clips, again.clips) and again.label_list() == [it.label for it in train.items]


def test_bad_datasets_fail_early_with_dataset_error(backbone, splits) -> None:  # noqa: ANN001
    train, val = splits
    empty = VideoDataset(items=[], classes=train.classes)
    with pytest.raises(DatasetError, match="no clips"):
        train_adapter(backbone, "linear", empty, None, task="t", progress=False)
    one_class = VideoDataset(items=[it for it in train.items if it.label == 0], classes=train.classes)
    with pytest.raises(DatasetError, match="one class"):
        train_adapter(backbone, "linear", one_class, val, task="t", progress=False)
    with pytest.raises(DatasetError, match="do not match the adapter's labels"):
        train_adapter(backbone, "linear", train, val, task="t", labels=["a", "b"], progress=False)
    with pytest.raises(DatasetError, match="another order"):
        check_datasets(train, val, labels=list(reversed(train.classes)))
    renamed = VideoDataset(items=val.items, classes=[c + "_x" for c in val.classes])
    with pytest.raises(DatasetError, match="validation classes"):
        train_adapter(backbone, "linear", train, renamed, task="t", progress=False)
    out_of_range = VideoDataset(items=[*train.items, ClipItem(train.items[0].path, 99)], classes=train.classes)
    with pytest.raises(DatasetError, match="labels must be in"):
        check_datasets(out_of_range, None)
    assert check_datasets(train, val, labels=train.classes) == train.classes


def test_multi_view_logits_are_averaged_per_video() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    x = torch.randn(2, 3, 3, 2, 4, 4)  # (B, V, C, T, H, W)
    expected = torch.stack([model(x[:, v]) for v in range(3)]).mean(0)
    torch.testing.assert_close(video_logits(model, x, max_rows=2), expected)
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05]])
    assert topk_correct(logits, torch.tensor([1, 2]), (1, 2, 5)) == [1, 1, 2]


def test_adamw_is_the_fused_kernel_and_matches_the_loop() -> None:
    # fused AdamW (one pass over all tensors) on CPU: the same update as torch's per-tensor reference loop
    from training.trainer import build_optimizer

    torch.manual_seed(0)
    weights = {"w": torch.nn.Parameter(torch.randn(8, 4)), "b": torch.nn.Parameter(torch.randn(4))}
    reference = {k: torch.nn.Parameter(v.detach().clone()) for k, v in weights.items()}
    config = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.05)
    fused = build_optimizer(weights, config)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW([{"params": [reference["w"]], "weight_decay": 0.05},
                              {"params": [reference["b"]], "weight_decay": 0.0}], lr=fused.param_groups[0]["lr"],
                             foreach=False)
    for _ in range(3):
        for params, opt in ((weights, fused), (reference, loop)):
            opt.zero_grad()
            (params["w"].sum(0) * params["b"]).square().sum().backward()
            opt.step()
    for k in weights:
        torch.testing.assert_close(weights[k], reference[k], rtol=1e-5, atol=1e-6)


def test_amp_resolution_on_cpu_is_fp32_unless_bf16_is_asked_for() -> None:
    from training.trainer import resolve_amp
    from vpetl.errors import InvalidRequest

    cpu = torch.device("cpu")
    assert [resolve_amp(a, cpu) for a in ("auto", "bf16", "fp16", "none")] == ["none", "bf16", "none", "none"]
    with pytest.raises(InvalidRequest, match="amp must be"):
        resolve_amp("fp8", cpu)


def test_bf16_on_cpu_runs_the_matmuls_in_bf16_keeps_fp32_weights_and_tracks_fp32(backbone) -> None:  # noqa: ANN001
    """amp="bf16" on CPU autocasts the forward (a Linear inside the backbone returns bf16) while the trained
    parameters stay fp32; the loss curve follows the fp32 run's to bf16 precision."""
    data = _random_clips(8, backbone.input_spec)
    seen: dict[str, set[torch.dtype]] = {}
    curves: dict[str, list[float]] = {}
    for amp in ("none", "bf16"):
        seen[amp] = set()
        hook = backbone.blocks[0].mlp.fc1.register_forward_hook(lambda _m, _i, out, a=amp: seen[a].add(out.dtype))
        events: list[ProgressEvent] = []
        try:
            result = train_adapter(backbone, make_config("patt", bottleneck=8), data, None,
                                   TrainConfig(epochs=3, batch_size=4, optimizer="adamw", lr=3e-3, amp=amp),
                                   task="t", progress=False, callback=events.append)
        finally:
            hook.remove()
        curves[amp] = [e.loss for e in events if e.kind == "step"]
        assert all(p.dtype == torch.float32 for p in result.model.trainable_state_dict().values())
    assert seen == {"none": {torch.float32}, "bf16": {torch.bfloat16}}
    assert curves["bf16"] != curves["none"]  # it really ran another precision
    for fp32, bf16 in zip(curves["none"], curves["bf16"], strict=True):
        assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.parametrize("native", [True, False])
def test_the_demo_recipes_ask_for_bf16_only_on_a_cpu_that_has_it(monkeypatch: pytest.MonkeyPatch,
                                                                  native: bool) -> None:
    import training.trainer as trainer

    monkeypatch.setattr(trainer, "native_cpu_bf16", lambda: native)
    assert trainer.prefer_native_bf16("auto", "cpu") == ("bf16" if native else "auto")
    assert trainer.prefer_native_bf16("none", "cpu") == "none"  # an explicit choice is kept
    assert trainer.resolve_amp(trainer.prefer_native_bf16("auto", "cpu"), torch.device("cpu")) == (
        "bf16" if native else "none")
