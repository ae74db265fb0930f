"""Predict on the device with onnxruntime: the backbone graph loaded once, each task's adapter fed as inputs.

The graph (``vpetl export-onnx`` / ``GET /backbone/onnx``) takes the clip and the adapter tensors of one method
family as inputs (see ``vpetl/formats/onnx.py``), so switching tasks is a new IOBinding of the adapter's tensors —
the session is never rebuilt, and a call with the same task binds only the clip. Its ``metadata_props`` carry the
input spec, the backbone's name and sha256, the family and the layout, so the runner needs nothing else: clips are
preprocessed with :func:`vpetl.video.load_clip` under the graph's :class:`~vpetl.protocol.InputSpec` (the one the
backbone was trained with), and adapters are checked against the backbone hash before use.

Feeding an adapter: the graph takes weights in the server's canonical form, scales folded into the up projections
(``s·Up`` and ``s·b_up``; LoRA's ``α/r`` into B), exactly as ``vpetl.petl.bank_tasks.decode_task`` folds them. That
module needs torch, so :func:`graph_feeds` applies the same rules in numpy; a test pins it to ``decode_task`` for
every method the graphs take. Slots or targets the adapter lacks get zero rows, components it lacks get zero
weights of width 1: zeros add exactly nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpetl.artifact import AdapterFile, read_adapter
from vpetl.errors import IncompatibleAdapter, InvalidRequest
from vpetl.protocol import InputSpec, LabelScore, PredictionResponse, PredictionTiming
from vpetl.video import VideoSource, load_clip

logger = logging.getLogger(__name__)

QKV = ("q", "k", "v")
CLIP, LOGITS = "clip", "logits"
#: the adapter methods an edge graph can run, and the components each brings
METHOD_COMPONENTS: dict[str, tuple[str, ...]] = {
    "bapat": ("patt", "adaptmlp"),
    "patt": ("patt",),
    "adaptmlp": ("adaptmlp",),
    "lora": ("lora",),
    "linear": (),
}


@dataclass(frozen=True)
class GraphInfo:
    """What the graph's metadata says (see ``vpetl.formats.onnx.onnx_metadata``)."""

    backbone: str
    backbone_sha256: str
    family: str
    input_spec: InputSpec
    input_names: tuple[str, ...]
    components: tuple[str, ...]
    patt_positions: tuple[str, ...]
    lora_targets: tuple[str, ...]
    mlp_mode: str
    num_features: int
    block_dims: tuple[int, ...]
    quant: str = "fp32"  # "int8": weights quantized by vpetl.formats.onnx_quant
    merged_task: str | None = None  # a single-task graph: this task's adapter is folded into constants
    merged_adapter_sha256: str | None = None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], where: str = "graph") -> GraphInfo:
        try:
            layout = json.loads(meta["layout"])
            names = tuple(json.loads(meta["input_names"]))
            comps = tuple(c for c in ("patt", "adaptmlp", "lora") if any(f".{c}." in n for n in names))
            return cls(
                backbone=meta["backbone"],
                backbone_sha256=meta["backbone_sha256"],
                family=meta["family"],
                input_spec=InputSpec.model_validate_json(meta["input_spec"]),
                input_names=names,
                components=comps,
                patt_positions=tuple(layout.get("patt_positions", ())),
                lora_targets=tuple(layout.get("lora_targets", ())),
                mlp_mode=layout.get("mlp_mode", "parallel"),
                num_features=int(layout["num_features"]),
                block_dims=tuple(int(d) for d in layout["block_dims"]),
                quant=meta.get("quant", "fp32"),
                merged_task=meta.get("merged_task"),
                merged_adapter_sha256=meta.get("merged_adapter_sha256"),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise IncompatibleAdapter(f"{where}: not a vpetl backbone graph (metadata {e!s} missing or bad)") from e


# ----------------------------------------------------------------------------------------------- folding
def _scale_of(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key)
    return float(default if value is None else value)


def _split_blocks(tensors: Mapping[str, np.ndarray]) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for name, t in tensors.items():
        if name.startswith("blocks."):
            _, index, comp, suffix = name.split(".", 3)
            out.setdefault(int(index), {}).setdefault(comp, {})[suffix] = t
    return out


def _remap_rows(w: np.ndarray, have: tuple[str, ...], want: tuple[str, ...]) -> np.ndarray:
    """PATT up rows for the adapter's slots -> the graph's slots (zero rows where the adapter has none)."""
    c = w.shape[0] // len(have)
    out = np.zeros((c * len(want), *w.shape[1:]), dtype=np.float32)
    for j, slot in enumerate(have):
        i = want.index(slot)
        out[i * c : (i + 1) * c] = w[j * c : (j + 1) * c]
    return out


def graph_feeds(graph: GraphInfo, adapter: AdapterFile) -> dict[str, np.ndarray]:
    """The weight inputs (every graph input but ``clip``) for one adapter, scale-folded as the server's bank does.

    Raises:
        IncompatibleAdapter: another backbone, a method or setting the graph cannot express.
    """
    meta = adapter.meta
    where = f"adapter {meta.task!r} ({adapter.sha256[:12]})"
    if meta.backbone_sha256 != graph.backbone_sha256:
        raise IncompatibleAdapter(
            f"{where} was trained on backbone {meta.backbone!r} ({meta.backbone_sha256[:12]}…) but the local graph is "
            f"{graph.backbone!r} ({graph.backbone_sha256[:12]}…); sync the backbone graph again"
        )
    method, config = meta.method, dict(meta.method_config)
    if method not in METHOD_COMPONENTS:
        raise IncompatibleAdapter(f"{where}: method {method!r} cannot run in an edge graph; predict via the server")
    missing = set(METHOD_COMPONENTS[method]) - set(graph.components)
    if missing:
        raise IncompatibleAdapter(
            f"{where}: a {method!r} adapter needs {sorted(missing)} inputs; the local graph is the {graph.family!r} "
            f"family (pull the {method!r} graph: GET /backbone/onnx?family={method})"
        )
    feeds: dict[str, np.ndarray] = {}
    widths = {"patt": 1, "adaptmlp": 1, "lora": 1}
    for index, comps in _split_blocks(adapter.tensors).items():
        for comp, w in comps.items():
            w = dict(w)
            if comp == "patt":
                learned = w.pop("scale", None)  # a learnable scale (one value; read back as shape (1,)); else s
                scale = float(learned.reshape(-1)[0]) if learned is not None else _scale_of(config, "scale", 0.8)
                positions = tuple(s for s in QKV if s in config.get("positions", ("k", "v")))
                if not set(positions) <= set(graph.patt_positions):
                    raise IncompatibleAdapter(
                        f"{where}: PATT slots {positions} are not all in the graph's {graph.patt_positions}"
                    )
                w["up.weight"] = _remap_rows(w["up.weight"] * np.float32(scale), positions, graph.patt_positions)
                w["up.bias"] = _remap_rows(w["up.bias"] * np.float32(scale), positions, graph.patt_positions)
                widths["patt"] = w["down.weight"].shape[0]
            elif comp == "adaptmlp":
                mode = config.get("mlp_mode") or config.get("mode") or "parallel"
                if mode != graph.mlp_mode:
                    raise IncompatibleAdapter(f"{where}: AdaptMLP {mode}; the graph runs {graph.mlp_mode}")
                scale = _scale_of(config, "mlp_scale", 0.1) if method == "bapat" else _scale_of(config, "scale", 0.1)
                w["up.weight"] = w["up.weight"] * np.float32(scale)
                w["up.bias"] = w["up.bias"] * np.float32(scale)
                widths["adaptmlp"] = w["down.weight"].shape[0]
            elif comp == "lora":
                rank = int(config.get("rank", next(t for k, t in w.items() if k.endswith(".A")).shape[0]))
                alpha = config.get("alpha")
                scaling = (float(alpha) if alpha is not None else float(rank)) / rank
                targets = {k.split(".")[0] for k in w}
                if not targets <= set(graph.lora_targets):
                    raise IncompatibleAdapter(
                        f"{where}: LoRA targets {sorted(targets)} are not all in the graph's {graph.lora_targets}"
                    )
                w = {k: (t * np.float32(scaling) if k.endswith(".B") else t) for k, t in w.items()}
                widths["lora"] = next(t for k, t in w.items() if k.endswith(".A")).shape[0]
            else:
                raise IncompatibleAdapter(f"{where}: component {comp!r} has no input in the graph")
            for suffix, t in w.items():
                feeds[f"blocks.{index}.{comp}.{suffix}"] = np.ascontiguousarray(t, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for name in graph.input_names[1:]:
        if name.startswith("head."):
            continue
        if name in feeds:
            out[name] = feeds[name]
            continue
        _, index, comp, suffix = name.split(".", 3)
        c, width = graph.block_dims[int(index)], widths[comp]
        rows = len(graph.patt_positions) * c if comp == "patt" else c
        shape = {"down.weight": (width, c), "down.bias": (width,), "up.weight": (rows, width), "up.bias": (rows,)}
        out[name] = np.zeros(shape.get(suffix) or ((width, c) if suffix.endswith(".A") else (c, width)), np.float32)
    head_w, head_b = adapter.tensors.get("head.weight"), adapter.tensors.get("head.bias")
    if head_w is None or head_b is None or head_w.shape[1] != graph.num_features:
        raise IncompatibleAdapter(f"{where}: the head does not read {graph.num_features}-d features")
    out["head.weight"], out["head.bias"] = head_w, head_b
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[LabelScore]:
    """The k best classes of one clip's logits, as the server reports them (softmax scores)."""
    probs = _softmax(logits.astype(np.float64))
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(labels)))]
    return [LabelScore(label=labels[i], index=int(i), score=float(probs[i])) for i in order]


