"""Variants of the edge graph: dynamic int8 (onnxruntime's quantizer) and single-task merged graphs, each checked
against torch (the PetlModel the adapter came from), not against another ONNX graph."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "edge_client"))

from edge_helpers import TINY, make_adapter  # noqa: E402

from edge_client.runner import Runner, graph_feeds  # noqa: E402
from vpetl.artifact import read_adapter  # noqa: E402
from vpetl.backbones import create_backbone  # noqa: E402
from vpetl.errors import IncompatibleAdapter, InvalidRequest  # noqa: E402
from vpetl.formats.onnx import export_backbone_onnx  # noqa: E402
from vpetl.formats.onnx_merge import export_merged_onnx  # noqa: E402
from vpetl.formats.onnx_quant import agreement, quantize_graph  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bapat_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("variants") / "bapat.onnx"
    export_backbone_onnx(create_backbone(TINY), "bapat", path, check=False)
    return path


def _clips(n: int, seed: int = 0) -> np.ndarray:
    spec = create_backbone(TINY).input_spec
    return np.random.default_rng(seed).standard_normal((n, 3, spec.num_frames, spec.size, spec.size), np.float32)


def _torch_logits(model: object, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # type: ignore[operator]


def test_int8_graph_is_smaller_keeps_the_metadata_and_tracks_torch(bapat_graph: Path, tmp_path: Path) -> None:
    import onnx

    info = quantize_graph(bapat_graph, tmp_path / "int8.onnx")
    assert info["quant"] == "int8" and info["size"] < 0.75 * bapat_graph.stat().st_size  # ViT-B: 0.25 (BENCHMARKS)
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    float_matmuls = [
        n
        for n in proto.graph.node
        if n.op_type == "MatMul" and any(i in {t.name for t in proto.graph.initializer} for i in n.input)
    ]
    # every backbone MatMul weight is int8 now (2 blocks × qkv, proj, fc1, fc2 + patch embed); none stays float
    assert len(int8) >= 2 * 4 and not float_matmuls
    runner = Runner(tmp_path / "int8.onnx", threads=2)
    assert runner.info.quant == "int8" and runner.info.input_names == Runner(bapat_graph).info.input_names
    model, data = make_adapter("bapat", {"bottleneck": 8}, seed=3)
    x = _clips(8)
    want, got = _torch_logits(model, x), runner.logits(x, data)
    # int8 weights move the logits, but by a small fraction of their range
    assert 0 < np.abs(got - want).max() <= 0.1 * np.abs(want).max()
    with pytest.raises(InvalidRequest, match="already quantized"):
        quantize_graph(tmp_path / "int8.onnx", tmp_path / "again.onnx")
    assert not list(tmp_path.glob(".*.tmp"))


def test_agreement_counts_top1_matches(bapat_graph: Path, tmp_path: Path) -> None:
    quantize_graph(bapat_graph, tmp_path / "int8.onnx")
    _, data = make_adapter("bapat", {"bottleneck": 8}, seed=4)
    feeds = graph_feeds(Runner(bapat_graph).info, read_adapter(data))
    clips = list(_clips(6, seed=1))
    same = agreement(bapat_graph, bapat_graph, clips, feeds)
    assert same == {"clips": 6, "agree": 6, "agreement": 1.0, "max_abs_logit_diff": 0.0}
    got = agreement(bapat_graph, tmp_path / "int8.onnx", clips, feeds)
    # one clip per call, as agreement() runs them: dynamic int8 scales activations per call, so a batch differs
    int8 = np.concatenate([Runner(tmp_path / "int8.onnx").logits(c[None], data) for c in clips])
    fp32 = np.concatenate([Runner(bapat_graph).logits(c[None], data) for c in clips])
    assert got["agree"] == int((int8.argmax(1) == fp32.argmax(1)).sum())
    assert got["max_abs_logit_diff"] == pytest.approx(float(np.abs(int8 - fp32).max()), rel=1e-5)
    assert agreement(bapat_graph, bapat_graph, [], feeds)["agreement"] is None


MERGED = [
    ("lora", {"rank": 3, "alpha": 6.0, "targets": ("q", "v", "fc1")}, "weights"),  # fc1: no shared graph has it
    ("bitfit", {}, "weights"),  # no shared edge graph runs BitFit at all
    ("bapat", {"bottleneck": 8, "positions": ("q", "v")}, "initializers"),
    ("adaptmlp", {"bottleneck": 5, "scale": 0.3}, "initializers"),
]


@pytest.mark.parametrize(("method", "options", "how"), MERGED, ids=[m[0] for m in MERGED])
def test_merged_graph_takes_only_the_clip_and_matches_torch(
    tmp_path: Path, method: str, options: dict, how: str
) -> None:
    model, data = make_adapter(method, options, task="solo", seed=2)
    backbone = create_backbone(TINY)
    info = export_merged_onnx(backbone, data, tmp_path / "merged.onnx")
    assert info["merge"] == how and info["merged_task"] == "solo"
    runner = Runner(tmp_path / "merged.onnx", threads=2)
    assert [i.name for i in runner.session.get_inputs()] == ["clip"]
    assert runner.info.merged_adapter_sha256 == read_adapter(data).sha256
    assert runner.info.backbone_sha256 == backbone.sha256()  # the frozen backbone's, not the merged copy's
    x = _clips(3, seed=5)
    np.testing.assert_allclose(runner.logits(x, data), _torch_logits(model, x), atol=1e-4)
    _, other = make_adapter(method, options, task="solo", seed=9)
    with pytest.raises(IncompatibleAdapter, match="merged in"):
        runner.logits(x, other)


def test_merge_refuses_methods_without_an_edge_graph(tmp_path: Path) -> None:
    _, data = make_adapter("prefix", {"num_tokens": 2, "bottleneck": 4})
    with pytest.raises(IncompatibleAdapter, match="no edge graph"):
        export_merged_onnx(create_backbone(TINY), data, tmp_path / "m.onnx")
    _, other = make_adapter("lora", {"rank": 2}, backbone="vit-tiny")
    with pytest.raises(IncompatibleAdapter):
        export_merged_onnx(create_backbone(TINY), other, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
