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
METHOD_ROWS = tuple(f"{m}-{mode}" for m in ("hash", "smope", "hlgp", "hide") for mode in ("infer", "train"))
ALL_ROWS = ROWS + METHOD_ROWS
L2P_ANCHORS_H100 = {"infer": 2068.0, "train": 1219.0, "peak_gib": 12.2}  # Avalanche 0.6 L2P (issue #7)
NUM_TASKS = 10  # method rows run with 10 tasks' parameters, per-sample task routing at inference
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


def build_method(method: str, vit: nn.Module, s: Setting) -> tuple[nn.Module, Callable, Callable]:
    """A method's model with ``NUM_TASKS`` tasks, and its inference and training-loss functions
    (the model, loss and plugins' plain functions, as the strategies run them; no Avalanche)."""
    from avalanche_promptmoe.routing import scale_frequent_grads
    from avalanche_promptmoe.training.losses import prototype_loss, router_margin_loss
    from avalanche_promptmoe.training.phases import contrastive_regulariser

    C, T = s.num_classes, NUM_TASKS
    class_task = (torch.arange(C) * T // C).to(s.device)  # class → task
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(C * 10, vit.num_features, generator=g).to(s.device)  # 10 centroids per class

    def tii_tasks(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return class_task[model.tii(model.plain_features(x)).argmax(-1)]

    if method in ("hash", "hide"):
        if method == "hash":
            from avalanche_promptmoe.methods.hash.model import HashPromptModel

            model = HashPromptModel(vit, C, generator=g)
            for _ in range(T):
                model.add_task(frequent=torch.rand(len(model.layers), model.num_experts, generator=g) < 0.15)
        else:
            from avalanche_promptmoe.methods.baselines.model import TaskPrefixModel

            model = TaskPrefixModel(vit, C, length=5, generator=g)
            for _ in range(T):
                model.add_task()
        model = model.to(s.device)

        def infer(x: torch.Tensor) -> torch.Tensor:
            return model(x, tii_tasks(model, x))

        def train_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = model(x, T - 1)
            return nn.functional.cross_entropy(logits.float(), y) + 0.1 * contrastive_regulariser(
                model.last_features, protos, 0.8)

        def after_backward() -> None:
            if method == "hash":
                for p, freq in model.expert_grad_targets():
                    p.grad.copy_(scale_frequent_grads(p.grad, freq, 0.1))

        train_loss.after_backward = after_backward  # type: ignore[attr-defined]
        return model, infer, train_loss
    if method == "smope":
        from avalanche_promptmoe.methods.smope.model import SMoPEModel

        model = SMoPEModel(vit, C, generator=g).to(s.device)
        shape = model.frequent.shape
        model.set_usage(torch.rand(shape, generator=g) < 0.3, torch.rand(shape, generator=g) < 0.2)
        old_keys = model.prefix_keys().detach().clone()

        def train_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            for layer, out in model.last_routing.items():
                loss = loss + 1e-5 * router_margin_loss(model.last_scores[layer].float(), out.indices, 0.4)
            keys = model.prefix_keys()
            for i in range(keys.shape[0]):
                loss = loss + 1e-5 * prototype_loss(old_keys[i], model.frequent[i], keys[i], model.top_k, "sum")
            return loss

        return model, model, train_loss
    if method == "hlgp":
        from avalanche_promptmoe.methods.hlgp.model import LayerGroupedPromptModel

        model = LayerGroupedPromptModel(vit, C, generator=g).to(s.device)
        for _ in range(T):
            model.add_task()
        with torch.no_grad():
            model.class_means.copy_(torch.randn(model.class_means.shape, generator=g).to(s.device))
            model.class_task.copy_(class_task)

        def train_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(model(x, T - 1).float(), y)

        return model, model, train_loss
    raise ValueError(f"method: unknown {method!r}")


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
    training = row in ("prompt-limit", "engine-train") or row.endswith("-train")
    after_backward = None
    if row == "plain":
        model = vit
        fwd = model
        loss_fn = None
    elif row in ("prompt-limit", "engine-infer", "engine-train"):
        model = PromptLimit(vit, s.prefix_len, s.num_classes) if row == "prompt-limit" else EngineModel(vit, s)
        model = model.to(s.device)
        fwd = model

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(fwd(x).float(), y)
    else:
        model, fwd, loss_fn = build_method(row.rsplit("-", 1)[0], vit, s)
        after_backward = getattr(loss_fn, "after_backward", None)
    if compile_model:
        fwd = torch.compile(fwd)
    model.train(training)

    if training:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = loss_fn(x, y)
            loss.backward()
            if after_backward is not None:
                after_backward()
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
    p.add_argument("--rows", nargs="+", default=None, choices=ALL_ROWS, help="rows to measure (default: all)")
    p.add_argument("--method", nargs="+", default=None,
                   choices=("plain", "prompt-limit", "engine", "hash", "smope", "hlgp", "hide", "l2p-avalanche"),
                   help="methods to measure (each gives its inference and training rows)")
    p.add_argument("--compile", action="store_true", help="also measure each row under torch.compile")
    p.add_argument("--row", choices=ALL_ROWS, help=argparse.SUPPRESS)  # internal: one row, JSON out
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
    rows = list(args.rows or ALL_ROWS)
    if args.method:
        rows = [r for r in ALL_ROWS if r in args.method or r.rsplit("-", 1)[0] in args.method]
        rows = sorted(set(rows) | {"plain", "prompt-limit"}, key=ALL_ROWS.index)
    results = []
    for row in rows:
        r = measure_row(row, s, args.warmup, args.iters) if cuda else _run_row_subprocess(row, args)
        results.append(r)
        if args.compile and cuda:
            rc = measure_row(row, s, args.warmup, args.iters, compile_model=True)
            rc["row"] = row + "+compile"
            results.append(rc)
    print(format_table(results, s))
    if args.method is None or "l2p-avalanche" in args.method:
        print(f"l2p-avalanche: not run here (needs timm 0.6.13, ECOSYSTEM.md §A3); H100 anchors, labelled as such: "
              f"{L2P_ANCHORS_H100['infer']} img/s inference, {L2P_ANCHORS_H100['train']} img/s training, "
              f"{L2P_ANCHORS_H100['peak_gib']} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setting": asdict(s), "torch": torch.__version__, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
