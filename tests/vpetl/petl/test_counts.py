"""Pinned parameter counts on the full-size backbones (PETL_SPEC Part B §6; verified against the released code).

Each backbone is built once per module; models attach to it in turn (``share_backbone=True``) and detach again.
"""

from __future__ import annotations

from typing import Any

import pytest

from vpetl.backbones import Backbone, create_backbone
from vpetl.petl import create_model, make_config


@pytest.fixture(scope="module")
def swin_b() -> Backbone:
    return create_backbone("swin3d-b")


@pytest.fixture(scope="module")
def videomae_b() -> Backbone:
    return create_backbone("videomae-b")


@pytest.fixture(scope="module")
def vit_b16() -> Backbone:
    return create_backbone("vit-b16")


def counts(backbone: Backbone, method: str, num_classes: int, **options: Any) -> dict[str, Any]:
    model = create_model(backbone, make_config(method, **options), num_classes, share_backbone=True)
    try:
        return model.parameter_counts()
    finally:
        model.remove_adapters()


def test_swin_b_bapat(swin_b: Backbone) -> None:
    c = counts(swin_b, "bapat", 174)
    assert c["trainable"] == 6_379_438  # paper Table 3 "6.38M", reproduced at source
    assert c["components"] == {"patt": 4_647_424, "adaptmlp": 1_553_664, "head": 178_350}
    assert c["backbone"] == 87_638_984
    assert c["percent_of_backbone"] == pytest.approx(100 * 6_379_438 / 87_638_984)
    assert counts(swin_b, "bapat", 51)["trainable"] == 6_253_363


def test_swin_b_parts(swin_b: Backbone) -> None:
    assert counts(swin_b, "patt", 174)["trainable"] == 4_825_774
    assert counts(swin_b, "adaptmlp", 174)["trainable"] == 1_732_014
    head_only = counts(swin_b, "linear", 174)
    assert head_only["trainable"] == head_only["head"] == 178_350 and head_only["adapter"] == 0


def test_swin_b_head_frozen_keeps_head_in_state(swin_b: Backbone) -> None:
    c = counts(swin_b, "bapat", 174, train_head=False)
    assert c["trainable"] == 6_379_438 - 178_350 and c["state"] == 6_379_438


def test_videomae_b_adaptmlp(videomae_b: Backbone) -> None:
    c = counts(videomae_b, "adaptmlp", 174, bottleneck=64)
    assert c["adapter"] == 1_189_632  # AdaptFormer-64, 12·(2·768·64 + 64 + 768)
    assert c["head"] == 768 * 174 + 174
    assert c["backbone"] == 86_225_664 + 1_536  # patch_embed + 12 blocks (§3.1), plus fc_norm


@pytest.mark.parametrize("d", [64, 128])
def test_videomae_b_patt_per_block(videomae_b: Backbone, d: int) -> None:
    assert counts(videomae_b, "patt", 10, bottleneck=d)["adapter"] == 12 * (2305 * d + 1536)


@pytest.mark.parametrize("n", [1, 8])
def test_videomae_b_vpt_deep(videomae_b: Backbone, n: int) -> None:
    assert counts(videomae_b, "vpt", 10, num_tokens=n)["adapter"] == 12 * n * 768


def test_vit_b16_st_adapter(vit_b16: Backbone) -> None:
    assert counts(vit_b16, "st_adapter", 10, num_layers=1)["adapter"] == 592_512  # one adapter: 2·C·Ca + 5·Ca + C
    assert counts(vit_b16, "st_adapter", 10)["adapter"] == 7_110_144  # adapter12x384
    assert counts(vit_b16, "st_adapter", 10, positions=("pre_attn", "pre_mlp"))["adapter"] == 14_220_288  # 24x384


def test_inspect_method_report_maps_flags(swin_b: Backbone) -> None:
    """``vpetl inspect --method`` (its report function, without a subprocess): flags map to each method's options."""
    from server.cli.inspect import method_report
    from vpetl.errors import InvalidRequest

    report = method_report(swin_b, "bapat", 174, bottleneck=128, positions="k,v", scale=0.8)
    assert report["trainable"] == 6_379_438 and report["adapter"] == 6_201_088 and report["head"] == 178_350
    assert report["config"]["positions"] == ["k", "v"] and report["servable"] is True
    lora = method_report(swin_b, "lora", 10, bottleneck=4, positions="q,k,v", scale=None)
    assert lora["config"]["rank"] == 4 and lora["config"]["targets"] == ["q", "k", "v"]
    assert not any(len(b.adapters) for b in swin_b.adaptable_blocks())  # detached again
    with pytest.raises(InvalidRequest, match="no bottleneck option"):
        method_report(swin_b, "linear", 10, bottleneck=8, positions=None, scale=None)
