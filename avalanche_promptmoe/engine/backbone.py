"""Build a frozen timm VisionTransformer from a hub name, a local weight file or a built model.

Offline first: a hub download is attempted only when the weights are already in the local
Hugging Face cache or the hub is reachable; with ``HF_HUB_OFFLINE=1`` and no cached weights the
call fails at once with one error that says to pass ``checkpoint_path=``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["BackboneError", "create_backbone", "freeze", "is_vision_transformer"]


class BackboneError(ValueError):
    """A backbone could not be built or is not a supported timm ViT."""


def is_vision_transformer(model: nn.Module) -> bool:
    """True for timm ``VisionTransformer`` instances (any size, patch and image size)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and put the model in eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _weights_cached(name: str) -> bool:
    """Whether timm's pretrained weights for ``name`` are in the local HF cache."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tags are reported by timm.create_model itself
        return False
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    hub_id = cfg.hf_hub_id
    filenames = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
    return any(
        isinstance(try_to_load_from_cache(hub_id, f), str) for f in filenames if f
    )


def create_backbone(
    name_or_model: str | nn.Module,
    *,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Return a frozen timm ``VisionTransformer`` in eval mode.

    Args:
        name_or_model: a timm model name (``"vit_base_patch16_224.orig_in21k"``) or an already built
            timm ``VisionTransformer`` (frozen in place and returned).
        pretrained: load the timm hub weights for ``name_or_model`` (needs the network or the local
            Hugging Face cache).
        checkpoint_path: a local weight file (a timm/PyTorch state dict, ``.pth``/``.safetensors``/
            ``.npz``), loaded through ``pretrained_cfg_overlay=dict(file=...)``; a mismatched head is
            dropped. Implies ``pretrained=True``.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``patch_size``, ...).
            ``num_classes`` defaults to 0, so the model returns pooled pre-logit features.

    Raises:
        BackboneError: not a ViT, an unknown name, a missing ``checkpoint_path``, or pretrained
            weights that are neither cached nor downloadable offline.
    """
    if isinstance(name_or_model, nn.Module):
        if checkpoint_path is not None or pretrained or timm_kwargs:
            raise BackboneError(
                "backbone: pass `pretrained`, `checkpoint_path` and timm kwargs only with a timm model "
                "name, not with an already built model"
            )
        if not is_vision_transformer(name_or_model):
            raise BackboneError(
                f"backbone: expected a timm VisionTransformer, got {type(name_or_model).__name__}"
            )
        return freeze(name_or_model)
    if not isinstance(name_or_model, str):
        raise BackboneError(
            f"backbone: expected a timm model name or a VisionTransformer, got {type(name_or_model).__name__}"
        )

    import timm

    name = name_or_model
    timm_kwargs.setdefault("num_classes", 0)
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"checkpoint_path: weight file {str(path)!r} does not exist; pass the path of a local "
                f"timm/PyTorch state dict for {name!r}"
            )
        overlay = dict(timm_kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay.update(file=str(path), custom_load=path.suffix == ".npz")
        pretrained = True
        timm_kwargs["pretrained_cfg_overlay"] = overlay
    elif pretrained and _hub_offline() and not _weights_cached(name):
        raise BackboneError(
            f"pretrained: the weights of {name!r} are not in the local cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1); download them once, or pass checkpoint_path=<local weight file>"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except RuntimeError as err:  # timm raises RuntimeError for unknown names
        raise BackboneError(f"backbone: timm could not build {name!r}: {err}") from err
    except (OSError, ConnectionError) as err:
        hint = "pass checkpoint_path=<local weight file>" if checkpoint_path is None else "check the file"
        raise BackboneError(f"pretrained: could not load weights for {name!r} ({err}); {hint}") from err
    if not is_vision_transformer(model):
        raise BackboneError(f"backbone: {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    model = model.float()  # local files may hold fp16 weights
    return freeze(model)


def backbone_dims(model: nn.Module) -> dict[str, int]:
    """Dimensions read from a timm ViT: ``depth``, ``embed_dim``, ``num_heads``, ``head_dim``."""
    attn = model.blocks[0].attn
    attn = getattr(attn, "attn", attn)  # unwrap PrefixAttention
    return dict(
        depth=len(model.blocks),
        embed_dim=int(model.embed_dim),
        num_heads=int(attn.num_heads),
        head_dim=int(attn.head_dim),
    )


