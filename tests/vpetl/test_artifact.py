"""The adapter file format (torch-free parts): round trip, determinism, identity, and every rejection."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from vpetl.artifact import (
    FORMAT_VERSION,
    AdapterMeta,
    adapter_sha256,
    export_peft_dir,
    import_peft_dir,
    read_adapter,
    read_adapter_meta,
    write_adapter,
)
from vpetl.errors import IncompatibleAdapter, InvalidAdapter, TooLarge
from vpetl.protocol import InputSpec

SHA_A = "a" * 64
SHA_B = "b" * 64


def make_meta(**overrides: object) -> AdapterMeta:
    fields: dict[str, object] = {
        "method": "bapat",
        "method_config": {"bottleneck": 8, "scale": 0.8, "positions": ["k", "v"]},
        "backbone": "videomae-tiny",
        "backbone_sha256": SHA_A,
        "task": "gestures",
        "num_classes": 3,
        "labels": ["wave", "clap", "pöint"],  # non-ASCII survives the ASCII header encoding
        "metrics": {"val_top1": 0.75},
        "input_spec": InputSpec(num_frames=4, size=32),
        "trainable_params": 3 * 16 + 3 + 8 * 16 + 8,
        "created_at": "2025-01-31T12:00:00Z",
    }
    fields.update(overrides)
    return AdapterMeta(**fields)


def make_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "head.weight": rng.standard_normal((3, 16)).astype(np.float32),
        "head.bias": rng.standard_normal(3).astype(np.float32),
        "blocks.0.patt.down.weight": rng.standard_normal((8, 16)).astype(np.float32),
        "blocks.0.patt.down.bias": rng.standard_normal(8).astype(np.float32),
    }


def good_bytes(**meta_overrides: object) -> bytes:
    return write_adapter(make_tensors(), make_meta(**meta_overrides))


def forge(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> bytes:
    """A safetensors file written by the library itself (for files write_adapter refuses to produce)."""
    return safetensors.numpy.save(tensors, metadata=metadata)


def forge_config(config: dict, tensors: dict[str, np.ndarray] | None = None) -> bytes:
    return forge(tensors or make_tensors(), {"format": "vpetl", "vpetl_config": json.dumps(config)})


# ------------------------------------------------------------------------------------------------ round trip


def test_round_trip_bytes_and_path(tmp_path: Path) -> None:
    tensors, meta = make_tensors(), make_meta()
    path = tmp_path / "sub" / "a.safetensors"
    data = write_adapter(tensors, meta, path)
    assert path.read_bytes() == data
    assert not list(path.parent.glob(".*.tmp"))  # the temp file was renamed, not left behind
    for source in (data, path, str(path)):
        adapter = read_adapter(source)
        assert adapter.meta == meta
        assert adapter.sha256 == adapter_sha256(data) and adapter.size == len(data)
        assert adapter.dtype == "float32"
        assert set(adapter.tensors) == set(tensors)
        for name, value in tensors.items():
            np.testing.assert_array_equal(adapter.tensors[name], value)
            assert adapter.tensors[name].dtype == np.float32
    assert read_adapter_meta(data) == meta
    assert adapter.num_params == sum(t.size for t in tensors.values())


def test_file_is_standard_safetensors_with_sorted_tensors() -> None:
    data = good_bytes()
    loaded = safetensors.numpy.load(data)  # any safetensors reader opens it
    assert set(loaded) == set(make_tensors())
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert meta["format"] == "vpetl"
    assert json.loads(meta["vpetl_config"])["format_version"] == FORMAT_VERSION
    assert list(header) == sorted(header)
    offsets = [header[k]["data_offsets"] for k in header]
    assert offsets == sorted(offsets)


def test_deterministic_bytes_across_processes() -> None:
    """The same inputs give the same bytes, also in another process (safetensors' own writer does not)."""
    data = good_bytes()
    assert write_adapter(dict(reversed(list(make_tensors().items()))), make_meta()) == data
    code = (
        f"import sys, hashlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_artifact import good_bytes; print(hashlib.sha256(good_bytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == adapter_sha256(data)


def test_sha256_changes_when_one_tensor_byte_flips() -> None:
    data = bytearray(good_bytes())
    original = adapter_sha256(bytes(data))
    data[-1] ^= 0x01  # last byte of the last tensor's data
    tampered = read_adapter(bytes(data))  # still a valid file (a finite float), but another adapter
    assert tampered.sha256 != original


def test_float16_option() -> None:
    tensors = make_tensors()
    data16 = write_adapter(tensors, make_meta(), dtype="float16")
    data32 = write_adapter(tensors, make_meta())
    assert len(data16) < len(data32)
    adapter = read_adapter(data16)
    assert adapter.dtype == "float16"
    for name, value in tensors.items():
        assert adapter.tensors[name].dtype == np.float32
        np.testing.assert_allclose(adapter.tensors[name], value, rtol=1e-3, atol=1e-3)
    with pytest.raises(InvalidAdapter, match="overflows float16"):
        write_adapter({**tensors, "head.bias": np.full(3, 1e6, np.float32)}, make_meta(), dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        write_adapter(tensors, make_meta(), dtype="bfloat16")  # type: ignore[arg-type]


def test_convert_adapter_changes_only_the_dtype() -> None:
    from vpetl.artifact import convert_adapter

    data = good_bytes()
    half = convert_adapter(data, "float16")
    assert convert_adapter(data, "float16") == half and convert_adapter(data, "float32") == data
    assert read_adapter(half).dtype == "float16" and read_adapter(half).meta == read_adapter(data).meta
    assert read_adapter(convert_adapter(half, "float32")).dtype == "float32"
    assert convert_adapter(half, "float16") == half
    big = write_adapter({**make_tensors(), "head.bias": np.full(3, 1e6, np.float32)}, make_meta())
    with pytest.raises(InvalidAdapter, match="overflows float16"):
        convert_adapter(big, "float16")


def test_write_refuses_what_read_would_refuse() -> None:
    with pytest.raises(InvalidAdapter, match="not finite"):
        write_adapter({**make_tensors(), "head.bias": np.array([0, np.nan, 0], np.float32)}, make_meta())
    with pytest.raises(InvalidAdapter, match="floating point"):
        write_adapter({**make_tensors(), "step": np.array([3], np.int64)}, make_meta())
    with pytest.raises(InvalidAdapter, match="num_classes"):
        write_adapter(make_tensors(), make_meta(num_classes=4, labels=["a", "b", "c", "d"]))
    with pytest.raises(InvalidAdapter, match="no tensors"):
        write_adapter({}, make_meta())


def test_meta_validation() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        make_meta(num_classes=2)
    with pytest.raises(ValueError, match="UTC"):
        make_meta(created_at="2025-01-31T12:00:00+02:00")
    with pytest.raises(ValueError):
        make_meta(metrics={"loss": float("nan")})
    assert make_meta(created_at="2025-01-31T12:00:00+00:00").created_at.endswith("+00:00")
    fields = make_meta().model_dump()
    del fields["created_at"]
    assert AdapterMeta(**fields).created_at.endswith("Z")  # defaults to now, in UTC


# ------------------------------------------------------------------------------------------------ rejections


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(InvalidAdapter, match="empty"):
        read_adapter(tmp_path / "e.safetensors")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match="cannot read"):
        read_adapter(tmp_path / "nope.safetensors")
    export_peft_dir(good_bytes(), tmp_path / "peft")
    with pytest.raises(InvalidAdapter, match="import_peft_dir"):
        read_adapter(tmp_path / "peft")


def test_torch_save_zip_is_refused_without_unpickling() -> None:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"head.weight": torch.zeros(3, 16)}, buf)
    data = buf.getvalue()
    assert data[:4] == b"PK\x03\x04"
    with pytest.raises(InvalidAdapter, match="pickle/torch.save") as info:
        read_adapter(data)
    assert "safetensors" in info.value.message and "vpetl" in info.value.message


