"""The functional adapter terms: per-sample stacks agree with single-task calls, zero-padded bottlenecks are
exact, and a mixed batch run through the hooks with gathered stacks gives each model's own logits."""

from __future__ import annotations

import pytest
import torch

from vpetl.backbones import BlockAdapter, create_backbone
from vpetl.petl import create_model, make_config
from vpetl.petl import functional as PF

B, ROWS, N, C = 3, 2, 5, 16  # samples, rows per sample (windows / frames), tokens per row, channels
ATOL = 1e-5


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bottleneck_weights(c_in: int, d: int, c_out: int, seed: int) -> dict[str, torch.Tensor]:
    return {
        "down.weight": _rand(d, c_in, seed=seed), "down.bias": _rand(d, seed=seed + 1),
        "up.weight": _rand(c_out, d, seed=seed + 2), "up.bias": _rand(c_out, seed=seed + 3),
    }


def _stack(per_sample: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([w[k] for w in per_sample]) for k in per_sample[0]}


def _pad_bottleneck(w: dict[str, torch.Tensor], d_max: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Zero-pad a down (d, C) / up (C_out, d) pair to width d_max."""
    out = dict(w)
    down, up = w[prefix + "down.weight"], w[prefix + "up.weight"]
    d = down.shape[0]
    out[prefix + "down.weight"] = torch.cat([down, down.new_zeros(d_max - d, down.shape[1])])
    out[prefix + "up.weight"] = torch.cat([up, up.new_zeros(up.shape[0], d_max - d)], dim=1)
    if prefix + "down.bias" in w:
        out[prefix + "down.bias"] = torch.cat([w[prefix + "down.bias"], w[prefix + "down.bias"].new_zeros(d_max - d)])
    return out


def _rows(x: torch.Tensor, b: int) -> torch.Tensor:
    """Rows of sample b of an (B·ROWS, ...) tensor."""
    return x[b * ROWS:(b + 1) * ROWS]


# ------------------------------------------------------------------------------------------- generic helpers
def test_linear_stack_same_weights_equals_single() -> None:
    x = _rand(B * ROWS, N, C, seed=0)
    w, b = _rand(7, C, seed=1), _rand(7, seed=2)
    single = PF.linear(x, w, b)
    stacked = PF.linear(x, w.expand(B, -1, -1), b.expand(B, -1))
    torch.testing.assert_close(stacked, single, atol=ATOL, rtol=0)
    assert single.shape == (B * ROWS, N, 7)


def test_linear_stack_rejects_uneven_rows() -> None:
    with pytest.raises(ValueError, match="cannot be split"):
        PF.linear(torch.zeros(5, N, C), torch.zeros(2, 3, C))


def test_scaled_per_sample() -> None:
    y = _rand(B * ROWS, N, C, seed=3)
    s = torch.tensor([0.5, 1.0, 2.0])
    out = PF.scaled(y, s)
    for b in range(B):
        torch.testing.assert_close(_rows(out, b), _rows(y, b) * s[b])
    torch.testing.assert_close(PF.scaled(y, 0.3), y * 0.3)
    torch.testing.assert_close(PF.scaled(y, torch.tensor(0.3)), y * 0.3)


# ------------------------------------------------------------------------- per-method stack equivalences
def _patt_call(h, qkv, w, scale):
    return torch.cat(PF.patt_qkv(h, *qkv, w, scale=scale, positions=("k", "v")), dim=-1)


def _adaptmlp_call(h, qkv, w, scale):
    return PF.adaptmlp(h, qkv[0], w, scale=scale, mode="parallel")


def _adaptmlp_seq_call(h, qkv, w, scale):
    return PF.adaptmlp(h, qkv[0], w, scale=scale, mode="sequential")


def _lora_call(h, qkv, w, scale):
    return torch.cat(PF.lora_qkv(h, *qkv, w, scale=scale, targets=("q", "v")), dim=-1)


def _dualpath_call(h, qkv, w, scale):
    return PF.dualpath_adapter(h, w, scale=scale)


def _lora_weights(d: int, seed: int) -> dict[str, torch.Tensor]:
    return {
        "q.A": _rand(d, C, seed=seed), "q.B": _rand(C, d, seed=seed + 1),
        "v.A": _rand(d, C, seed=seed + 2), "v.B": _rand(C, d, seed=seed + 3),
    }


CASES = {
    "patt": (_patt_call, lambda d, s: _bottleneck_weights(C, d, 2 * C, s)),
    "adaptmlp": (_adaptmlp_call, lambda d, s: _bottleneck_weights(C, d, C, s)),
    "adaptmlp-sequential": (_adaptmlp_seq_call, lambda d, s: _bottleneck_weights(C, d, C, s)),
    "lora": (_lora_call, _lora_weights),
    "dualpath": (_dualpath_call, lambda d, s: _bottleneck_weights(C, d, C, s)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stack_of_identical_weights_equals_single_task(case: str) -> None:
    call, make = CASES[case]
    h = _rand(B * ROWS, N, C, seed=10)
    qkv = tuple(_rand(B * ROWS, N, C, seed=11 + i) for i in range(3))
    w = make(6, 20)
    single = call(h, qkv, w, 0.7)
    stacked = call(h, qkv, _stack([w] * B), torch.full((B,), 0.7))
    torch.testing.assert_close(stacked, single, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stack_of_different_weights_equals_each_sample_alone(case: str) -> None:
    call, make = CASES[case]
    h = _rand(B * ROWS, N, C, seed=30)
    qkv = tuple(_rand(B * ROWS, N, C, seed=31 + i) for i in range(3))
    ws = [make(6, 40 + 10 * b) for b in range(B)]
    scales = torch.tensor([0.2, 0.8, 1.5])
    mixed = call(h, qkv, _stack(ws), scales)
    for b in range(B):
        alone = call(_rows(h, b), tuple(_rows(t, b) for t in qkv), ws[b], float(scales[b]))
        torch.testing.assert_close(_rows(mixed, b), alone, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("case", ["patt", "adaptmlp", "lora"])
def test_zero_padded_bottlenecks_are_exact(case: str) -> None:
    """Tasks of widths 3, 5 and 8 padded to 8 in one stack give each task's own unpadded result."""
    call, make = CASES[case]
    h = _rand(B * ROWS, N, C, seed=50)
    qkv = tuple(_rand(B * ROWS, N, C, seed=51 + i) for i in range(3))
    widths = (3, 5, 8)
    ws = [make(d, 60 + 10 * b) for b, d in enumerate(widths)]
    if case == "lora":
        padded = []
        for w, d in zip(ws, widths, strict=True):
            p = dict(w)
            for t in ("q", "v"):
                p[f"{t}.A"] = torch.cat([w[f"{t}.A"], torch.zeros(8 - d, C)])
                p[f"{t}.B"] = torch.cat([w[f"{t}.B"], torch.zeros(C, 8 - d)], dim=1)
            padded.append(p)
        scales = torch.tensor([16.0 / d for d in widths])  # α/r of each task's true rank
    else:
        padded = [_pad_bottleneck(w, 8) for w in ws]
        scales = torch.tensor([0.8, 0.8, 0.8])
    mixed = call(h, qkv, _stack(padded), scales)
    for b in range(B):
        alone = call(_rows(h, b), tuple(_rows(t, b) for t in qkv), ws[b], float(scales[b]))
        torch.testing.assert_close(_rows(mixed, b), alone, atol=ATOL, rtol=1e-5)


def test_prefix_stack() -> None:
    n, d = 4, 6

    def weights(seed: int) -> dict[str, torch.Tensor]:
        return {
            "embedding.weight": _rand(n, C, seed=seed), "fc1.weight": _rand(d, C, seed=seed + 1),
            "fc1.bias": _rand(d, seed=seed + 2), "fc2.weight": _rand(2 * C, d, seed=seed + 3),
            "fc2.bias": _rand(2 * C, seed=seed + 4),
        }

    ws = [weights(70 + 10 * b) for b in range(B)]
    k, v = PF.prefix_kv(_stack(ws), B * ROWS)
    assert k.shape == (B * ROWS, n, C)
    for b in range(B):
        k1, v1 = PF.prefix_kv(ws[b], ROWS)
        assert k1.shape == (n, C)
        torch.testing.assert_close(_rows(k, b), k1.expand(ROWS, -1, -1), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(_rows(v, b), v1.expand(ROWS, -1, -1), atol=ATOL, rtol=1e-5)


def test_vpt_stack_insert_remove() -> None:
    x = _rand(B * ROWS, N, C, seed=80)
    prompts = [_rand(2, C, seed=81 + b) for b in range(B)]
    mixed = PF.vpt_insert(x, torch.stack(prompts), at=1)
    assert mixed.shape == (B * ROWS, N + 2, C)
    for b in range(B):
        torch.testing.assert_close(_rows(mixed, b), PF.vpt_insert(_rows(x, b), prompts[b], at=1))
    torch.testing.assert_close(PF.vpt_remove(mixed, 2, at=1), x)


def test_st_adapter_stack_and_padding() -> None:
    t, gh, gw, ca = ROWS, 2, 3, 4  # ROWS frames per clip here

    def weights(width: int, seed: int) -> dict[str, torch.Tensor]:
        return {
            "fc1.weight": _rand(width, C, seed=seed), "fc1.bias": _rand(width, seed=seed + 1),
            "conv.weight": _rand(width, 1, 3, 1, 1, seed=seed + 2), "conv.bias": _rand(width, seed=seed + 3),
            "fc2.weight": _rand(C, width, seed=seed + 4), "fc2.bias": _rand(C, seed=seed + 5),
        }

    def pad(w: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        extra = ca - width
        return {
            "fc1.weight": torch.cat([w["fc1.weight"], torch.zeros(extra, C)]),
            "fc1.bias": torch.cat([w["fc1.bias"], torch.zeros(extra)]),
            "conv.weight": torch.cat([w["conv.weight"], torch.zeros(extra, 1, 3, 1, 1)]),
            "conv.bias": torch.cat([w["conv.bias"], torch.zeros(extra)]),
            "fc2.weight": torch.cat([w["fc2.weight"], torch.zeros(C, extra)], dim=1),
            "fc2.bias": w["fc2.bias"],
        }

    x = _rand(B * t, 1 + gh * gw, C, seed=90)
    widths = (2, 3, 4)
    ws = [weights(wd, 100 + 10 * b) for b, wd in enumerate(widths)]
    kw = {"frames": t, "grid_hw": (gh, gw), "num_prefix_tokens": 1}
    mixed = PF.st_adapter(x, _stack([pad(w, wd) for w, wd in zip(ws, widths, strict=True)]), **kw)
    for b in range(B):
        torch.testing.assert_close(_rows(mixed, b), PF.st_adapter(_rows(x, b), ws[b], **kw), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(mixed[:, 0], x[:, 0])  # CLS untouched
    same = PF.st_adapter(x, _stack([ws[2]] * B), **kw)
    torch.testing.assert_close(same, PF.st_adapter(x, ws[2], **kw), atol=ATOL, rtol=1e-5)


def test_head_and_add_bias_stacks() -> None:
    feats = _rand(B, C, seed=110)
    heads = [{"weight": _rand(5, C, seed=111 + b), "bias": _rand(5, seed=120 + b)} for b in range(B)]
    logits = PF.head(feats, _stack(heads))
    for b in range(B):
        torch.testing.assert_close(logits[b], PF.head(feats[b:b + 1], heads[b])[0], atol=ATOL, rtol=1e-5)
    y = _rand(B * ROWS, N, C, seed=130)
    biases = _rand(B, C, seed=131)
    out = PF.add_bias(y, biases)
    for b in range(B):
        torch.testing.assert_close(_rows(out, b), _rows(y, b) + biases[b])


# ------------------------------------------------------------ engine-style: a mixed batch through the hooks
class _StackedBapat(BlockAdapter):
    """What a mixed-task engine does: the same functions, with per-sample stacks of two tasks' weights."""

    def __init__(self, patt: dict[str, torch.Tensor], mlp: dict[str, torch.Tensor], s_patt, s_mlp) -> None:
        super().__init__()
        self.patt, self.mlp, self.s_patt, self.s_mlp = patt, mlp, s_patt, s_mlp

    def adapt_qkv(self, h, q, k, v, ctx):
        return PF.patt_qkv(h, q, k, v, self.patt, scale=self.s_patt, positions=("k", "v"))

    def adapt_mlp(self, h, m, ctx):
        return PF.adaptmlp(h, m, self.mlp, scale=self.s_mlp)


@pytest.mark.parametrize("backbone_name", ["swin3d-tiny", "vit-tiny"])
def test_mixed_batch_through_hooks_matches_each_model(backbone_name: str) -> None:
    """Two BAPAT tasks of different PATT widths (8 and 12, padded to 12) in one backbone forward."""
    backbone = create_backbone(backbone_name)
    models = [
        create_model(backbone, make_config("bapat", bottleneck=d), 4 + i, seed=i) for i, d in enumerate((8, 12))
    ]
    with torch.no_grad():
        for m in models:  # move away from the zero init so every term matters
            for p in m.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
    spec = backbone.input_spec
    x = torch.randn(2, 3, spec.num_frames, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    states = [m.trainable_state_dict() for m in models]
    for i, block in enumerate(backbone.adaptable_blocks()):
        patt = [_pad_bottleneck({k: s[f"blocks.{i}.patt.{k}"] for k in _bottleneck_keys()}, 12) for s in states]
        mlp = [{k: s[f"blocks.{i}.adaptmlp.{k}"] for k in _bottleneck_keys()} for s in states]
        block.adapters["engine"] = _StackedBapat(_stack(patt), _stack(mlp), torch.tensor([0.8, 0.8]), 0.1)
    with torch.no_grad():
        feats = backbone(x)  # (2, C): one forward for both tasks
        for b, m in enumerate(models):
            logits = PF.head(feats[b:b + 1], {"weight": states[b]["head.weight"], "bias": states[b]["head.bias"]})
            torch.testing.assert_close(logits, m(x[b:b + 1]), atol=1e-4, rtol=1e-4)


def _bottleneck_keys() -> tuple[str, ...]:
    return ("down.weight", "down.bias", "up.weight", "up.bias")
