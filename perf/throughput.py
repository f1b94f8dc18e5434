"""Images/s and peak memory: plain timm ViT, the prompt limit and the prefix engine, side by side.

Rows (DECISIONS.md §F1), all measured in one run:

* ``plain``        — the timm ViT forward, inference.
* ``prompt-limit`` — the same ViT frozen, 8 learnable tokens after the patch embedding, a linear
  head, Adam, backward through every block (training).
* ``engine``       — ``PrefixViT`` with per-sample prefixes of length 8 in blocks 0–4: inference, and
  a training step (prefix + head, Adam, backward).

CUDA: ViT-B/16, 224 px, batch 128, bf16 autocast, random weights (no download); peak memory from
``torch.cuda.max_memory_allocated`` reset per row. CPU: a tiny ViT (the kit's shape: 32 px, patch 8,
192 wide, 8 blocks, 3 heads) at batch 64; each row runs in its own subprocess and reports its peak
RSS. Usage::

    python perf/throughput.py                 # all rows, auto device
    python perf/throughput.py --device cpu --iters 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROWS = ("plain", "prompt-limit", "engine-infer", "engine-train")
ANCHORS_H100 = {"plain": 8308.0, "prompt-limit": 3168.0}  # img/s, bf16, ViT-B/16, batch 128 (issue #3)


@dataclass
class Setting:
    device: str
    model: str
    timm_kwargs: dict
    batch: int
    img: int
    bf16: bool
    prefix_len: int = 8
    prefix_layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    num_classes: int = 100


def default_setting(device: str, batch: int | None) -> Setting:
    if device.startswith("cuda"):
        return Setting(device, "vit_base_patch16_224", {}, batch or 128, 224, True)
    kw = dict(img_size=32, patch_size=8, embed_dim=192, depth=8, num_heads=3)
    return Setting(device, "vit_tiny_patch16_224", kw, batch or 64, 32, False)


def build_vit(s: Setting) -> nn.Module:
    from avalanche_promptmoe.engine import create_backbone

    torch.manual_seed(0)
    return create_backbone(s.model, **s.timm_kwargs).to(s.device)


class PromptLimit(nn.Module):
    """Frozen ViT + ``n`` learnable tokens inserted after [CLS] + linear head (the anchor's recipe)."""

    def __init__(self, vit: nn.Module, n: int, num_classes: int) -> None:
        super().__init__()
        self.vit = vit
        self.prompt = nn.Parameter(torch.zeros(1, n, vit.embed_dim).uniform_(-1, 1))
        self.head = nn.Linear(vit.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v._pos_embed(v.patch_embed(x))  # (B, 1+N, D)
        x = torch.cat([x[:, :1], self.prompt.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        x = v.norm(v.blocks(v.norm_pre(x)))
        return self.head(v.forward_head(x, pre_logits=True))


class EngineModel(nn.Module):
    """PrefixViT with a learnable prefix made per sample (expanded to (B, H, P, Dh)) + head."""

    def __init__(self, vit: nn.Module, s: Setting) -> None:
        super().__init__()
        from avalanche_promptmoe.engine import PrefixViT

        self.vit = PrefixViT(vit, s.prefix_layers)
        shape = (len(s.prefix_layers), 2, self.vit.num_heads, s.prefix_len, self.vit.head_dim)
        self.prompt = nn.Parameter(torch.zeros(shape).uniform_(-1, 1))
        self.head = nn.Linear(self.vit.num_features, s.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        prefix = {
            layer: (p[0].expand(B, -1, -1, -1), p[1].expand(B, -1, -1, -1))
            for layer, p in zip(self.vit.layers, self.prompt)
        }
        return self.head(self.vit(x, prefix))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(step: Callable[[], None], s: Setting, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    _sync(s.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(s.device)
    return s.batch * iters / (time.perf_counter() - t0)


def measure_row(row: str, s: Setting, warmup: int, iters: int, compile_model: bool = False) -> dict:
    """One row: images/s and peak memory (GiB)."""
    cuda = s.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(s.batch, 3, s.img, s.img, generator=g).to(s.device)
    y = torch.randint(0, s.num_classes, (s.batch,), generator=g).to(s.device)
    vit = build_vit(s)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if s.bf16 and cuda else torch.autocast("cpu", enabled=False)
    training = row in ("prompt-limit", "engine-train")
    if row == "plain":
        model = vit
    elif row == "prompt-limit":
        model = PromptLimit(vit, s.prefix_len, s.num_classes).to(s.device)
    else:
        model = EngineModel(vit, s).to(s.device)
    fwd = torch.compile(model) if compile_model else model

    if training:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = nn.functional.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()
    else:

        def step() -> None:
            with torch.inference_mode(), amp:
                fwd(x)

    ips = _timed(step, s, warmup, iters)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return {"row": row, "img_per_s": ips, "peak_gib": peak, "training": training}


def _run_row_subprocess(row: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--row", row, "--device", args.device, "--iters", str(args.iters),
           "--warmup", str(args.warmup)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(results: list[dict], s: Setting) -> str:
    by = {r["row"]: r for r in results}
    plain = by.get("plain", {}).get("img_per_s")
    limit = by.get("prompt-limit", {}).get("img_per_s")
    limit_mem = by.get("prompt-limit", {}).get("peak_gib")
    lines = [
        f"device={s.device} model={s.model} {s.timm_kwargs or ''} batch={s.batch} img={s.img} "
        f"bf16={s.bf16} torch={torch.__version__}",
        f"{'row':<14}{'mode':<7}{'img/s':>10}{'peak GiB':>10}{'×plain':>9}{'×limit':>9}{'mem×limit':>11}",
    ]
    for r in results:
        ratio_p = r["img_per_s"] / plain if plain else float("nan")
        ratio_l = r["img_per_s"] / limit if limit else float("nan")
        ratio_m = r["peak_gib"] / limit_mem if limit_mem else float("nan")
        mode = "train" if r["training"] else "infer"
        lines.append(
            f"{r['row']:<14}{mode:<7}{r['img_per_s']:>10.1f}{r['peak_gib']:>10.3f}{ratio_p:>9.3f}{ratio_l:>9.3f}{ratio_m:>11.3f}"
        )
    if s.device.startswith("cuda"):
        lines.append(f"anchors (H100, bf16): plain {ANCHORS_H100['plain']} img/s, prompt-limit "
                     f"{ANCHORS_H100['prompt-limit']} img/s; goals: engine ≥ 0.9× both")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="timed iterations per row")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--compile", action="store_true", help="also measure each row under torch.compile")
    p.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)  # internal: one row, JSON out
    p.add_argument("--json", help="write the results to this JSON file")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.iters = args.iters or (30 if cuda else 8)
    args.warmup = args.warmup or (5 if cuda else 2)
    s = default_setting(args.device, args.batch)
    if not cuda:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.row:  # child process: one row
        print(json.dumps(measure_row(args.row, s, args.warmup, args.iters)))
        return []
    results = []
    for row in args.rows:
        r = measure_row(row, s, args.warmup, args.iters) if cuda else _run_row_subprocess(row, args)
        results.append(r)
        if args.compile and cuda:
            rc = measure_row(row, s, args.warmup, args.iters, compile_model=True)
            rc["row"] = row + "+compile"
            results.append(rc)
    print(format_table(results, s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setting": asdict(s), "torch": torch.__version__, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
