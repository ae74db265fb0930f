"""int8 variants of the edge graph (onnxruntime's quantization tools) and their agreement with the fp32 graph.

``quantize_graph`` runs onnxruntime's **dynamic** int8 quantization: the frozen backbone's MatMul weights become
int8 initializers (per output channel), activations are quantized per call, so no calibration set is needed and
one graph still serves every task. Only MatMuls whose weight is a constant are quantized (``MatMulConstBOnly``):
the adapter weights stay float graph inputs, so an int8 graph takes exactly the adapter files an fp32 one does,
and the head (a Gemm over graph inputs) stays float.

``agreement`` measures a variant against the fp32 graph on real clips: top-1 agreement and the largest logit
difference, with the same adapter fed to both. The server runs it on a task's validation clips
(``GET /backbone/onnx/agreement``) and ``vpetl-edge`` prints it when it downloads a variant.

Needs ``onnx`` and ``onnxruntime`` (the cloud extra); no torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vpetl.errors import InvalidRequest

logger = logging.getLogger(__name__)

QUANT_MODES = ("fp32", "int8")


def check_quant(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise InvalidRequest(f"unknown quantization {mode!r}; choose one of: {', '.join(QUANT_MODES)}")
    return mode


def _metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _set_metadata(path: Path, extra: Mapping[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    have = {p.key: p for p in proto.metadata_props}
    for key, value in extra.items():
        entry = have.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))


class _DropPreprocessHint(logging.Filter):
    """onnxruntime's "consider to run pre-processing" hint: symbolic shape inference that our graphs (static
    shapes but the batch and the adapter widths) do not need; the rest of its logging passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_graph(src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: str = "int8") -> dict[str, Any]:
    """Write ``src`` (an fp32 edge graph) quantized to ``dst`` (atomically); returns the metadata plus ``size``.

    The metadata of ``src`` is kept (the runner needs the layout and input names) and ``quant`` is added, with the
    sha256 of the fp32 graph it came from.
    """
    import hashlib

    from onnxruntime.quantization import QuantType, quantize_dynamic

    check_quant(mode)
    if mode == "fp32":
        raise InvalidRequest("fp32 is the exported graph itself; nothing to quantize")
    src, dst = Path(src), Path(dst)
    meta = _metadata(src)
    if meta.get("quant", "fp32") != "fp32":
        raise InvalidRequest(f"{src.name} is already quantized ({meta['quant']})")
    digest = hashlib.sha256()
    with src.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    quiet = _DropPreprocessHint()
    logging.getLogger().addFilter(quiet)  # the quantizer logs this hint on the root logger on every call
    try:
        quantize_dynamic(
            src, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True,
            extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip
        _set_metadata(tmp, {"quant": mode, "quantized_from_sha256": digest.hexdigest()})
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        logging.getLogger().removeFilter(quiet)
        tmp.unlink(missing_ok=True)
    logger.info("quantized %s to %s (%s): %d -> %d bytes", src, dst, mode, src.stat().st_size, dst.stat().st_size)
    return {**_metadata(dst), "size": dst.stat().st_size, "path": str(dst)}


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def agreement(
    reference: str | os.PathLike[str],
    variant: str | os.PathLike[str],
    clips: Iterable[np.ndarray],
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int = 2,
) -> dict[str, Any]:
    """Top-1 agreement of ``variant`` with the fp32 ``reference`` graph on ``clips`` ((3, T, H, W) each).

    ``feeds`` are the adapter inputs of the reference graph (see ``edge_client.runner.graph_feeds``); the variant
    gets the subset it takes (none for a merged graph). Returns ``clips``, ``agree``, ``agreement`` (None for no
    clips) and ``max_abs_logit_diff``.
    """
    ref, var = _session(reference, threads), _session(variant, threads)
    var_inputs = {i.name for i in var.get_inputs()}
    agree = total = 0
    worst = 0.0
    for clip in clips:
        x = np.ascontiguousarray(clip[None], dtype=np.float32)  # (1, 3, T, H, W)
        want = ref.run(["logits"], {"clip": x, **feeds})[0][0]
        got = var.run(["logits"], {"clip": x, **{k: v for k, v in feeds.items() if k in var_inputs}})[0][0]
        agree += int(int(got.argmax()) == int(want.argmax()))
        total += 1
        worst = max(worst, float(np.abs(got - want).max()))
    return {
        "clips": total,
        "agree": agree,
        "agreement": agree / total if total else None,
        "max_abs_logit_diff": worst if total else None,
    }


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The variant facts of a graph file: quant, merged task, family, size (for logs and the CLI)."""
    meta = _metadata(path)
    return {
        "family": meta.get("family"),
        "quant": meta.get("quant", "fp32"),
        "merged_task": meta.get("merged_task"),
        "inputs": len(json.loads(meta.get("input_names", "[]"))),
        "size": Path(path).stat().st_size,
    }


__all__ = ["QUANT_MODES", "agreement", "check_quant", "describe", "quantize_graph"]