# ------------------------------------------------------------------------------------------------ runner
def device_threads() -> int:
    """Intra-op threads for this device: the cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, *, spin: bool = False, preoptimized: bool = False) -> Any:
    """The onnxruntime options the runner uses (measured in ``benchmarks/edge.py``, "session options").

    - graph optimisation ``ORT_ENABLE_ALL`` (layout transforms and fused kernels: the fastest level measured), or
      none at all for a graph :func:`optimize_graph` already optimised (the session then loads in a fraction of
      the time);
    - ``threads`` intra-op threads (default: :func:`device_threads`), one inter-op thread (the graph is a chain);
    - the CPU memory arena and memory patterns on (ORT's defaults; turning the arena off measured slower);
    - no spinning unless asked: ORT's pool busy-waits after each run by default, and on a 2-core device that steals
      the CPU from the next clip's decode (and from anything else the device runs).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or device_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if preoptimized else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def optimize_graph(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, threads: int | None = None) -> Path:
    """Write ``src`` optimised by onnxruntime (``ORT_ENABLE_ALL``) to ``dst`` (atomically), once, at sync time.

    The result may hold kernels fused for this CPU (ORT's own warning), so it is a per-device cache file, never
    something to ship; a :class:`Runner` over it passes ``preoptimized=True``. The metadata is kept.
    """
    import onnxruntime as ort

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    options = session_options(threads)
    options.optimized_model_filepath = str(tmp)
    options.log_severity_level = 3  # the "hardware specific" warning is the point of a per-device cache
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


class Runner:
    """One onnxruntime session over the backbone graph; a task's adapter is bound once and reused.

    The adapter tensors of the task in use sit in ORT's IOBinding as OrtValues: a call binds only the clip, so the
    60+ adapter inputs are not handed to ORT afresh on every run. Switching to another adapter (another task or
    version: another sha256) re-binds them; its folded OrtValues are kept (LRU), so switching back costs only the
    bind. ``binds`` counts re-binds. One call at a time (the binding is shared state; a lock serialises callers).

    Args:
        graph: path to the ``.onnx`` file (or its bytes).
        threads: intra-op threads (default: the device's cores, :func:`device_threads`).
        max_adapters: prepared adapters kept (keyed by sha256), so a task switch costs no folding.
        spin: let idle intra-op threads busy-wait between runs (lower latency for back-to-back runs, at the cost
            of burning the cores the rest of the device needs).
        preoptimized: the graph was written by :func:`optimize_graph` on this device (skip optimising it again).
    """

    def __init__(
        self,
        graph: str | os.PathLike[str] | bytes,
        *,
        threads: int | None = None,
        max_adapters: int = 16,
        spin: bool = False,
        preoptimized: bool = False,
    ) -> None:
        import onnxruntime as ort  # here, not at import: `vpetl-edge --help` stays fast

        self._ort = ort
        options = session_options(threads, spin=spin, preoptimized=preoptimized)
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        where = "graph" if isinstance(graph, bytes) else str(graph)
        self.info = GraphInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, where)
        have = tuple(i.name for i in self.session.get_inputs())
        if set(have) != set(self.info.input_names):
            raise IncompatibleAdapter(f"{where}: inputs do not match its own metadata (a damaged file?)")
        self._feeds: OrderedDict[str, dict[str, Any]] = OrderedDict()  # sha256 -> {input name: OrtValue}
        self._max = max_adapters
        self._binding = self.session.io_binding()
        self._bound: str | None = None
        self._lock = threading.Lock()
        self.binds = 0

    @property
    def input_spec(self) -> InputSpec:
        return self.info.input_spec

    def prepare(self, adapter: AdapterFile) -> dict[str, np.ndarray]:
        """The adapter's feeds as numpy (validated against the graph and folded on first use; cached by sha256)."""
        return {name: value.numpy() for name, value in self._prepared(adapter).items()}

    def _prepared(self, adapter: AdapterFile) -> dict[str, Any]:
        hit = self._feeds.get(adapter.sha256)
        if hit is not None:
            self._feeds.move_to_end(adapter.sha256)
            return hit
        if self.info.merged_adapter_sha256 is not None:
            if adapter.sha256 != self.info.merged_adapter_sha256:
                raise IncompatibleAdapter(
                    f"this graph has task {self.info.merged_task!r}'s adapter "
                    f"({self.info.merged_adapter_sha256[:12]}…) merged in; adapter {adapter.sha256[:12]}… needs the "
                    "shared graph (sync without --merged)"
                )
            values: dict[str, Any] = {}
        else:
            if adapter.meta.input_spec != self.info.input_spec:
                logger.warning(
                    "adapter %s was trained with input spec %s; the graph's is %s (used)",
                    adapter.sha256[:12],
                    adapter.meta.input_spec,
                    self.info.input_spec,
                )
            feeds = graph_feeds(self.info, adapter)
            # Wrapped once as OrtValues (on CPU they share the arrays, which they keep alive): nothing per call.
            values = {name: self._ort.OrtValue.ortvalue_from_numpy(t) for name, t in feeds.items()}
        self._feeds[adapter.sha256] = values
        while len(self._feeds) > self._max:
            self._feeds.popitem(last=False)
        return values

    def activate(self, adapter: AdapterFile | bytes | str | Path) -> AdapterFile:
        """Bind ``adapter``'s tensors for the next calls (nothing happens when it is the one bound already)."""
        file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
        with self._lock:
            self._activate(file)
        return file

    def _activate(self, file: AdapterFile) -> None:
        if self._bound == file.sha256:
            return
        for name, value in self._prepared(file).items():
            self._binding.bind_ortvalue_input(name, value)
        self._bound = file.sha256
        self.binds += 1

    def preprocess(self, clip: VideoSource) -> np.ndarray:
        """A clip file or bytes -> (1, 3, T, H, W) float32 under the graph's input spec."""
        return load_clip(clip, self.info.input_spec)[None]

    def logits(self, clips: np.ndarray, adapter: AdapterFile | bytes | str | Path) -> np.ndarray:
        """(B, 3, T, H, W) preprocessed clips -> (B, K) logits under ``adapter``."""
        file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
        x = np.ascontiguousarray(clips, dtype=np.float32)
        with self._lock:
            self._activate(file)
            self._binding.bind_cpu_input(CLIP, x)
            # unallocated each call: the batch (and a task's class count) changes the output's shape
            self._binding.bind_output(LOGITS, "cpu")
            self.session.run_with_iobinding(self._binding)
            return self._binding.copy_outputs_to_cpu()[0]

    def predict(
        self,
        clip: VideoSource,
        adapter: AdapterFile | bytes | str | Path,
        *,
        topk: int = 5,
        version: int | None = None,
    ) -> PredictionResponse:
        """Top-k labels for one clip, in the server's response shape (``queue`` is 0; ``version`` defaults to 1
        when the adapter came without one)."""
        if topk < 1:
            raise InvalidRequest("topk must be >= 1")
        t0 = time.perf_counter()
        file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
        x = self.preprocess(clip)
        t1 = time.perf_counter()
        logits = self.logits(x, file)[0]
        t2 = time.perf_counter()
        return PredictionResponse(
            task=file.meta.task,
            version=version or 1,
            adapter_sha256=file.sha256,
            replica="device",
            predictions=top_k(logits, file.meta.labels, topk),
            timing_ms=PredictionTiming(
                decode=(t1 - t0) * 1e3, queue=0.0, model=(t2 - t1) * 1e3, total=(time.perf_counter() - t0) * 1e3
            ),
        )


def graph_family_fits(family_components: tuple[str, ...], method: str) -> bool:
    """Whether a graph with these components can run an adapter of ``method``."""
    return method in METHOD_COMPONENTS and set(METHOD_COMPONENTS[method]) <= set(family_components)


def read_graph_info(path: str | os.PathLike[str]) -> GraphInfo:
    """The metadata of a graph file without building a session for inference (onnxruntime parses it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return GraphInfo.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))


__all__ = [
    "GraphInfo",
    "METHOD_COMPONENTS",
    "Runner",
    "device_threads",
    "graph_family_fits",
    "graph_feeds",
    "optimize_graph",
    "read_graph_info",
    "session_options",
    "top_k",
]
