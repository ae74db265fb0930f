"""How a batch of clips reaches the accelerator and its logits come back: the bank's device data path.

On CUDA a forward pays for more than its matmuls: a pageable host → device copy (the driver stages it through a
bounce buffer and blocks the host), the default stream (shared with every other user of the process), fp32 matmuls
without TF32, and one kernel launch per op at small batches. The settings here are what serving systems do about
each (SERVING.md: vLLM's pinned input buffers and CUDA-graph batch buckets, Punica's padded batch sizes):

- ``pinned``: the batch is stacked straight into a page-locked host buffer (reused per shape) and copied with
  ``non_blocking=True``, so the copy is a DMA the GPU runs while the host goes on;
- ``stream``: the bank's forwards run on a CUDA stream of their own;
- ``tf32``: fp32 matmuls and convolutions may use TF32 tensor cores (bf16/fp16 serving is unaffected);
- ``buckets``: a batch of B clips is padded to the smallest bucket >= B (repeating its last clip, whose logits are
  dropped), so the backbone sees a handful of batch shapes: what ``torch.compile`` and CUDA graphs need to reuse
  their work instead of recompiling/recapturing per size;
- ``compile``: the backbone's forward goes through ``torch.compile`` (off by default: measured first, see
  ``benchmarks/gpu.py``).

On CPU only ``buckets`` and ``compile`` change anything; the others are no-ops there, so one setting serves a
mixed CPU/GPU fleet.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class DataPath:
    """The bank's device data path settings (see the module docstring)."""

    pinned: bool = True
    stream: bool = True
    tf32: bool = True
    buckets: tuple[int, ...] = ()
    compile: bool = False

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.buckets):
            raise ValueError(f"batch buckets must be >= 1, got {self.buckets}")
        object.__setattr__(self, "buckets", tuple(sorted(set(self.buckets))))

    def bucket(self, batch: int) -> int:
        """The padded batch size for ``batch`` clips: the smallest bucket that holds it; a batch larger than every
        bucket runs unpadded (one more shape is better than refusing it)."""
        i = bisect.bisect_left(self.buckets, batch)
        return self.buckets[i] if i < len(self.buckets) else batch


def parse_buckets(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"1,8,32"`` (or a sequence of ints) -> (1, 8, 32); empty/None -> () (no padding)."""
    if text is None:
        return ()
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"batch buckets are comma-separated integers such as 1,8,32, not {text!r}") from None
    else:
        values = [int(v) for v in text]
    return DataPath(buckets=tuple(values)).buckets


class Stager:
    """Host staging and device placement for one bank.

    ``stack`` builds the batch tensor: on CUDA with ``pinned`` it is written straight into a reused page-locked
    buffer (one per batch shape, a few kept), elsewhere it is a plain ``torch.stack``. ``to_device`` copies it with
    ``non_blocking`` when the source is pinned. Reusing a pinned buffer is safe because the bank's forwards are
    serialised and each ends by copying its logits back to the host, which waits for the stream, and with it for
    the previous copy out of that buffer.
    """

    MAX_BUFFERS = 4  # distinct batch shapes kept pinned (buckets make this a handful)

    def __init__(self, device: torch.device, path: DataPath) -> None:
        self.device, self.path = device, path
        self.cuda = device.type == "cuda"
        self.pin = self.cuda and path.pinned
        self._buffers: OrderedDict[tuple[tuple[int, ...], torch.dtype], Tensor] = OrderedDict()
        self.stream = torch.cuda.Stream(device) if self.cuda and path.stream else None
        if self.cuda and path.tf32:
            # Process-wide switches; a replica process serves one bank, so this is the replica's policy.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def stack(self, clips: Sequence[Tensor]) -> Tensor:
        """(C, T, H, W) clips -> (B, C, T, H, W), pinned when the path says so."""
        if not self.pin:
            return torch.stack(list(clips))
        shape = (len(clips), *clips[0].shape)
        key = (shape, clips[0].dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = torch.empty(shape, dtype=clips[0].dtype, pin_memory=True)
            self._buffers[key] = buffer
            while len(self._buffers) > self.MAX_BUFFERS:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(key)
        torch.stack(list(clips), out=buffer)
        return buffer

    def to_device(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """Host batch -> device batch in the serving dtype (the cast runs on the device, after the copy)."""
        if x.device == self.device:
            return x.to(dtype)
        return x.to(self.device, non_blocking=x.is_pinned()).to(dtype)

    def context(self) -> torch.cuda.StreamContext | _NullContext:
        """``with stager.context():`` runs the forward on the bank's own stream (a no-op off CUDA)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def pad_to_bucket(x: Tensor, bucket: int) -> Tensor:
    """Pad a (B, …) batch to ``bucket`` rows by repeating its last clip. The bank gives the extra rows the last
    clip's task, so no new adapter joins the batch, and drops their logits; a batch already at or above the bucket
    is returned as it is."""
    extra = bucket - x.shape[0]
    if extra <= 0:
        return x
    pad = x[-1:].expand(extra, *x.shape[1:])  # (extra, C, T, H, W): views of the last clip
    return torch.cat([x, pad])  # (bucket, C, T, H, W)
