"""Real checkpoints: read safely, convert with one pure function per source format, load strictly.

Readers: ``.safetensors`` or ``torch.load(weights_only=True)`` — never a full unpickle. Converters take a state dict
and return one in vpetl's key layout; they never touch a model. ``load_checkpoint`` then compares key sets and
shapes and raises :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys.

Source formats:
- ``videomae``: MCG-NJU VideoMAE ``.pth`` (container ``model``/``module``; pretrain keys under ``encoder.``,
  fused ``attn.qkv.weight`` split into q/k/v rows; decoder / mask token / classifier head dropped).
- ``videomae-hf``: HF transformers ``VideoMAEModel`` / ``VideoMAEForVideoClassification`` state dicts.
- ``swin3d``: official Video-Swin-Transformer ``.pth`` (container ``state_dict``, ``backbone.`` prefix,
  ``cls_head.*`` dropped, ``relative_position_index`` buffers recomputed).
- ``clip``: OpenAI CLIP / open_clip visual tower (bare, or a whole model with ``visual.`` keys), for
  ``clip-vit-b16``: table and strict converter in :mod:`vpetl.backbones.clip`.
- ``vpetl``: vpetl's own layout (e.g. the demo backbone written by ``vpetl pretrain``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from vpetl.backbones.base import Backbone
from vpetl.backbones.clip import convert_clip_visual, is_clip_visual
from vpetl.errors import CheckpointError
from vpetl.formats.keymaps import videomae_hf_to_vpetl

Tensor = torch.Tensor
StateDict = dict[str, Tensor]


def read_state_dict(path: str | Path) -> StateDict:
    """Read tensors from ``.safetensors`` or a torch file with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as fh:
        head = fh.read(8)
    if len(head) < 8:
        raise CheckpointError(f"checkpoint {path} is empty or truncated ({len(head)} bytes)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path} with torch.load(weights_only=True): {e}. vpetl never unpickles arbitrary objects; "
            "convert the file to .safetensors or a plain tensor dict."
        ) from e
    return unwrap_container(obj)


def unwrap_container(obj: object) -> StateDict:
    """Checkpoints nest the tensors under ``model`` / ``module`` / ``state_dict``; return the tensor dict."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors")
    return tensors


# --------------------------------------------------------------------------------------------------- VideoMAE
_VIDEOMAE_DROP = re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|pos_embed$|head\.|norm\.)")


def convert_videomae_original(sd: Mapping[str, Tensor]) -> StateDict:
    """MCG-NJU VideoMAE (pretrain with ``encoder.`` prefix, or fine-tuned) -> vpetl ``VideoViT`` keys.

    Pretrain checkpoints have no ``fc_norm`` (the encoder ends in ``norm``, used per token without mean pooling);
    like the original fine-tuning code we drop ``norm`` and start ``fc_norm`` at the LayerNorm identity.
    """
    sd = dict(sd)
    pretrain = any(k.startswith("encoder.") for k in sd)
    if pretrain:
        sd = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    out: StateDict = {}
    for key, value in sd.items():
        if _VIDEOMAE_DROP.match(key):
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.weight", key)
        if m:
            q, k, v = value.chunk(3, dim=0)  # rows 0:C -> q, C:2C -> k, 2C:3C -> v
            for name, part in (("q", q), ("k", k), ("v", v)):
                out[f"blocks.{m.group(1)}.attn.{name}.weight"] = part.clone()
            continue
        out[key] = value
    if "fc_norm.weight" not in out:
        width = out["patch_embed.proj.weight"].shape[0]
        out["fc_norm.weight"], out["fc_norm.bias"] = torch.ones(width), torch.zeros(width)
    return out


def convert_videomae_hf(sd: Mapping[str, Tensor]) -> StateDict:
    """HF transformers VideoMAE (``videomae.`` prefix optional) -> vpetl ``VideoViT`` keys.

    HF's ``layernorm`` exists only with ``use_mean_pooling=False`` and is not part of a mean-pooled encoder: refused
    by the strict load (as an unexpected key) rather than silently dropped. ``classifier.*`` is a task head: dropped.
    """
    out: StateDict = {}
    for key, value in sd.items():
        k = key[len("videomae.") :] if key.startswith("videomae.") else key
        if k.startswith(("classifier.", "decoder.", "encoder_to_decoder.")) or k in ("mask_token",):
            continue
        if k == "embeddings.position_embeddings":  # fixed sin-cos, regenerated by the model
            continue
        # One table for import and export (vpetl.formats.keymaps); unknown names are kept as they are, so the
        # strict load reports them.
        out[videomae_hf_to_vpetl(k) or k] = value
    if "fc_norm.weight" not in out:
        width = out["patch_embed.proj.weight"].shape[0]
        out["fc_norm.weight"], out["fc_norm.bias"] = torch.ones(width), torch.zeros(width)
    return out


# --------------------------------------------------------------------------------------------------- Video Swin
def convert_swin3d_official(sd: Mapping[str, Tensor]) -> StateDict:
    """Official Video Swin (mmaction) -> vpetl ``SwinTransformer3D`` keys: strip ``backbone.``, drop the
    classification head and the recomputable ``relative_position_index`` buffers."""
    has_prefix = any(k.startswith("backbone.") for k in sd)
    out: StateDict = {}
    for key, value in sd.items():
        if has_prefix:
            if not key.startswith("backbone."):
                continue  # cls_head.*, etc.
            key = key[len("backbone.") :]
        if key.endswith("relative_position_index") or key.startswith("cls_head."):
            continue
        out[key] = value
    return out


def convert_identity(sd: Mapping[str, Tensor]) -> StateDict:
    return dict(sd)


CONVERTERS: dict[str, Callable[[Mapping[str, Tensor]], StateDict]] = {
    "videomae": convert_videomae_original,
    "videomae-hf": convert_videomae_hf,
    "swin3d": convert_swin3d_official,
    "clip": convert_clip_visual,
    "vpetl": convert_identity,
}


def detect_format(sd: Mapping[str, Tensor]) -> str:
    """Recognise the source layout from telltale keys."""
    keys = list(sd)
    if is_clip_visual(sd):
        return "clip"
    if any(".encoder.layer." in k or k.startswith("encoder.layer.") for k in keys):
        return "videomae-hf"
    if any(k.startswith("backbone.") for k in keys) or any("relative_position_index" in k for k in keys):
        return "swin3d"
    if any(k.endswith("attn.qkv.weight") and k.startswith(("encoder.blocks.", "blocks.")) for k in keys) and any(
        k.endswith("attn.q_bias") for k in keys
    ):
        return "videomae"
    return "vpetl"


def load_checkpoint(model: Backbone, source: str | Path | Mapping[str, Tensor], fmt: str | None = None) -> str:
    """Convert and strictly load a checkpoint into ``model``; return the detected format.

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / mis-shaped keys (each listed by name).
    """
    sd = read_state_dict(source) if isinstance(source, str | Path) else unwrap_container(source)
    fmt = fmt or detect_format(sd)
    if fmt not in CONVERTERS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(CONVERTERS)}")
    converted = CONVERTERS[fmt](sd)
    expected = model.frozen_state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(converted)
        if tuple(converted[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mis_shaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(f"checkpoint ({fmt} format) does not match backbone {model.name!r}: " + "; ".join(parts))
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(converted[key].to(tensor.dtype))
    model.sha256(refresh=True)
    return fmt


def save_backbone(model: Backbone, path: str | Path) -> None:
    """Write the frozen weights as ``.safetensors`` in vpetl's own layout."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.frozen_state_dict().items()}, str(path), metadata={"format": "pt"})
