"""The adapter file: one ``.safetensors`` with the adapter tensors and a JSON config in its metadata (torch-free).

Layout (standard safetensors, so any safetensors reader can open it)::

    u64 little-endian header length N | N bytes of JSON header (space-padded to a multiple of 8) | raw tensor data
    header = {"__metadata__": {"format": "vpetl", "vpetl_config": "<AdapterMeta as JSON, sorted keys>"},
              "<tensor name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}

Tensor names are stable and carry no adapter name (``blocks.3.patt.down.weight``, ``head.weight``). The identity of
an adapter is the sha256 of the file bytes, so :func:`write_adapter` is byte-deterministic: tensors in sorted name
order, metadata keys sorted, a fixed JSON encoding. (``safetensors.numpy.save`` is not: its Rust side writes the
metadata map in hash order, which differs from process to process.)

Only numpy, safetensors' numpy API, pydantic and the stdlib are imported here: the edge client reads adapters with
this module and never imports torch. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.numpy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vpetl.errors import IncompatibleAdapter, InvalidAdapter, TooLarge
from vpetl.protocol import InputSpec

FORMAT_VERSION = 1
FORMAT_NAME = "vpetl"
MAX_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PEFT_TYPE_PREFIX = "VPETL_"

HEAD_WEIGHT = "head.weight"
HEAD_BIAS = "head.bias"

# safetensors dtype codes vpetl accepts. bfloat16 is refused on purpose: numpy cannot represent it, and the edge
# has no torch to convert it.
_READ_DTYPES: dict[str, np.dtype] = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_WRITE_DTYPES: dict[str, tuple[str, np.dtype]] = {
    "float32": ("F32", np.dtype("<f4")),
    "float16": ("F16", np.dtype("<f2")),
}
_DTYPE_NAMES = {"F16": "float16", "F32": "float32", "F64": "float64"}


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AdapterMeta(BaseModel):
    """Everything about an adapter except its tensors; stored as JSON in the safetensors metadata.

    Unknown keys are ignored (an additive field from a newer vpetl of the same ``format_version`` must not make an
    older edge refuse the file); incompatible changes bump ``format_version`` instead.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    format_version: int = Field(FORMAT_VERSION, description="file format version; readers refuse newer versions")
    method: str = Field(..., min_length=1, description="registered PETL method name (bapat, lora, ...)")
    method_config: dict[str, Any] = Field(default_factory=dict, description="method hyper-parameters (to_dict())")
    backbone: str = Field(..., min_length=1, description="backbone name (videomae-b, swin3d-tiny, ...)")
    backbone_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="content hash of the frozen backbone")
    task: str = Field(..., min_length=1, max_length=256)
    num_classes: int = Field(..., ge=1)
    labels: list[str] = Field(..., description="class names, index order; len == num_classes")
    metrics: dict[str, float] = Field(default_factory=dict, description="training/validation metrics (finite)")
    input_spec: InputSpec
    trainable_params: int = Field(..., ge=0)
    created_at: str = Field(default_factory=_utc_now, description="ISO-8601 UTC, e.g. 2025-01-31T12:00:00Z")
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form (e.g. {'servable': false})")

    @field_validator("created_at")
    @classmethod
    def _check_created_at(cls, value: str) -> str:
        try:
            # Python 3.10's fromisoformat does not take "Z".
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise ValueError(f"created_at {value!r} is not an ISO-8601 timestamp") from e
        if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
            raise ValueError(f"created_at {value!r} must be in UTC (suffix Z or +00:00)")
        return value

    @model_validator(mode="after")
    def _check_labels(self) -> AdapterMeta:
        if len(self.labels) != self.num_classes:
            raise ValueError(f"num_classes is {self.num_classes} but {len(self.labels)} labels are given")
        return self

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact, ASCII) — part of the file bytes, so it must be deterministic."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass
class AdapterFile:
    """A validated adapter: its config, its tensors (float32, C-contiguous), and the identity of its bytes."""

    meta: AdapterMeta
    tensors: dict[str, np.ndarray]
    sha256: str
    size: int
    dtype: str = "float32"  # on-disk dtype: "float32", "float16", "float64" or "mixed"
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return int(sum(t.size for t in self.tensors.values()))