def test_plain_zip_and_raw_pickle_are_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"x")
    for data in (buf.getvalue(), pickle.dumps({"head.weight": [1.0]}, protocol=2), pickle.dumps([1], protocol=5)):
        with pytest.raises(InvalidAdapter, match="pickle/torch.save"):
            read_adapter(data)


def test_pickle_sniff_does_not_misfire_on_a_real_header_starting_with_0x80() -> None:
    """A header whose length ends in byte 0x80 is legitimate; pad the metadata until it happens."""
    for pad in range(0, 256):
        data = write_adapter(make_tensors(), make_meta(extra={"pad": "x" * pad}))
        if data[0] == 0x80:
            assert read_adapter(data).meta.extra["pad"] == "x" * pad
            return
    pytest.fail("no padding gave a header length ending in 0x80")


def test_json_and_gzip_get_specific_messages() -> None:
    with pytest.raises(InvalidAdapter, match="JSON"):
        read_adapter(b'{"peft_type": "LORA"}')
    with pytest.raises(InvalidAdapter, match="gzip"):
        read_adapter(b"\x1f\x8b\x08\x00" + b"\x00" * 20)


def test_too_short() -> None:
    with pytest.raises(InvalidAdapter, match="too short"):
        read_adapter(b"\x10\x00\x00")


