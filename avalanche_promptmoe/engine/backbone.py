"""Build a frozen timm VisionTransformer from a hub name, a local weight file or a built model.

Offline first: a hub download is attempted only when the weights are already in the local
Hugging Face cache or the hub is reachable; with ``HF_HUB_OFFLINE=1`` and no cached weights the
call fails at once with one error that says to pass ``checkpoint_path=``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .weights import BackboneError, read_weight_file, verify_loaded_weights, verify_npz_weights

__all__ = ["BackboneError", "create_backbone", "freeze", "is_vision_transformer"]

log = logging.getLogger(__name__)




def is_vision_transformer(model: nn.Module) -> bool:
    """True for timm ``VisionTransformer`` instances (any size, patch and image size)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and put the model in eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _check_built_model(model: nn.Module) -> nn.Module:
    """A built ViT is usable as a frozen feature extractor: no classification head, not already
    wrapped by another PrefixViT, float32 (a floating model of another dtype is cast, with a warning)."""
    from .prefix_attention import PrefixAttention

    if any(isinstance(m, PrefixAttention) for m in model.modules()):
        raise BackboneError(
            "backbone: this ViT object is already used by another strategy or PrefixViT (its attention layers "
            "are wrapped); pass a copy (copy.deepcopy(vit)) or build a new model for each strategy"
        )
    if getattr(model, "num_classes", 0) and not isinstance(getattr(model, "head", None), nn.Identity):
        raise BackboneError(
            f"backbone: the ViT still has its classification head ({model.num_classes} classes); the methods "
            f"bring their own heads on the pooled features — build it with num_classes=0 or call "
            f"vit.reset_classifier(0) first"
        )
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes and dtypes != {torch.float32}:
        if not all(d.is_floating_point for d in dtypes):
            raise BackboneError(f"backbone: parameters of dtype {sorted(map(str, dtypes))}; expected float32")
        warnings.warn(
            f"backbone: parameters of dtype {', '.join(sorted(str(d) for d in dtypes))} cast to torch.float32 "
            f"in place (the strategies run the frozen backbone in float32; bf16 autocast on CUDA)",
            UserWarning, stacklevel=3,
        )
        model.float()
    return model


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


def _cached_hub_file(name: str) -> Path | None:
    """The locally cached weight file timm's hub route reads for ``name`` (None when unknown)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
        from huggingface_hub import try_to_load_from_cache
    except Exception:  # noqa: BLE001 - no cfg or no huggingface_hub: nothing to locate
        return None
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        return None
    for filename in [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]:
        if filename:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    return None


def _verify_weights(model: nn.Module, path: Path, state: dict | None) -> None:
    state = read_weight_file(path) if state is None else state
    if path.suffix == ".npz":
        verify_npz_weights(model, state, path)
    else:
        verify_loaded_weights(model, state, path)


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

    Weights load strictly (engine/weights.py): after timm loaded a file (or its hub weights), every
    backbone tensor of the model must equal the file's (head / pre-logits keys excepted), and the
    depth, width and patch the file implies must be the model's.

    Raises:
        BackboneError: not a ViT, an unknown name, a missing ``checkpoint_path``, pretrained
            weights that are neither cached nor downloadable offline, a file that is not a
            checkpoint ("not a PyTorch checkpoint"), or weights that do not fit the model (missing /
            unexpected / mismatched keys listed with counts, or another depth / width / patch).
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
        return freeze(_check_built_model(name_or_model))
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
        file_state = read_weight_file(path)  # "not a PyTorch checkpoint" before timm sees it
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
    except (RuntimeError, KeyError, ValueError) as err:  # unknown names; size mismatches while loading
        if checkpoint_path is not None:  # explain a file that does not fit, key by key
            plain = {k: v for k, v in timm_kwargs.items() if k != "pretrained_cfg_overlay"}
            try:
                probe = timm.create_model(name, pretrained=False, **plain)
            except Exception:  # noqa: BLE001 - the name itself is the problem: reported below
                probe = None
            if probe is not None and is_vision_transformer(probe):
                _verify_weights(probe, path, file_state if path.suffix != ".npz" else None)
        raise BackboneError(f"backbone: timm could not build {name!r}: {err}") from err
    except (OSError, ConnectionError) as err:
        hint = "pass checkpoint_path=<local weight file>" if checkpoint_path is None else "check the file"
        raise BackboneError(f"pretrained: could not load weights for {name!r} ({err}); {hint}") from err
    if not is_vision_transformer(model):
        raise BackboneError(f"backbone: {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    if checkpoint_path is not None:
        _verify_weights(model, path, file_state)
    elif pretrained:
        hub_file = _cached_hub_file(name)
        if hub_file is None:
            log.warning("pretrained: could not locate the weight file timm loaded for %r; not verified", name)
        else:
            try:
                _verify_weights(model, hub_file, None)
            except BackboneError as err:
                raise BackboneError(f"pretrained ({name!r} from the hub cache): {str(err).split(': ', 1)[1]}") from err
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


