"""``python -m avalanche_promptmoe.kit build --out DIR``: rebuild the offline kit from public sources.

1. The 32-px images (:mod:`~avalanche_promptmoe.kit.sources`): ``--images FILE|DIR`` (a local copy),
   ``--from-github`` (the public repository named in ``docs/DATA.md``, downloaded), or
   ``--tiny-imagenet-200 ZIP`` / ``--download-tiny-imagenet-200`` (the 64-px original, downsampled).
   They are packed into ``tinyimagenet32-jpeg.tar.xz`` and checked image by image against the shipped
   kit's content digests (:mod:`~avalanche_promptmoe.kit.digests`).
2. The class split (sorted wnids, ``RandomState(0).permutation``, the first half upstream) and the
   reference ViT, pretrained on the upstream classes (:mod:`~avalanche_promptmoe.kit.pretrain`,
   kit v1's recipe; ``--device cuda`` takes minutes, 2 CPU cores about an hour).
3. ``reference_vit.pth`` (fp16), ``reference_vit.json`` (kit v1's schema, plus the sha256 of every
   file and the full recipe) with the measured upstream accuracy and downstream probe / NCM, and
   ``kit_bounds.json``: the seq / NCM / joint-probe bounds of the kit and CI protocols.
"""

from __future__ import annotations

import argparse
import json
import logging
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from avalanche_promptmoe.kit.locate import (
    KIT_META_NAME,
    KIT_TAR_NAME,
    KIT_WEIGHTS_NAME,
    KitError,
    user_kit_dir,
)

logger = logging.getLogger(__name__)

__all__ = ["V1_ARCHITECTURE", "PROTOCOLS", "class_split", "build_kit", "add_build_arguments"]

#: kit v1's backbone: timm name and keywords (3.6 M parameters, 16 patch tokens + [CLS])
V1_ARCHITECTURE: dict[str, Any] = {
    "timm_name": "vit_tiny_patch16_224",
    "timm_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 192, "depth": 8, "num_heads": 3},
}
#: the protocols whose bounds a build measures: the kit protocol (docs/results.md, configs
#: experiments/configs/tinyimagenet32) and the CI protocol (ci/README.md), with their seq settings
PROTOCOLS: dict[str, dict[str, Any]] = {
    "kit": {"protocol": {"n_experiences": 10, "seed": 0, "train_per_class": 100, "test_per_class": 50},
            "seq": {"epochs": 3, "train_mb_size": 64, "eval_mb_size": 256}},
    "ci": {"protocol": {"n_experiences": 10, "seed": 0, "train_per_class": 30, "test_per_class": 20},
           "seq": {"epochs": 2, "train_mb_size": 32, "eval_mb_size": 256}},
}
SPLIT_RULE = "sorted(wnids), numpy.random.RandomState(0).permutation(200); first 100 upstream"


def class_split(wnids: list[str]) -> tuple[list[str], list[str]]:
    """``(upstream, downstream)``: permute the sorted wnids with ``RandomState(0)``; the first half is upstream."""
    order = sorted(wnids)
    perm = np.random.RandomState(0).permutation(len(order))
    half = len(order) // 2
    return [order[i] for i in perm[:half]], [order[i] for i in perm[half:]]