def test_giant_header_length_is_refused_before_allocation() -> None:
    data = struct.pack("<Q", 2**62) + b"{}"
    with pytest.raises(InvalidAdapter, match="header length") as info:
        read_adapter(data)
    assert f"{2**62:,}" in info.value.message
    # Below the limit but longer than the file: truncated.
    with pytest.raises(InvalidAdapter, match="truncated"):
        read_adapter(struct.pack("<Q", 1000) + b"{}" + b" " * 6)
    # The header limit is configurable.
    with pytest.raises(InvalidAdapter, match="limit is 64"):
        read_adapter(good_bytes(), max_header_bytes=64)


def test_total_size_limit(tmp_path: Path) -> None:
    data = good_bytes()
    with pytest.raises(TooLarge):
        read_adapter(data, max_bytes=len(data) - 1)
    (tmp_path / "a.safetensors").write_bytes(data)
    with pytest.raises(TooLarge, match="limit"):
        read_adapter(tmp_path / "a.safetensors", max_bytes=100)


def test_truncated_file() -> None:
    data = good_bytes()
    with pytest.raises(InvalidAdapter, match="truncated or corrupt"):
        read_adapter(data[:-7])
    (n,) = struct.unpack("<Q", data[:8])
    with pytest.raises(InvalidAdapter, match="not valid JSON|truncated"):
        read_adapter(data[: 8 + n // 2])


def test_header_not_json() -> None:
    body = b"{not json}      "
    with pytest.raises(InvalidAdapter, match="not valid JSON"):
        read_adapter(struct.pack("<Q", len(body)) + body)
    body = b"[1, 2, 3]       "
    with pytest.raises(InvalidAdapter, match="not valid JSON|not a JSON object"):
        read_adapter(struct.pack("<Q", len(body)) + body)


def test_missing_vpetl_metadata() -> None:
    with pytest.raises(InvalidAdapter, match="not a vpetl adapter"):
        read_adapter(forge(make_tensors(), None))
    with pytest.raises(InvalidAdapter, match="import_peft_dir"):
        read_adapter(forge(make_tensors(), {"format": "pt"}))
    with pytest.raises(InvalidAdapter, match="not valid JSON"):
        read_adapter(forge(make_tensors(), {"format": "vpetl", "vpetl_config": "{oops"}))


def test_metadata_not_matching_schema() -> None:
    config = make_meta().model_dump(mode="json")
    del config["backbone_sha256"]
    config["num_classes"] = "three"
    with pytest.raises(InvalidAdapter, match="schema") as info:
        read_adapter(forge_config(config))
    assert "backbone_sha256" in info.value.message and "num_classes" in info.value.message
    config = make_meta().model_dump(mode="json")
    del config["format_version"]
    with pytest.raises(InvalidAdapter, match="format_version"):
        read_adapter(forge_config(config))


def test_newer_format_version_is_incompatible() -> None:
    config = {**make_meta().model_dump(mode="json"), "format_version": FORMAT_VERSION + 1, "new_field": 1}
    with pytest.raises(IncompatibleAdapter, match="newer vpetl") as info:
        read_adapter(forge_config(config))
    assert info.value.code == "incompatible_adapter" and info.value.http_status == 409


def test_unknown_fields_of_the_same_version_are_ignored() -> None:
    config = {**make_meta().model_dump(mode="json"), "added_later": {"x": 1}}
    assert read_adapter(forge_config(config)).meta == make_meta()


def test_non_float_dtype() -> None:
    tensors = {**make_tensors(), "blocks.0.patt.index": np.arange(4, dtype=np.int64)}
    config = make_meta().model_dump(mode="json")
    with pytest.raises(InvalidAdapter, match="float") as info:
        read_adapter(forge_config(config, tensors))
    assert "blocks.0.patt.index (I64)" in info.value.message
    assert info.value.code == "invalid_adapter" and info.value.http_status == 400


def test_nan_and_inf_name_the_tensor() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        tensors = make_tensors()
        tensors["blocks.0.patt.down.weight"][2, 3] = bad
        with pytest.raises(InvalidAdapter, match=r"blocks\.0\.patt\.down\.weight.*1 NaN/Inf"):
            read_adapter(forge_config(make_meta().model_dump(mode="json"), tensors))


def test_float64_is_read_as_float32() -> None:
    tensors = {k: v.astype(np.float64) for k, v in make_tensors().items()}
    adapter = read_adapter(forge_config(make_meta().model_dump(mode="json"), tensors))
    assert adapter.dtype == "float64" and all(t.dtype == np.float32 for t in adapter.tensors.values())


def test_expected_shapes() -> None:
    data = good_bytes()
    shapes = {k: v.shape for k, v in make_tensors().items()}
    assert read_adapter(data, expected_shapes=shapes).sha256 == adapter_sha256(data)

    wrong = dict(shapes)
    del wrong["blocks.0.patt.down.bias"]
    wrong["blocks.0.patt.down.weight"] = (4, 16)
    for i in range(7):
        wrong[f"blocks.{i}.lora.a.weight"] = (4, 16)
    with pytest.raises(IncompatibleAdapter) as info:
        read_adapter(data, expected_shapes=wrong)
    msg = info.value.message
    assert "7 missing" in msg and "blocks.0.lora.a.weight" in msg and "2 more" in msg
    assert "1 unexpected: blocks.0.patt.down.bias" in msg
    assert "blocks.0.patt.down.weight (8, 16) (expected (4, 16))" in msg


def test_backbone_hash_mismatch() -> None:
    data = good_bytes()
    assert read_adapter(data, backbone_sha256=SHA_A).meta.backbone_sha256 == SHA_A
    with pytest.raises(IncompatibleAdapter) as info:
        read_adapter(data, backbone_sha256=SHA_B, backbone_name="swin3d-tiny")
    msg = info.value.message
    assert SHA_A[:12] in msg and SHA_B[:12] in msg and SHA_A not in msg
    assert "videomae-tiny" in msg and "swin3d-tiny" in msg


def test_head_disagrees_with_num_classes() -> None:
    config = {**make_meta().model_dump(mode="json"), "num_classes": 2, "labels": ["a", "b"]}
    with pytest.raises(InvalidAdapter, match=r"head\.weight has shape \(3, 16\) but num_classes is 2"):
        read_adapter(forge_config(config))
    config = {**make_meta().model_dump(mode="json"), "labels": ["a", "b"]}
    with pytest.raises(InvalidAdapter, match="2 labels"):
        read_adapter(forge_config(config))


# ------------------------------------------------------------------------------------------------ PEFT layout


def test_peft_dir_round_trip(tmp_path: Path) -> None:
    for dtype in ("float32", "float16"):
        data = write_adapter(make_tensors(), make_meta(), dtype=dtype)
        out = export_peft_dir(read_adapter(data), tmp_path / dtype)
        config_text = (out / "adapter_config.json").read_text()
        config = json.loads(config_text)
        assert config_text == json.dumps(config, indent=2, sort_keys=True) + "\n"
        assert config["peft_type"] == "VPETL_BAPAT"
        assert config["base_model_name_or_path"] == "videomae-tiny" and config["revision"] == SHA_A
        assert config["labels"] == ["wave", "clap", "pöint"] and config["num_classes"] == 3
        weights = (out / "adapter_model.safetensors").read_bytes()
        (n,) = struct.unpack("<Q", weights[:8])
        assert json.loads(weights[8 : 8 + n])["__metadata__"] == {"format": "pt"}
        assert all(k.startswith("base_model.model.") for k in safetensors.numpy.load(weights))

        back = import_peft_dir(out, backbone_sha256=SHA_A)
        assert back.meta == make_meta() and back.dtype == dtype
        assert back.sha256 == adapter_sha256(data)  # same dtype → the very same vpetl file
    assert export_peft_dir(data, tmp_path / "from-bytes") == tmp_path / "from-bytes"


def test_peft_dir_rejections(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match="adapter_config.json"):
        import_peft_dir(tmp_path)
    out = export_peft_dir(good_bytes(), tmp_path / "p")
    with pytest.raises(IncompatibleAdapter, match="sha256"):
        import_peft_dir(out, backbone_sha256=SHA_B)

    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(InvalidAdapter, match="not a vpetl adapter"):
        import_peft_dir(out)
    (out / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "VPETL_LORA"}))
    with pytest.raises(InvalidAdapter, match="disagrees"):
        import_peft_dir(out)

    (out / "adapter_config.json").write_text(json.dumps(config))
    (out / "adapter_model.safetensors").unlink()
    (out / "adapter_model.bin").write_bytes(pickle.dumps({}))
    with pytest.raises(InvalidAdapter, match="adapter_model.bin"):
        import_peft_dir(out)
    (out / "adapter_model.safetensors").write_bytes(forge(make_tensors(), {"format": "pt"}))
    with pytest.raises(InvalidAdapter, match="base_model.model."):
        import_peft_dir(out)


# ------------------------------------------------------------------------------------------------ torch-free


def test_import_leaves_torch_out() -> None:
    code = (
        "import sys; import vpetl.artifact, vpetl.errors, vpetl.protocol; "
        "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
