"""ONNX export + the onnxruntime runner: same logits and top-1 as torch (PetlModel and the serving AdapterBank) on
a real mp4, the numpy scale folding pinned to the bank's, one graph for any width/batch, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from edge_helpers import LABELS, TINY, make_adapter

from edge_client.runner import Runner, graph_feeds
from vpetl.artifact import read_adapter
from vpetl.backbones import create_backbone
from vpetl.errors import IncompatibleAdapter, InvalidRequest
from vpetl.formats.onnx import decode_adapter, make_layout, task_feeds
from vpetl.petl.bank import AdapterBank
from vpetl.video import load_clip

torch.set_num_threads(2)

# (graph family, method, options): every method a graph can run, with non-default settings that change the math
CASES = [
    ("bapat", "bapat", {"bottleneck": 8, "positions": ("q", "v"), "scale": 0.6, "mlp_bottleneck": 5}),
    ("bapat", "patt", {"bottleneck": 6, "positions": ("k",), "learnable_scale": True}),
    ("bapat", "adaptmlp", {"bottleneck": 5, "scale": 0.3}),
    ("bapat", "linear", {}),
    ("lora", "lora", {"rank": 3, "alpha": 6.0, "targets": ("k", "v")}),
    ("lora", "lora", {"rank": 4}),
]


@pytest.fixture(scope="module")
def runners(tiny_graphs: dict[str, Path]) -> dict[str, Runner]:
    return {family: Runner(path) for family, path in tiny_graphs.items()}


@pytest.mark.parametrize(("family", "method", "options"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_numpy_folding_matches_the_banks(runners: dict[str, Runner], family: str, method: str, options: dict) -> None:
    """The edge folds scales in numpy; the exporter (and the server) with bank_tasks.decode_task: same feeds."""
    _, data = make_adapter(method, options)
    backbone = create_backbone(TINY)
    edge = graph_feeds(runners[family].info, read_adapter(data))
    cloud = task_feeds(make_layout(backbone, family), decode_adapter(backbone, data))
    assert edge.keys() == cloud.keys()
    for name, value in edge.items():
        np.testing.assert_allclose(value, cloud[name].numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize(("family", "method", "options"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_onnx_matches_torch_on_a_real_mp4(
    runners: dict[str, Runner], mp4_clip: Path, family: str, method: str, options: dict
) -> None:
    model, data = make_adapter(method, options, task="demo")
    runner = runners[family]
    response = runner.predict(mp4_clip, read_adapter(data), topk=2, version=3)
    x = load_clip(mp4_clip, runner.input_spec)[None]  # the same preprocessing the runner used
    with torch.no_grad():
        reference = model(torch.from_numpy(x))[0].numpy()  # type: ignore[operator]
    got = runner.logits(x, data)[0]
    assert np.abs(got - reference).max() <= 1e-3
    assert response.predictions[0].index == int(reference.argmax())
    assert response.predictions[0].label == LABELS[int(reference.argmax())]
    assert (response.task, response.version, len(response.predictions)) == ("demo", 3, 2)
    assert response.adapter_sha256 == read_adapter(data).sha256


def test_onnx_matches_the_serving_bank_for_a_mixed_batch(runners: dict[str, Runner]) -> None:
    """Clips of two tasks: the bank's mixed forward and the graph (one task per call) agree."""
    (_, bapat), (_, lora) = make_adapter(*CASES[0][1:]), make_adapter(*CASES[4][1:])
    bank = AdapterBank(create_backbone(TINY))
    bank.load("a", 1, bapat)
    bank.load("b", 1, lora)
    spec = runners["bapat"].input_spec
    clips = np.random.default_rng(0).standard_normal((4, 3, spec.num_frames, spec.size, spec.size), np.float32)
    served = bank.forward(torch.from_numpy(clips), [("a", 1), ("b", 1), ("a", 1), ("b", 1)])
    onnx_a = runners["bapat"].logits(clips[[0, 2]], bapat)  # dynamic batch: 2 clips in one run
    onnx_b = runners["lora"].logits(clips[[1, 3]], lora)
    for got, want in zip([onnx_a[0], onnx_b[0], onnx_a[1], onnx_b[1]], served, strict=True):
        assert isinstance(want, torch.Tensor)
        assert np.abs(got - want.numpy()).max() <= 1e-3 and got.argmax() == int(want.argmax())