def adapter_sha256(data: bytes) -> str:
    """The identity of an adapter: sha256 of the file bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------- writing


def _serialize(tensors: Mapping[str, np.ndarray], metadata: dict[str, str], code: str, dtype: np.dtype) -> bytes:
    """Deterministic safetensors bytes: sorted names, sorted metadata, compact JSON, header padded to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype=dtype).tobytes()
        header[name] = {"dtype": code, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    # safetensors pads the header with spaces so the data starts 8-byte aligned (zero-copy views stay aligned).
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + os.replace: readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prepare_tensors(tensors: Mapping[str, Any], np_dtype: np.dtype, dtype_name: str) -> dict[str, np.ndarray]:
    if not tensors:
        raise InvalidAdapter("refusing to write an adapter with no tensors")
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise InvalidAdapter(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            raise InvalidAdapter(f"tensor {name!r} has dtype {arr.dtype}; adapter tensors must be floating point")
        with np.errstate(over="ignore"):
            cast = arr.astype(np_dtype)
        if not np.isfinite(cast).all():
            why = "is not finite" if not np.isfinite(arr).all() else f"overflows {dtype_name}"
            raise InvalidAdapter(f"refusing to write: tensor {name!r} {why} (NaN/Inf would be refused on load)")
        out[name] = cast
    return out


def write_adapter(
    tensors: Mapping[str, np.ndarray],
    meta: AdapterMeta,
    path: str | Path | None = None,
    dtype: Literal["float32", "float16"] = "float32",
) -> bytes:
    """Serialize an adapter to safetensors bytes; also write them atomically to ``path`` when given.

    Args:
        tensors: stable name → float array (e.g. ``blocks.3.patt.down.weight``, ``head.weight``).
        meta: the adapter's config; ``num_classes`` must match ``head.weight`` when the file has a head.
        path: where to write (parent directories are created); None to only return the bytes.
        dtype: on-disk float type. float16 halves the size; values that overflow it are refused.

    Returns:
        The file bytes; ``adapter_sha256(bytes)`` is the adapter's identity. Same inputs give the same bytes.
    """
    if dtype not in _WRITE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_WRITE_DTYPES)}, got {dtype!r}")
    if meta.format_version != FORMAT_VERSION:
        raise ValueError(f"this vpetl writes format_version {FORMAT_VERSION}, meta says {meta.format_version}")
    code, np_dtype = _WRITE_DTYPES[dtype]
    arrays = _prepare_tensors(tensors, np_dtype, dtype)
    _check_head(meta, {k: v.shape for k, v in arrays.items()})
    data = _serialize(arrays, {"format": FORMAT_NAME, "vpetl_config": meta.to_json()}, code, np_dtype)
    if path is not None:
        atomic_write(Path(path), data)
    return data


# --------------------------------------------------------------------------------------------------- reading