def _images(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """Pack the chosen image source into ``out/tinyimagenet32-jpeg.tar.xz``; returns it and the route."""
    from avalanche_promptmoe.kit import sources

    downloads = out / "downloads"
    if args.images:
        src, route = Path(args.images), "local"
    elif args.from_github:
        src, route = sources.download(sources.GITHUB_ARCHIVE_URL, downloads / "imageet32x32.zip"), "github"
    elif args.tiny_imagenet_200 or args.download_tiny_imagenet_200:
        src = Path(args.tiny_imagenet_200) if args.tiny_imagenet_200 else sources.download(
            sources.TINY_IMAGENET_200_URL, downloads / "tiny-imagenet-200.zip")
        route = "tiny-imagenet-200 (64 px, downsampled)"
    else:
        raise KitError("kit build: name the images: --images FILE|DIR, --from-github, --tiny-imagenet-200 ZIP "
                       "or --download-tiny-imagenet-200")
    return sources.pack_kit_tar(src, out / KIT_TAR_NAME, progress=not args.quiet), route


def _check_digests(tar: Path, out: Path, route: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the per-image digest list and compare it with the shipped kit's (or ``--reference-digests``)."""
    from avalanche_promptmoe.kit import digests as dg

    table = dg.image_digests(tar, progress=not args.quiet)
    (out / "tinyimagenet32_digests.txt").write_text(dg.digest_list(table))
    summary = dg.digest_summary(table)
    reference = (json.loads(Path(args.reference_digests).read_text()) if args.reference_digests
                 else dg.shipped_digest_summary())
    diff = dg.compare_digests(summary, reference)
    summary["matches_reference"] = not diff
    if diff:
        msg = (f"{tar}: {len(diff)} image groups differ from the reference digests ({', '.join(diff[:5])}...): "
               "these are not the shipped kit's images")
        if route.startswith("tiny-imagenet-200") or args.allow_digest_mismatch:
            logger.warning("%s; going on (%s)", msg, "64-px route: resampled pixels differ" if
                           route.startswith("tiny") else "--allow-digest-mismatch")
        else:
            raise KitError(f"{msg}. Pass --allow-digest-mismatch to build a kit from them anyway.")
    return summary


def _arch(args: argparse.Namespace) -> dict[str, Any]:
    arch = json.loads(json.dumps(V1_ARCHITECTURE))
    if args.timm_kwargs:
        arch["timm_kwargs"].update(json.loads(args.timm_kwargs))
    return arch


def _pretrain(tar: Path, up: list[str], down: list[str], args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """Pretrain on ``up``; returns the model, the ``measured`` figures and the recipe."""
    import timm
    import torch

    from avalanche_promptmoe.kit.arrays import decode_kit_tar
    from avalanche_promptmoe.kit.measure import transfer_accuracies
    from avalanche_promptmoe.kit.pretrain import PretrainRecipe, classify_accuracy, pretrain_vit

    def chw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    upstream, downstream = (decode_kit_tar(tar, w, progress=not args.quiet) for w in (up, down))
    recipe = PretrainRecipe(**{k: v for k, v in {"epochs": args.epochs, "batch": args.batch,
                                                 "max_steps": args.max_steps, "seed": args.seed}.items()
                               if v is not None})
    arch = _arch(args)
    torch.manual_seed(recipe.seed)  # the initial weights too come from the recipe's seed
    model = timm.create_model(arch["timm_name"], pretrained=False, num_classes=len(up),
                              drop_path_rate=recipe.drop_path, **arch["timm_kwargs"])
    t0 = time.perf_counter()
    pretrain_vit(model, chw(upstream["x_train"]), torch.from_numpy(upstream["y_train"]), len(up), recipe,
                 device=args.device, progress=not args.quiet)
    train_s = time.perf_counter() - t0
    up_acc = classify_accuracy(model, chw(upstream["x_test"]), torch.from_numpy(upstream["y_test"]), device=args.device)
    transfer = transfer_accuracies(model, chw(downstream["x_train"]), torch.from_numpy(downstream["y_train"]),
                                   chw(downstream["x_test"]), torch.from_numpy(downstream["y_test"]),
                                   num_classes=len(down), device=args.device, probe_steps=args.probe_steps)
    measured = {"upstream_val_acc": round(up_acc, 4), **{k: round(v, 4) for k, v in transfer.items()},
                "note": f"downstream = the {len(down)} held-out classes, all their train / val images, frozen [CLS] "
                        "features (standardized; probe: Adam, NCM: cosine)"}
    return model.cpu(), {"measured": measured, "train_seconds": round(train_s)}, recipe


def build_kit(args: argparse.Namespace) -> dict[str, Any]:
    """Run the build described by the parsed ``args`` (see :func:`add_build_arguments`); returns the JSON."""
    import timm
    import torch

    from avalanche_promptmoe.kit.bounds import BOUNDS_FILE
    from avalanche_promptmoe.kit.files import sha256_file
    from avalanche_promptmoe.kit.measure import protocol_bounds

    out = Path(args.out).expanduser() if args.out else user_kit_dir()
    out.mkdir(parents=True, exist_ok=True)
    tar, route = _images(args, out)
    digests = _check_digests(tar, out, route, args)
    with tarfile.open(tar, "r|*") as tf:
        wnids = next(tf.extractfile(m).read().decode().split() for m in tf if m.name == "tin/wnids.txt")
    up, down = class_split(wnids)
    model, pre, recipe = _pretrain(tar, up, down, args)
    sd = {k: v.detach().half().cpu() for k, v in model.state_dict().items()}
    torch.save(sd, out / KIT_WEIGHTS_NAME)
    arch = _arch(args)
    meta: dict[str, Any] = {
        **arch, "weights": KIT_WEIGHTS_NAME, "weights_dtype": "float16",
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3, "input": "RGB in [0, 1], 32x32"},
        "pretraining": {"data": f"Tiny-ImageNet-32, {len(up)} upstream classes, all their train images",
                        "recipe": "supervised, AdamW, cosine, random crop + flip, light mixup, label smoothing 0.1",
                        **recipe.as_dict(), "train_seconds": pre["train_seconds"], "device": args.device,
                        "torch": torch.__version__, "timm": timm.__version__,
                        "made_by": "python -m avalanche_promptmoe.kit build", "images": route},
        "measured": pre["measured"],
        "params": sum(p.numel() for p in model.parameters()),
        "split": {"rule": SPLIT_RULE, "upstream_wnids": up, "downstream_wnids": down},
        "image_digests": {k: digests[k] for k in ("n_images", "list_sha256", "matches_reference")},
        "sha256": {KIT_TAR_NAME: sha256_file(tar), KIT_WEIGHTS_NAME: sha256_file(out / KIT_WEIGHTS_NAME)},
    }
    (out / KIT_META_NAME).write_text(json.dumps(meta, indent=1) + "\n")
    entries = []
    for name in args.protocol:
        spec = PROTOCOLS[name] if name in PROTOCOLS else json.loads(name)
        measured = protocol_bounds(out, spec["protocol"], seq=spec.get("seq") if args.seq else None,
                                   device=args.device, probe_epochs=args.probe_epochs, progress=not args.quiet)
        entries.append({"tar_sha256": measured["tar_sha256"], "weights_sha256": meta["sha256"][KIT_WEIGHTS_NAME],
                        "protocol": spec["protocol"], "bounds": measured["bounds"],
                        "sources": {"all": "python -m avalanche_promptmoe.kit build",
                                    "seq_settings": spec.get("seq") if args.seq else None}})
    (out / BOUNDS_FILE).write_text(json.dumps({"format": 1, "entries": entries}, indent=1) + "\n")
    print(json.dumps({"kit": str(out), "measured": meta["measured"], "bounds": [e["bounds"] for e in entries]},
                     indent=1))
    return meta


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    """The ``build`` sub-command's options."""
    src = p.add_argument_group("images (one of)")
    src.add_argument("--images", help="a local copy: the kit's tar.xz, or a zip / tar / folder in the Tiny-ImageNet layout")
    src.add_argument("--from-github", action="store_true", help="download the public 32-px copy (docs/DATA.md)")
    src.add_argument("--tiny-imagenet-200", help="the original 64-px tiny-imagenet-200.zip (downsampled to 32 px)")
    src.add_argument("--download-tiny-imagenet-200", action="store_true", help="download that zip first")
    p.add_argument("--out", help=f"the new kit's folder (default {user_kit_dir()}, where the library looks)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (cuda: minutes; 2 CPU cores: about an hour)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the recipe's 30)")
    p.add_argument("--batch", type=int, default=None, help="pretraining batch (default: the recipe's 256)")
    p.add_argument("--seed", type=int, default=None, help="pretraining seed (default 0)")
    p.add_argument("--max-steps", type=int, default=None, help="stop pretraining after this many steps (smoke tests)")
    p.add_argument("--timm-kwargs", default=None, help="JSON overriding kit v1's architecture keywords (smoke tests)")
    p.add_argument("--probe-steps", type=int, default=3000, help="steps of the 'measured' linear probe")
    p.add_argument("--probe-epochs", type=int, default=30, help="epochs of the joint-probe bound")
    p.add_argument("--protocol", nargs="+", default=list(PROTOCOLS),
                   help=f"protocols whose bounds to measure: {sorted(PROTOCOLS)} or a JSON "
                   '{"protocol": {...}, "seq": {...}}')
    p.add_argument("--no-seq", dest="seq", action="store_false", help="skip the seq bound (a full seq run per protocol)")
    p.add_argument("--reference-digests", help="a digest summary JSON to compare with (default: the shipped kit's)")
    p.add_argument("--allow-digest-mismatch", action="store_true", help="build even if the images are not the shipped ones")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
