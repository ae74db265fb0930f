"""Boundaries of the adapter file reader that the mutation run (docs/mutation.md) found unpinned: each test here
kills a one-line mutant of ``vpetl/artifact.py`` that the round-trip and rejection tests let through."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
from pydantic import ValidationError

from vpetl.artifact import AdapterMeta, read_adapter, write_adapter
from vpetl.errors import InvalidAdapter
from vpetl.protocol import InputSpec


def meta_fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "method": "lora",
        "method_config": {"rank": 2},
        "backbone": "videomae-tiny",
        "backbone_sha256": "a" * 64,
        "task": "gestures",
        "num_classes": 2,
        "labels": ["wave", "clap"],
        "input_spec": InputSpec(num_frames=4, size=32),
        "trainable_params": 6,
        "created_at": "2025-01-31T12:00:00Z",
    }
    fields.update(overrides)
    return fields


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"head.weight": rng.standard_normal((2, 2)).astype(np.float32), "head.bias": np.zeros(2, np.float32)}


def good_bytes() -> bytes:
    return write_adapter(tensors(), AdapterMeta(**meta_fields()))


def test_empty_task_name_is_refused() -> None:
    """``task`` has min_length 1: an empty name would make an unaddressable store key."""
    with pytest.raises(ValidationError, match="task"):
        AdapterMeta(**meta_fields(task=""))
    assert AdapterMeta(**meta_fields(task="x")).task == "x"


@pytest.mark.parametrize("cut", [1, 3, 8])
def test_header_cut_by_a_few_bytes_is_reported_as_truncated(cut: int) -> None:
    """A length field even a byte longer than what follows it is "truncated", before any JSON parsing."""
    data = good_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    with pytest.raises(InvalidAdapter, match="truncated"):
        read_adapter(data[: 8 + n - cut])


def test_length_field_longer_than_the_file_is_not_plausible() -> None:
    """The foreign-format sniff is skipped only for a length field that fits in the file: a pickle-like prefix
    (0x80) whose length field overshoots the file by 4 bytes is still named as a pickle."""
    n = 0x80  # the low byte of the length field is the pickle opcode
    data = struct.pack("<Q", n) + b"{" + b" " * (n - 5)  # len(data) - 8 == n - 4 < n
    with pytest.raises(InvalidAdapter, match="pickle"):
        read_adapter(data)


def test_metadata_needs_both_the_format_and_the_config() -> None:
    config = json.dumps(AdapterMeta(**meta_fields()).model_dump(mode="json"))
    with pytest.raises(InvalidAdapter, match="not a vpetl adapter"):  # a PEFT-format file carrying a vpetl_config
        read_adapter(safetensors.numpy.save(tensors(), metadata={"format": "pt", "vpetl_config": config}))
    with pytest.raises(InvalidAdapter, match="not a vpetl adapter"):  # format says vpetl, no config
        read_adapter(safetensors.numpy.save(tensors(), metadata={"format": "vpetl"}))


def test_schema_message_names_at_most_five_problems() -> None:
    """The message (returned to HTTP clients) stays short: the first five schema problems only."""
    config = AdapterMeta(**meta_fields()).model_dump(mode="json")
    for key in ("method", "backbone", "backbone_sha256", "task", "num_classes", "labels", "trainable_params"):
        del config[key]
    data = safetensors.numpy.save(tensors(), metadata={"format": "vpetl", "vpetl_config": json.dumps(config)})
    with pytest.raises(InvalidAdapter, match="schema") as info:
        read_adapter(data)
    assert info.value.message.count("Field required") == 5
