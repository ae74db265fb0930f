"""The demo backbone's convolutional stem: same token grid as the linear patchify, trained with BatchNorm, and the
fold that removes the norms is exact (so the served backbone has no batch statistics for adapter training to move).
The reference for the fold is torch's own Conv3d → batch norm (eval) → ReLU, not the folded code path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vpetl.backbones import create_backbone
from vpetl.backbones.layers import ConvStem3D


def _trained_stats(stem: ConvStem3D) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (as training would)."""
    stem.add_batch_norm()
    stem.train()
    with torch.no_grad():
        for _ in range(3):
            stem(torch.randn(4, 3, 4, 32, 32) * 2 + 0.5)
        for norm in stem.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.3, 0.3)
    stem.eval()


def test_fold_batch_norm_matches_torch_conv_bn_relu() -> None:
    torch.manual_seed(0)
    stem = ConvStem3D((2, 16, 16), 3, 24, (8, 16))
    _trained_stats(stem)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = x
        for conv, norm in zip(stem.stem, stem.norms, strict=True):
            # torch's Conv3d and its eval-mode batch norm (running statistics) over (B, T, H, W)
            ref = F.relu(F.batch_norm(conv(ref), norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                      training=False, eps=norm.eps))
        ref = stem.proj(ref)
        stem.fold_batch_norm()
        got = stem(x)
    assert stem.norms is None
    assert got.shape == (2, 24, 2, 2, 2)  # the linear patchify's grid: T/2, H/16, W/16
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_folded_stem_state_dict_is_the_served_layout() -> None:
    """A pretrained (then folded) stem saves exactly the keys a fresh ``vpetl-demo`` has: strict loads work."""
    served = create_backbone("vpetl-demo")
    trained = create_backbone("vpetl-demo", freeze=False)
    _trained_stats(trained.patch_embed)
    assert any("norms" in k for k in trained.state_dict())
    trained.patch_embed.fold_batch_norm()
    assert trained.state_dict().keys() == served.state_dict().keys()
    assert not any("norm" in k for k in served.state_dict() if k.startswith("patch_embed"))


def test_demo_backbone_uses_the_conv_stem_on_the_same_grid() -> None:
    backbone = create_backbone("vpetl-demo")
    assert isinstance(backbone.patch_embed, ConvStem3D)
    assert backbone.grid(8, 64, 64) == (4, 4, 4)
    tokens = backbone.forward_tokens(torch.randn(1, 3, 8, 64, 64))
    assert tokens.shape == (1, 64, 128)


def test_training_forward_and_gradients_match_torch_conv3d_batchnorm3d() -> None:
    """The stem runs its (1, 3, 3) convolutions frame by frame as 2-D convolutions and the tubelet projection as a
    Linear (for speed); the reference is torch's Conv3d → BatchNorm3d (training mode) → ReLU → Conv3d on the same
    parameters: outputs, running statistics and every parameter's gradient agree."""
    torch.manual_seed(0)
    stem = ConvStem3D((2, 16, 16), 3, 24, (8, 16))
    stem.add_batch_norm()
    stem.train()
    ref_norms = [torch.nn.BatchNorm3d(conv.out_channels) for conv in stem.stem]
    x = torch.randn(3, 3, 4, 32, 48) * 2 + 0.5  # H ≠ W, so a swapped axis would show

    ref = x
    for conv, norm in zip(stem.stem, ref_norms, strict=True):
        ref = F.relu(norm(conv(ref)))
    ref = stem.proj(ref)
    ref.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in stem.named_parameters() if p.grad is not None}
    stem.zero_grad()

    got = stem(x)
    got.square().mean().backward()
    assert got.shape == (3, 24, 2, 2, 3)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(stem.norms, ref_norms, strict=True):
        torch.testing.assert_close(mine.running_mean, theirs.running_mean)
        torch.testing.assert_close(mine.running_var, theirs.running_var)
    for name, grad in ref_grads.items():
        if name.startswith("norms."):
            continue  # reference norms are separate modules; their gradients are compared through the convs'
        torch.testing.assert_close(dict(stem.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)
    assert {n for n in ref_grads if not n.startswith("norms.")} == {n for n, _ in stem.named_parameters()
                                                                    if not n.startswith("norms.")}
