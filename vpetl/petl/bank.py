"""AdapterBank: the mixed-task engine. One frozen backbone, any number of task adapters, and
``forward(clips, keys)`` that runs ONE backbone forward for a batch whose clips belong to different tasks.

How (DESIGN.md "The mixed-task engine"):
1. the batch is sorted by task so each task's clips are contiguous (outputs are un-sorted at the end);
2. every block carries one :class:`BankBlockAdapter`; the bank gives it a plan with each task's canonical weights
   (single task: 2-D weights; several: per-segment weights, or per-sample stacks in ``gather`` mode);
3. the frozen GEMMs run once for the whole batch; adapter terms come from ``vpetl.petl.functional``, the functions
   the trainable modules call, so training and serving cannot drift;
4. each task's head (any number of classes) runs on its own segment of the pooled features.
Tasks whose method changes the token count or sits where no hook reaches (prefix, VPT, DualPath, BitFit on Swin)
run as per-task sub-batches inside the same call, with their own adapters attached for the sub-batch.

Adapters come in as artifact bytes (validated: format, shapes for the method, backbone hash) and live in a
byte-budget LRU keyed by (task, version); a running batch pins what it uses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vpetl.artifact import check_compatible, read_adapter
from vpetl.backbones.base import Backbone
from vpetl.errors import IncompatibleAdapter, InvalidRequest, UnknownTask, UnsupportedMethod, VpetlError
from vpetl.petl import functional as PF
from vpetl.petl.bank_adapter import BankBlockAdapter, BlockPlan, Part
from vpetl.petl.bank_tasks import TaskAdapter, decode_task, expected_shapes
from vpetl.petl.cache import ByteBudgetLRU
from vpetl.petl.data_path import DataPath, Stager, pad_to_bucket
from vpetl.petl.lora import LORA_TARGETS
from vpetl.petl.registry import method_config_from_dict

Tensor = torch.Tensor
Key = tuple[str, int]

STRATEGIES = ("segment", "gather")
# Serving dtypes (`vpetl serve --dtype`). fp16 runs on CPU in torch 2.13 too (slowly; BENCHMARKS.md "Engine").
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``fp32|bf16|fp16`` (or a torch float dtype) -> the torch dtype; InvalidRequest for anything else."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InvalidRequest(f"unsupported serving dtype {name}; use one of {', '.join(DTYPES)}")
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidRequest(f"unsupported serving dtype {name!r}; use one of {', '.join(DTYPES)}") from None


@dataclass
class Prepared:
    """Per-block plans for one ordered task set (reused across batches with the same set)."""

    keys: tuple[Key, ...]
    counts: tuple[int, ...]
    plans: list[BlockPlan]


class AdapterBank:
    """Serve many task adapters on one frozen backbone.

    Args:
        backbone: the frozen backbone (held once; the bank attaches one hook adapter to each block).
        budget_bytes: the adapter cache's byte budget.
        strategy: ``gather`` (per-sample stacks + bmm; the faster in benchmarks/engine.py, BENCHMARKS.md) or
            ``segment`` (sort by task, one GEMM per segment).
        dtype: serving dtype (``fp32|bf16|fp16`` or a torch dtype); the backbone is cast in place, adapters are
            cast once at load, clips before the forward. None keeps the backbone's own dtype. Logits come back
            in fp32 whatever the dtype.
        data_path: pinned staging, own CUDA stream, TF32, batch buckets, torch.compile
            (:mod:`vpetl.petl.data_path`; default: pinned + stream + TF32 on CUDA, no buckets, no compile).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        budget_bytes: int = 256 << 20,
        strategy: str = "gather",
        dtype: str | torch.dtype | None = None,
        data_path: DataPath | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        # The hash identifies the backbone adapters were trained on (fp32): take it before any cast. sha256() caches
        # it on the module, so a later backbone.sha256() (without refresh) also keeps the fp32 identity.
        self.backbone_sha256 = backbone.sha256()
        if dtype is not None:
            backbone = backbone.to(parse_dtype(dtype))
        self.backbone = backbone.eval()
        self.strategy = strategy
        ref = next(backbone.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        self.data_path = data_path or DataPath()
        self.stager = Stager(self.device, self.data_path)
        # torch.compile wraps the forward only: parameters, hooks and plans stay those of self.backbone.
        self._backbone_forward = torch.compile(self.backbone) if self.data_path.compile else self.backbone
        self.blocks = backbone.adaptable_blocks()
        self.hooks: list[BankBlockAdapter] = []
        for block in self.blocks:
            if len(block.adapters):
                raise ValueError("the backbone already carries adapters; give the bank its own backbone")
            hook = BankBlockAdapter()
            block.adapters["bank"] = hook
            self.hooks.append(hook)
        self.cache: ByteBudgetLRU[TaskAdapter] = ByteBudgetLRU(budget_bytes, on_evict=self._on_evict)
        self._prepared: OrderedDict[tuple[Key, ...], Prepared] = OrderedDict()
        self._prepared_max = 8
        self._forward_lock = threading.Lock()
        self._prep_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- loading
    def load(self, task: str, version: int, data: bytes) -> TaskAdapter:
        """Validate artifact bytes against this backbone and cache the decoded adapter under (task, version).

        Validation happens before anything is cached: a bad file raises and leaves the cache unchanged.
        Raises:
            InvalidAdapter: a malformed file. IncompatibleAdapter: another backbone, wrong shapes, unknown method.
        """
        adapter = self.decode(task, version, data)
        self.cache.put(adapter.key, adapter, adapter.nbytes)
        return adapter

    def decode(self, task: str, version: int, data: bytes) -> TaskAdapter:
        """Every check and the decoding of :meth:`load`, without caching: what the server runs on an upload
        before storing it, so a file it accepts is one it can serve. Raises as :meth:`load`."""
        header = read_adapter(data, backbone_sha256=self.backbone_sha256, backbone_name=self.backbone.name)
        try:
            config = method_config_from_dict(header.meta.method_config, error=IncompatibleAdapter)
            shapes = expected_shapes(self.backbone, config, header.meta.num_classes)
        except UnsupportedMethod as e:
            raise IncompatibleAdapter(e.message) from e
        except VpetlError as e:
            raise IncompatibleAdapter(f"adapter for {task!r}: {e.message}") from e
        check_compatible(header, expected_shapes=shapes)
        return decode_task(
            self.backbone, task, version, header.sha256, header.meta, header.tensors, self.device, self.dtype
        )

    def get(self, task: str, version: int) -> TaskAdapter | None:
        return self.cache.get((task, version))

    def evict(self, task: str, version: int) -> bool:
        return self.cache.discard((task, version))

    def _on_evict(self, key: object, value: TaskAdapter) -> None:
        with self._prep_lock:
            for k in [k for k in self._prepared if key in k]:
                del self._prepared[k]

    # ----------------------------------------------------------------------------------------- planning
    def _prepare(self, adapters: Sequence[TaskAdapter], counts: Sequence[int]) -> Prepared:
        keys = tuple(a.key for a in adapters)
        cache_key = keys + (("#counts",) + tuple(counts),) if self.strategy == "gather" else keys  # type: ignore[operator]
        with self._prep_lock:
            hit = self._prepared.get(cache_key)  # type: ignore[arg-type]
            if hit is not None:
                self._prepared.move_to_end(cache_key)  # type: ignore[arg-type]
                return hit
        plans: list[BlockPlan] = []
        single = len(adapters) == 1
        for index in range(len(self.blocks)):
            if single or self.strategy == "segment":
                parts, start = [], 0
                for adapter, n in zip(adapters, counts, strict=True):
                    comps = adapter.blocks.get(index, {})
                    if comps:
                        parts.append(Part(start, start + n, comps, adapter.patt_positions, adapter.lora_targets))
                    start += n
                plans.append(BlockPlan("single" if single else "segment", parts))
            else:
                plans.append(_gather_plan(adapters, counts, index))
        prepared = Prepared(keys, tuple(counts), plans)
        with self._prep_lock:
            self._prepared[cache_key] = prepared  # type: ignore[index]
            while len(self._prepared) > self._prepared_max:
                self._prepared.popitem(last=False)
        return prepared

    # ----------------------------------------------------------------------------------------- forward
    @torch.inference_mode()
    def forward(self, clips: Tensor, keys: Sequence[Key]) -> list[Tensor | VpetlError]:
        """Logits for each clip under its own (task, version) adapter; one result per clip, in order.

        A clip whose adapter is not loaded gets an ``UnknownTask`` error in its slot; the others still run.
        """
        if clips.shape[0] != len(keys):
            raise ValueError(f"{clips.shape[0]} clips but {len(keys)} keys")
        results: list[Tensor | VpetlError] = [UnknownTask("unset")] * len(keys)
        adapters: dict[Key, TaskAdapter] = {}
        for key in dict.fromkeys(keys):
            adapter = self.cache.get(key)
            if adapter is not None:
                adapters[key] = adapter
        self.cache.pin(adapters)
        try:
            with self._forward_lock, self.stager.context():
                if self.stager.stream is not None:  # adapters were loaded on the default stream: wait for them
                    self.stager.stream.wait_stream(torch.cuda.default_stream(self.device))
                clips = self.stager.to_device(clips, self.dtype)  # (B, 3, T, H, W): one copy, sorting on device
                order = sorted((i for i, k in enumerate(keys) if k in adapters), key=lambda i: keys[i])
                for i, k in enumerate(keys):
                    if k not in adapters:
                        results[i] = UnknownTask(f"adapter {k[0]!r} version {k[1]} is not loaded")
                mixed = [i for i in order if adapters[keys[i]].mixable]
                if mixed:
                    self._run_mixed(clips, keys, mixed, adapters, results)
                for key in dict.fromkeys(keys[i] for i in order if not adapters[keys[i]].mixable):
                    rows = [i for i in order if keys[i] == key]
                    self._run_sub_batch(clips, rows, adapters[key], results)
        finally:
            self.cache.unpin(adapters)
        return results

    def _run_mixed(
        self, clips: Tensor, keys: Sequence[Key], rows: list[int], adapters: dict[Key, TaskAdapter], out: list
    ) -> None:
        ordered_keys = list(dict.fromkeys(keys[i] for i in rows))
        counts = [sum(1 for i in rows if keys[i] == k) for k in ordered_keys]
        x = clips[rows] if rows != list(range(clips.shape[0])) else clips  # (B', 3, T, H, W), sorted by task
        bucket = self.data_path.bucket(len(rows))
        # The padded rows belong to the last task (their logits are dropped below); plans see the padded counts.
        padded = counts[:-1] + [counts[-1] + bucket - len(rows)] if bucket > len(rows) else counts
        if padded is not counts:
            x = pad_to_bucket(x, bucket)  # (bucket, 3, T, H, W)
        prepared = self._prepare([adapters[k] for k in ordered_keys], padded)
        for hook, plan in zip(self.hooks, prepared.plans, strict=True):
            hook.plan = plan
        try:
            features = self._backbone_forward(x)  # (B', F): the one backbone forward
        finally:
            for hook in self.hooks:
                hook.plan = None
        start = 0
        for key, n in zip(ordered_keys, counts, strict=True):
            adapter = adapters[key]
            f = features[start : start + n]
            if adapter.pooled_bias is not None:
                f = f + adapter.pooled_bias
            logits = PF.head(f, {"weight": adapter.head_weight, "bias": adapter.head_bias}).float()  # (n, K) fp32
            logits = logits.cpu()  # on an accelerator: waits for this forward (and with it the staged copy)
            for j, i in enumerate(rows[start : start + n]):
                out[i] = logits[j]
            start += n

    def _run_sub_batch(self, clips: Tensor, rows: list[int], adapter: TaskAdapter, out: list) -> None:
        """A task whose method cannot mix: attach its own adapters (and swap in-place parameters) for one forward."""
        assert adapter.method_obj is not None
        attached: list[tuple[int, str]] = []
        saved: dict[str, Tensor] = {}
        try:
            for index, module in adapter.detached:
                self.blocks[index].adapters[module.component] = module
                attached.append((index, module.component))
            for path, value in adapter.backbone_params.items():
                p = self.backbone.get_parameter(path)
                saved[path] = p.detach().clone()
                p.data.copy_(value)
            x = clips[rows]  # already on the device in the serving dtype (forward)
            features = adapter.method_obj.features(self.backbone, x)
            logits = PF.head(features, {"weight": adapter.head_weight, "bias": adapter.head_bias}).float().cpu()
            for j, i in enumerate(rows):
                out[i] = logits[j]
        finally:
            for index, component in attached:
                del self.blocks[index].adapters[component]
            for path, value in saved.items():
                self.backbone.get_parameter(path).data.copy_(value)


def _pad_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    if tuple(t.shape) == tuple(shape):
        return t
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _remap_slots(w: Tensor, have: Sequence[str], want: Sequence[str]) -> Tensor:
    """Rows of a PATT up projection laid out for ``have`` slots -> the ``want`` layout (zeros for absent slots)."""
    if tuple(have) == tuple(want):
        return w
    c = w.shape[0] // len(have)
    out = w.new_zeros((c * len(want), *w.shape[1:]))
    for j, slot in enumerate(have):
        i = list(want).index(slot)
        out[i * c : (i + 1) * c] = w[j * c : (j + 1) * c]
    return out


def _gather_plan(adapters: Sequence[TaskAdapter], counts: Sequence[int], index: int) -> BlockPlan:
    """Per-sample stacks (B, …) for one block: each task's tensors zero-padded to the widest, repeated per sample."""
    present: dict[str, None] = {}
    for a in adapters:
        for comp in a.blocks.get(index, {}):
            present.setdefault(comp, None)
    positions = tuple(s for s in "qkv" if any(s in a.patt_positions for a in adapters))
    targets = tuple(s for s in LORA_TARGETS if any(s in a.lora_targets for a in adapters))
    comps: dict[str, dict[str, Tensor]] = {}
    for comp in present:
        suffixes: dict[str, None] = {}
        per_task: list[dict[str, Tensor]] = []
        for a in adapters:
            w = dict(a.blocks.get(index, {}).get(comp, {}))
            if comp == "patt" and w:
                w["up.weight"] = _remap_slots(w["up.weight"], a.patt_positions, positions)
                w["up.bias"] = _remap_slots(w["up.bias"], a.patt_positions, positions)
            per_task.append(w)
            suffixes.update(dict.fromkeys(w))
        if comp == "lora":
            # A target only some tasks have gets zero A/B rows for the others below (the stack's shape comes from
            # the tasks that have it: fc1's A is (r, C) but fc2's is (r, H), so no other target's shape will do).
            suffixes = dict.fromkeys(f"{t}.{m}" for t in targets for m in "AB")
        stacked: dict[str, Tensor] = {}
        for suffix in suffixes:
            tensors = [w.get(suffix) for w in per_task]
            ref = next(t for t in tensors if t is not None)
            shape = [max(t.shape[d] for t in tensors if t is not None) for d in range(ref.dim())]
            rows = [_pad_to(t, shape) if t is not None else ref.new_zeros(shape) for t in tensors]
            per_task_stack = torch.stack(rows)  # (U, …)
            repeats = torch.tensor(list(counts), device=per_task_stack.device)
            stacked[suffix] = per_task_stack.repeat_interleave(repeats, dim=0)  # (B, …), sample order
        comps[comp] = stacked
    total = int(sum(counts))
    return BlockPlan("gather", [Part(0, total, comps, positions, targets)] if comps else [])