def _read_source(source: bytes | bytearray | memoryview | str | Path, max_bytes: int) -> tuple[bytes, str]:
    """The file bytes and a name for messages; the size is checked before a file is read into memory."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise TooLarge(f"adapter is {len(data):,} bytes; the limit is {max_bytes:,}")
        return data, "adapter"
    path = Path(source)
    if path.is_dir():
        hint = (
            " (a PEFT-style directory: use vpetl.artifact.import_peft_dir)"
            if (path / PEFT_CONFIG_NAME).exists()
            else ""
        )
        raise InvalidAdapter(f"{path} is a directory, not an adapter file{hint}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(f"adapter file {path} is {size:,} bytes; the limit is {max_bytes:,}")
        return path.read_bytes(), str(path)
    except OSError as e:
        raise InvalidAdapter(f"cannot read adapter file {path}: {e.strerror or e}") from e


def _sniff_foreign(data: bytes, where: str) -> None:
    """Name the common wrong uploads precisely instead of a generic parse error."""
    if data[:1] == b"\x80" or data[:4] == b"PK\x03\x04":
        raise InvalidAdapter(
            f"{where}: this looks like a pickle/torch.save file; vpetl only reads safetensors and never unpickles — "
            "export with `vpetl` (vpetl.petl.io.save_adapter) or safetensors instead"
        )
    if data[:1] == b"{":
        raise InvalidAdapter(f"{where}: this is JSON, not a safetensors adapter (an adapter_config.json?)")
    if data[:2] == b"\x1f\x8b":
        raise InvalidAdapter(f"{where}: this is gzip-compressed; upload the .safetensors file itself")


def _parse_header(data: bytes, where: str, max_header_bytes: int) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Check the safetensors framing and return (metadata, tensor entries) without touching tensor data.

    The 8-byte length field is checked against ``max_header_bytes`` and the file size *before* the header is
    sliced or parsed, so a forged length never causes a large allocation.
    """
    if not data:
        raise InvalidAdapter(f"{where}: the file is empty")
    # A real safetensors file has a plausible length field followed by '{'. Checking that first keeps the pickle
    # sniff from misfiring on a header whose length happens to end in byte 0x80.
    plausible = len(data) >= 9 and data[8:9] == b"{" and 0 < struct.unpack("<Q", data[:8])[0] <= len(data) - 8
    if not plausible:
        _sniff_foreign(data, where)
    if len(data) < 8:
        raise InvalidAdapter(f"{where}: {len(data)} bytes is too short for a safetensors file (8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > max_header_bytes:
        raise InvalidAdapter(f"{where}: header length field says {n:,} bytes; the limit is {max_header_bytes:,}")
    if n == 0 or n > len(data) - 8:
        raise InvalidAdapter(
            f"{where}: header length field says {n:,} bytes but the file has {len(data) - 8:,} after it "
            "(truncated or not safetensors)"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(f"{where}: the safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{where}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidAdapter(f"{where}: safetensors __metadata__ must map strings to strings")
    for name, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise InvalidAdapter(f"{where}: malformed header entry for tensor {name!r}")
        if not isinstance(entry["shape"], list) or not all(isinstance(d, int) and d >= 0 for d in entry["shape"]):
            raise InvalidAdapter(f"{where}: tensor {name!r} has an invalid shape {entry['shape']!r}")
    return metadata, header


def _check_dtypes(entries: Mapping[str, Mapping[str, Any]], where: str) -> str:
    bad = {name: str(e["dtype"]) for name, e in entries.items() if str(e["dtype"]) not in _READ_DTYPES}
    if bad:
        listed = ", ".join(f"{k} ({v})" for k, v in list(bad.items())[:5])
        bf16 = " bfloat16 cannot be read without torch; save as float32 or float16." if "BF16" in bad.values() else ""
        raise InvalidAdapter(
            f"{where}: adapter tensors must be float16/float32/float64; {len(bad)} are not: {listed}.{bf16}"
        )
    codes = {str(e["dtype"]) for e in entries.values()}
    return _DTYPE_NAMES[codes.pop()] if len(codes) == 1 else "mixed"


def _load_arrays(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Tensor data via safetensors (which checks offsets, sizes and that the data covers the file exactly)."""
    try:
        loaded = safetensors.numpy.load(data)
    except Exception as e:  # the Rust parser raises SafetensorError; anything else is just as invalid
        raise InvalidAdapter(f"{where}: not a valid safetensors file (truncated or corrupt?): {e}") from e
    out: dict[str, np.ndarray] = {}
    for name, arr in loaded.items():
        # float32 for every consumer (torch copy_, onnxruntime inputs); float16 → float32 is exact.
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused just below
            arr = np.require(arr.astype(np.float32, copy=False), requirements="C")  # keeps 0-d shapes
        finite = np.isfinite(arr)
        if not finite.all():
            raise InvalidAdapter(f"{where}: tensor {name!r} has {int(arr.size - finite.sum())} NaN/Inf value(s)")
        out[name] = arr
    return out


def _parse_meta(metadata: Mapping[str, str], where: str) -> AdapterMeta:
    if metadata.get("format") != FORMAT_NAME or "vpetl_config" not in metadata:
        hint = (
            " (a PEFT adapter_model.safetensors? use import_peft_dir on its directory)"
            if metadata.get("format") == "pt"
            else ""
        )
        raise InvalidAdapter(
            f"{where}: not a vpetl adapter: the safetensors metadata needs format='vpetl' and a vpetl_config{hint}"
        )
    try:
        raw = json.loads(metadata["vpetl_config"])
    except json.JSONDecodeError as e:
        raise InvalidAdapter(f"{where}: vpetl_config metadata is not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise InvalidAdapter(f"{where}: vpetl_config metadata is not a JSON object")
    return _meta_from_dict(raw, where)


def _meta_from_dict(raw: Mapping[str, Any], where: str) -> AdapterMeta:
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidAdapter(f"{where}: vpetl_config has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise IncompatibleAdapter(
            f"{where}: written by a newer vpetl (adapter format_version {version}; this vpetl reads up to "
            f"{FORMAT_VERSION}) — upgrade vpetl to load it"
        )
    try:
        return AdapterMeta.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise InvalidAdapter(f"{where}: vpetl_config does not match the adapter schema: {problems}") from e


def _check_head(meta: AdapterMeta, shapes: Mapping[str, tuple[int, ...]], where: str = "adapter") -> None:
    """The classifier head must agree with num_classes (labels agree with num_classes by AdapterMeta)."""
    for name, dims in ((HEAD_WEIGHT, 2), (HEAD_BIAS, 1)):
        shape = tuple(shapes[name]) if name in shapes else None
        if shape is not None and (len(shape) != dims or shape[0] != meta.num_classes):
            raise InvalidAdapter(
                f"{where}: {name} has shape {shape} but num_classes is {meta.num_classes} "
                f"({len(meta.labels)} labels); the head must have one row per class"
            )


def _check_backbone(meta: AdapterMeta, sha: str, name: str | None, where: str) -> None:
    if meta.backbone_sha256 != sha:
        loaded = f"{name!r} " if name else ""
        raise IncompatibleAdapter(
            f"{where}: trained on backbone {meta.backbone!r} (sha256 {meta.backbone_sha256[:12]}…) but the loaded "
            f"backbone {loaded}has sha256 {sha[:12]}… — its weights differ; retrain the adapter on this backbone"
        )


def _check_shapes(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(expected[k]) != tuple(shapes[k]))
    if not (missing or extra or wrong):
        return

    def listed(keys: list[str], fmt: Any) -> str:
        more = f", … {len(keys) - 5} more" if len(keys) > 5 else ""
        return ", ".join(fmt(k) for k in keys[:5]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {listed(missing, str)}")
    if extra:
        parts.append(f"{len(extra)} unexpected: {listed(extra, str)}")
    if wrong:
        parts.append(
            f"{len(wrong)} with the wrong shape: "
            + listed(wrong, lambda k: f"{k} {tuple(shapes[k])} (expected {tuple(expected[k])})")
        )
    raise IncompatibleAdapter(
        f"{where}: tensors do not match the model (wrong method or settings?): " + "; ".join(parts)
    )


def read_adapter(
    source: bytes | str | Path,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    backbone_sha256: str | None = None,
    backbone_name: str | None = None,
    max_bytes: int = MAX_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> AdapterFile:
    """Read and validate an adapter file; every check runs before tensor data is touched except finiteness.

    Args:
        source: the file bytes, or a path to the file.
        expected_shapes: name → shape the target model needs; missing, unexpected or mis-shaped tensors are refused.
        backbone_sha256: the loaded backbone's hash; a different one in the file is refused.
        backbone_name: the loaded backbone's name, only for the mismatch message.
        max_bytes: size limit for the whole file (TooLarge above it).
        max_header_bytes: limit for the JSON header, checked from the length field before it is read.

    Raises:
        TooLarge: the file exceeds ``max_bytes``.
        InvalidAdapter: not safetensors (pickle/zip/JSON…), a bad or oversized header, truncated data, missing or
            invalid vpetl metadata, non-float tensors, NaN/Inf, a head that disagrees with num_classes.
        IncompatibleAdapter: a newer format_version, another backbone, tensors that do not fit ``expected_shapes``.
    """
    data, where = _read_source(source, max_bytes)
    metadata, entries = _parse_header(data, where, max_header_bytes)
    meta = _parse_meta(metadata, where)
    if not entries:
        raise InvalidAdapter(f"{where}: the adapter has no tensors")
    dtype = _check_dtypes(entries, where)
    shapes = {name: tuple(e["shape"]) for name, e in entries.items()}
    _check_head(meta, shapes, where)
    # Backbone before shapes: another backbone usually also means other shapes, and its message says why.
    if backbone_sha256 is not None:
        _check_backbone(meta, backbone_sha256, backbone_name, where)
    if expected_shapes is not None:
        _check_shapes(shapes, expected_shapes, where)
    tensors = _load_arrays(data, where)
    return AdapterFile(
        meta=meta, tensors=tensors, sha256=adapter_sha256(data), size=len(data), dtype=dtype, shapes=shapes
    )


def convert_adapter(data: bytes, dtype: Literal["float32", "float16"]) -> bytes:
    """The same adapter with its tensors stored as ``dtype`` (the bytes as given when they already are).

    Deterministic: the same input gives the same bytes, so their sha256 can serve as an ETag. Used by
    ``GET /adapters/{task}/download?dtype=float16`` to halve what an edge device downloads per task switch.
    Raises InvalidAdapter when a value overflows float16.
    """
    adapter = read_adapter(data)
    if adapter.dtype == dtype:
        return data
    return write_adapter(adapter.tensors, adapter.meta, dtype=dtype)


def check_compatible(
    adapter: AdapterFile,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    backbone_sha256: str | None = None,
    backbone_name: str | None = None,
) -> None:
    """The compatibility checks of :func:`read_adapter`, for an adapter already read (e.g. before the target model
    existed). Raises IncompatibleAdapter."""
    where = f"adapter {adapter.sha256[:12]}"
    if backbone_sha256 is not None:
        _check_backbone(adapter.meta, backbone_sha256, backbone_name, where)
    if expected_shapes is not None:
        _check_shapes(adapter.shapes, expected_shapes, where)


def read_adapter_meta(
    source: bytes | str | Path, *, max_bytes: int = MAX_BYTES, max_header_bytes: int = MAX_HEADER_BYTES
) -> AdapterMeta:
    """Only the config (header parse, no tensor data): cheap enough for listings."""
    data, where = _read_source(source, max_bytes)
    metadata, _ = _parse_header(data, where, max_header_bytes)
    return _parse_meta(metadata, where)


# --------------------------------------------------------------------------------------------------- PEFT layout


def export_peft_dir(adapter: AdapterFile | bytes, out_dir: str | Path) -> Path:
    """Write a PEFT-style directory: ``adapter_config.json`` + ``adapter_model.safetensors`` (for people who browse).

    The config holds PEFT's identity keys (``peft_type`` = ``VPETL_<METHOD>``, ``base_model_name_or_path`` = the
    backbone name, ``revision`` = its sha256) plus every AdapterMeta field; weights are keyed
    ``base_model.model.<name>`` with metadata ``{"format": "pt"}``. PEFT itself will not load a VPETL_ type;
    :func:`import_peft_dir` reads it back (to the same bytes when the dtype is the same). For a directory the
    ``peft`` package loads (LoRA on transformers' VideoMAE), use :func:`vpetl.formats.peft.export_peft`
    (``vpetl export peft``).
    """
    if isinstance(adapter, (bytes, bytearray, memoryview)):
        adapter = read_adapter(bytes(adapter))
    meta = adapter.meta
    out = Path(out_dir)
    config = {
        **meta.model_dump(mode="json"),
        "peft_type": PEFT_TYPE_PREFIX + meta.method.upper(),
        "task_type": None,
        "base_model_name_or_path": meta.backbone,
        "revision": meta.backbone_sha256,
        "inference_mode": True,
        "vpetl_sha256": adapter.sha256,  # the source file's identity, for provenance
    }
    dtype = adapter.dtype if adapter.dtype in _WRITE_DTYPES else "float32"
    code, np_dtype = _WRITE_DTYPES[dtype]
    weights = _serialize({PEFT_PREFIX + k: v for k, v in adapter.tensors.items()}, {"format": "pt"}, code, np_dtype)
    atomic_write(out / PEFT_WEIGHTS_NAME, weights)
    text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(out / PEFT_CONFIG_NAME, text.encode("utf-8"))
    return out


def import_peft_dir(
    directory: str | Path,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    backbone_sha256: str | None = None,
    backbone_name: str | None = None,
    max_bytes: int = MAX_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> AdapterFile:
    """Read a directory written by :func:`export_peft_dir` back into a validated adapter (same checks as
    :func:`read_adapter`); the adapter's identity is that of the re-serialized vpetl file."""
    root = Path(directory)
    config_path, weights_path = root / PEFT_CONFIG_NAME, root / PEFT_WEIGHTS_NAME
    if not config_path.is_file():
        raise InvalidAdapter(f"{root}: no {PEFT_CONFIG_NAME}; not a PEFT-style adapter directory")
    if not weights_path.is_file():
        legacy = (
            " (only the pickled adapter_model.bin, which vpetl never loads)"
            if (root / "adapter_model.bin").exists()
            else ""
        )
        raise InvalidAdapter(f"{root}: no {PEFT_WEIGHTS_NAME}{legacy}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(f"{config_path}: not readable JSON ({e})") from e
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{config_path}: not a JSON object")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or not peft_type.startswith(PEFT_TYPE_PREFIX):
        raise InvalidAdapter(
            f"{config_path}: peft_type {peft_type!r} is not a vpetl adapter (expected VPETL_<METHOD>)"
        )
    meta = _meta_from_dict(config, str(config_path))
    if peft_type != PEFT_TYPE_PREFIX + meta.method.upper():
        raise InvalidAdapter(f"{config_path}: peft_type {peft_type!r} disagrees with method {meta.method!r}")

    data, where = _read_source(weights_path, max_bytes)
    _, entries = _parse_header(data, where, max_header_bytes)
    unprefixed = [k for k in entries if not k.startswith(PEFT_PREFIX)]
    if unprefixed:
        raise InvalidAdapter(f"{where}: tensor names must start with {PEFT_PREFIX!r}: {', '.join(unprefixed[:5])}")
    dtype = _check_dtypes(entries, where)
    arrays = {k[len(PEFT_PREFIX) :]: v for k, v in _load_arrays(data, where).items()}
    write_dtype = dtype if dtype in _WRITE_DTYPES else "float32"
    blob = write_adapter(arrays, meta, dtype=write_dtype)  # type: ignore[arg-type]
    return read_adapter(
        blob,
        expected_shapes=expected_shapes,
        backbone_sha256=backbone_sha256,
        backbone_name=backbone_name,
        max_bytes=max_bytes,
        max_header_bytes=max_header_bytes,
    )


__all__ = [
    "FORMAT_VERSION",
    "AdapterFile",
    "AdapterMeta",
    "adapter_sha256",
    "check_compatible",
    "convert_adapter",
    "export_peft_dir",
    "import_peft_dir",
    "read_adapter",
    "read_adapter_meta",
    "write_adapter",
]