def test_graph_metadata_and_dynamic_axes(tiny_graphs: dict[str, Path]) -> None:
    import onnx

    proto = onnx.load(str(tiny_graphs["bapat"]), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    backbone = create_backbone(TINY)
    assert meta["backbone"] == TINY and meta["backbone_sha256"] == backbone.sha256() and meta["family"] == "bapat"
    assert json.loads(meta["input_spec"]) == backbone.input_spec.model_dump(mode="json")
    names = json.loads(meta["input_names"])
    assert (
        names == [i.name for i in proto.graph.input]
        and names[0] == "clip"
        and names[-2:] == ["head.weight", "head.bias"]
    )
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert isinstance(dims["clip"][0], str)  # batch
    assert isinstance(dims["blocks.0.patt.down.weight"][0], str) and dims["blocks.0.patt.up.weight"][0] == 3 * 64
    assert isinstance(dims["blocks.1.adaptmlp.up.weight"][1], str) and isinstance(dims["head.weight"][0], str)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # one file


def test_refusals_are_clear(runners: dict[str, Runner]) -> None:
    _, lora = make_adapter("lora", {"rank": 2})
    with pytest.raises(IncompatibleAdapter, match="family"):
        runners["bapat"].logits(np.zeros((1, 3, 4, 32, 32), np.float32), lora)
    _, bitfit = make_adapter("bitfit", {})
    with pytest.raises(IncompatibleAdapter, match="via the server"):
        runners["bapat"].logits(np.zeros((1, 3, 4, 32, 32), np.float32), bitfit)
    _, other = make_adapter("bapat", {"bottleneck": 4}, backbone="vit-tiny")
    with pytest.raises(IncompatibleAdapter, match="backbone"):
        runners["bapat"].logits(np.zeros((1, 3, 4, 32, 32), np.float32), other)
    with pytest.raises(InvalidRequest):
        make_layout(create_backbone("swin3d-tiny"), "bapat")
    with pytest.raises(InvalidRequest):
        make_layout(create_backbone(TINY), "prefix")


def test_demo_backbone_parity(tmp_path: Path, mp4_clip: Path) -> None:
    """The demo-sized ViT (C=192, depth 6, 8×112²): export + one clip, bapat d=128 as served."""
    from vpetl.formats.onnx import export_backbone_onnx

    info = export_backbone_onnx(create_backbone("vpetl-demo"), "bapat", tmp_path / "demo.onnx")
    model, data = make_adapter("bapat", {"bottleneck": 128}, backbone="vpetl-demo")
    runner = Runner(tmp_path / "demo.onnx")
    x = load_clip(mp4_clip, runner.input_spec)[None]
    with torch.no_grad():
        reference = model(torch.from_numpy(x))[0].numpy()  # type: ignore[operator]
    got = runner.logits(x, data)[0]
    assert np.abs(got - reference).max() <= 1e-3 and got.argmax() == reference.argmax()
    assert info["size"] == (tmp_path / "demo.onnx").stat().st_size


def test_adapter_is_bound_once_per_switch(tiny_graphs: dict[str, Path]) -> None:
    """IOBinding: repeated calls with one adapter re-bind nothing; a switch (other task, other class count, other
    batch) re-binds once and gives what a plain ``session.run`` with every input fed gives."""
    runner = Runner(tiny_graphs["bapat"], threads=2)
    _, first = make_adapter(*CASES[0][1:], task="a")
    _, second = make_adapter("patt", {"bottleneck": 3}, task="b", seed=5, labels=["x", "y", "z"])
    spec = runner.input_spec
    clips = np.random.default_rng(1).standard_normal((3, 3, spec.num_frames, spec.size, spec.size), np.float32)

    def plain(data: bytes, x: np.ndarray) -> np.ndarray:
        feeds = graph_feeds(runner.info, read_adapter(data))
        return runner.session.run(["logits"], {"clip": x, **feeds})[0]

    for _ in range(3):
        np.testing.assert_allclose(runner.logits(clips[:1], first), plain(first, clips[:1]), atol=1e-5)
    assert runner.binds == 1
    got = runner.logits(clips, second)  # another task, 3 classes, batch 3
    assert got.shape == (3, 3) and runner.binds == 2
    np.testing.assert_allclose(got, plain(second, clips), atol=1e-5)
    np.testing.assert_allclose(runner.logits(clips[1:], first), plain(first, clips[1:]), atol=1e-5)
    assert runner.binds == 3  # back to the first task: bound again, its folded tensors reused


def test_optimized_graph_cache_gives_the_same_logits(tiny_graphs: dict[str, Path], tmp_path: Path) -> None:
    from edge_client.runner import optimize_graph, read_graph_info

    optimized = optimize_graph(tiny_graphs["bapat"], tmp_path / "bapat.opt.onnx", threads=2)
    assert read_graph_info(optimized) == read_graph_info(tiny_graphs["bapat"])  # the metadata survives
    _, data = make_adapter(*CASES[0][1:])
    spec = read_graph_info(optimized).input_spec
    x = np.random.default_rng(2).standard_normal((2, 3, spec.num_frames, spec.size, spec.size), np.float32)
    want = Runner(tiny_graphs["bapat"], threads=2).logits(x, data)
    np.testing.assert_allclose(Runner(optimized, threads=2, preoptimized=True).logits(x, data), want, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))
