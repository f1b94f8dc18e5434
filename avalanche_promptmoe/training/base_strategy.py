"""``PromptStrategyBase``: the Avalanche ``SupervisedTemplate`` every method in this library extends.

What it adds to Avalanche's loop:

* a keyword-only constructor that builds the frozen backbone (timm name or model) and the method's
  model, with the method's own settings (a frozen config dataclass, the papers' defaults) accepted
  as plain keywords and listed in the signature;
* a fresh optimizer per experience over the trainable parameters only (prompt and head groups);
* cross-entropy masked to the current experience's classes in training, logits masked to the
  classes seen so far at evaluation (−1e4, never −inf); bf16 autocast on CUDA;
* checks on each experience (class ids in range, not empty), an error for ``eval()`` before any
  training, and a NaN stop that writes a checkpoint of the state before the failing experience;
* exact resume: ``save_checkpoint(path)`` / ``resume_from(path)`` in our own weights-only format.

Subclasses implement :meth:`build_model`, :meth:`train_logits`, :meth:`predict_logits` and may hook
:meth:`prepare_task`, :meth:`finish_task`, :meth:`aux_loss` and the ``method_state`` pair.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from ..engine import create_backbone, mask_logits
from .checkpoint import capture_rng_state, load_checkpoint_file, restore_rng_state, save_checkpoint_file
from .config import MethodConfig, config_fields, replace_config
from .distributed import all_reduce_grads_, barrier, is_distributed, is_main_process, rank, world_size
from .schedules import build_lr_scheduler

__all__ = ["PromptStrategyBase"]

log = logging.getLogger(__name__)


def _unwrapped(fn: Any) -> Any:
    """The function under Avalanche's keyword-checking ``__init__`` wrappers."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


class PromptStrategyBase(SupervisedTemplate):
    """Base strategy for frozen-ViT prompt methods (keyword-only).

    Args:
        backbone: a timm model name or a built timm ``VisionTransformer`` (frozen in place).
        num_classes: total classes of the benchmark (the head's width).
        pretrained: load timm hub weights for a named backbone (offline: from the local cache).
        checkpoint_path: a local backbone weight file (timm ``pretrained_cfg_overlay`` route).
        backbone_kwargs: extra ``timm.create_model`` keywords (``img_size``, ...).
        train_mb_size, eval_mb_size: mini-batch sizes (eval defaults to train).
        train_epochs: main prompt-training epochs; default: the method config's ``epochs``.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        plugins: extra Avalanche plugins (appended after the method's own).
        evaluator: an Avalanche ``EvaluationPlugin``; or ``loggers`` for the default one (not both).
        seed: seeds Python, numpy and torch (after the benchmark is built) and the method's generator.
        checkpoint_dir: where a NaN stop writes its checkpoint.
        use_task_labels: take the stream's task labels as an oracle task id at evaluation.
        config: a method config instance; plain keywords named after its fields override it.
        progress: show progress bars in the method's own phases.
        **kwargs: the method's config fields, and SupervisedTemplate keywords (``eval_every``, ...).
    """

    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    method_name: ClassVar[str] = "base"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if "__init__" not in cls.__dict__:
            # give the subclass its own __init__ (the unwrapped base one), so that Avalanche's keyword
            # check runs once, against this class's signature
            raw = _unwrapped(PromptStrategyBase.__init__)

            def __init__(self: PromptStrategyBase, **kw: Any) -> None:
                raw(self, **kw)

            __init__.__doc__ = raw.__doc__
            cls.__init__ = __init__
        super().__init_subclass__(**kwargs)  # Avalanche wraps __init__ (keyword checks)
        # list the config fields in the signature, so that Avalanche's misspelling check and
        # help() see them as real keywords
        sig = inspect.signature(_unwrapped(PromptStrategyBase.__init__))
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        defaults = cls.config_cls()
        names = {p.name for p in params}
        for f in config_fields(cls.config_cls):
            if f not in names:
                params.append(inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, f)))
        params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        cls.__init__.__signature__ = sig.replace(parameters=params)

    def __init__(
        self,
        *,
        backbone: str | nn.Module,
        num_classes: int,
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        train_mb_size: int = 128,
        train_epochs: int | None = None,
        eval_mb_size: int | None = None,
        device: str | torch.device | None = None,
        plugins: Sequence[Any] | None = None,
        evaluator: Any = None,
        loggers: Sequence[Any] | None = None,
        seed: int = 0,
        checkpoint_dir: str | Path = "checkpoints",
        use_task_labels: bool = False,
        config: MethodConfig | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        from avalanche.training.determinism.rng_manager import RNGManager

        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2, got {num_classes!r}")
        if train_mb_size < 1:
            raise ValueError(f"train_mb_size: must be >= 1, got {train_mb_size}")
        if evaluator is not None and loggers is not None:
            raise ValueError("evaluator, loggers: pass one of them, not both (loggers go into the evaluator)")
        method_keys = set(config_fields(self.config_cls))
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in method_keys}
        cfg = config if config is not None else self.config_cls()
        if not isinstance(cfg, self.config_cls):
            raise ValueError(f"config: expected a {self.config_cls.__name__}, got {type(cfg).__name__}")
        self.cfg = replace_config(cfg, overrides)
        self.num_classes = num_classes
        self.seed = int(seed)
        self.use_task_labels = use_task_labels
        self.checkpoint_dir = Path(checkpoint_dir)
        self.progress = progress
        self.backbone_spec = {
            "backbone": backbone if isinstance(backbone, str) else type(backbone).__name__,
            "pretrained": pretrained,
            "checkpoint_path": str(checkpoint_path) if checkpoint_path else None,
            "backbone_kwargs": dict(backbone_kwargs or {}),
        }
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        RNGManager.set_random_seeds(self.seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        if isinstance(backbone, str):
            vit = create_backbone(
                backbone, pretrained=pretrained, checkpoint_path=checkpoint_path, **dict(backbone_kwargs or {})
            )
        else:
            if checkpoint_path is not None or pretrained or backbone_kwargs:
                raise ValueError("backbone: pretrained/checkpoint_path/backbone_kwargs need a timm model name")
            vit = create_backbone(backbone)
        model = self.build_model(vit)

        if evaluator is None:
            evaluator = self.default_evaluator(loggers)
        # Avalanche needs an optimizer object now; the real one is built per experience
        placeholder = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(
            model=model,
            optimizer=placeholder,
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs or self.cfg.epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[*self.default_plugins(), *(plugins or [])],
            evaluator=evaluator,
            **kwargs,
        )
        self.model.to(self.device)
        self.task_classes: list[list[int]] = []  # classes of each trained task, in training order
        self.class_to_task: dict[int, int] = {}
        self.trained_experiences = 0
        self._in_train_call = False
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._scheduler_per_iteration = False
        self._pre_experience_state: dict | None = None
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self.backbone_fingerprint = _fingerprint(self.model.vit.backbone)

    # ------------------------------------------------------------------ construction hooks
    def build_model(self, backbone: nn.Module) -> nn.Module:
        """Return the method's model; it must expose ``vit`` (a PrefixViT) and ``param_groups()``."""
        raise NotImplementedError(f"{type(self).__name__} must define build_model(backbone) (abstract hook)")

    def default_plugins(self) -> list[Any]:
        """The method's own plugins, placed before the user's."""
        return []

    def default_evaluator(self, loggers: Sequence[Any] | None) -> Any:
        from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
        from avalanche.logging import InteractiveLogger
        from avalanche.training.plugins import EvaluationPlugin

        from ..metrics import task_averaged_metrics

        return EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            task_averaged_metrics(),
            loggers=list(loggers) if loggers is not None else [InteractiveLogger()],
            strict_checks=False,
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> PromptStrategyBase:
        """Build from a flat mapping of constructor keywords (``method`` may hold the method fields).

        Unknown keys raise ``ValueError`` listing the accepted ones.
        """
        flat = dict(cfg)
        flat.update(dict(flat.pop("method", {}) or {}))
        flat.update(overrides)
        base_args = set(inspect.signature(_unwrapped(PromptStrategyBase.__init__)).parameters) - {"self", "kwargs"}
        allowed = base_args | set(config_fields(cls.config_cls)) | {"eval_every", "peval_mode"}
        unknown = sorted(set(flat) - allowed)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_config: unknown keys {unknown}; accepted: {sorted(allowed)}")
        return cls(**flat)

    # ------------------------------------------------------------------ per-task hooks
    @property
    def task_id(self) -> int:
        """Index of the task being trained (or the last trained one)."""
        return max(0, len(self.task_classes) - 1)

    @property
    def seen_classes(self) -> list[int]:
        return sorted(self.class_to_task)

    def prepare_task(self, task_id: int) -> None:
        """Create the task's parameters before the optimizer is built."""

    def finish_task(self, task_id: int) -> None:
        """Post-training phases of a task (statistics, alignment...)."""

    def train_logits(self, x: Tensor) -> Tensor:
        """Training logits with the current task's prompts."""
        raise NotImplementedError(f"{type(self).__name__} must define train_logits(x) (abstract hook)")

    def predict_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Inference logits; ``task_ids`` is the oracle task id when ``use_task_labels``."""
        raise NotImplementedError(f"{type(self).__name__} must define predict_logits(x, task_ids) (abstract hook)")

    def train_mask_classes(self) -> list[int]:
        """Classes the training CE is restricted to: the current experience's (DECISIONS.md §C2)."""
        return self.task_classes[-1]

    def aux_loss(self) -> Tensor | None:
        """Extra training loss computed from the last forward (method regularisers)."""
        return None

    def method_state_dict(self) -> dict:
        return {}

    def load_method_state_dict(self, state: dict) -> None:
        return None

    # ------------------------------------------------------------------ Avalanche overrides
    def train(self, experiences: Any, eval_streams: Any = None, **kwargs: Any) -> dict:
        self._in_train_call = True
        try:
            return super().train(experiences, eval_streams=eval_streams, **kwargs)
        finally:
            self._in_train_call = False

    def eval(self, exp_list: Any, **kwargs: Any) -> dict:
        if not self.trained_experiences and not self._in_train_call and not self.task_classes:
            raise RuntimeError(
                f"{type(self).__name__}.eval() called before any training: call train(experience) or "
                f"resume_from(checkpoint) first"
            )
        return super().eval(exp_list, **kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        self._check_experience(self.experience)
        self._pre_experience_state = self.state_dict_for_checkpoint()
        classes = sorted(int(c) for c in self.experience.classes_in_this_experience)
        task = len(self.task_classes)
        self.task_classes.append(classes)
        for c in classes:
            self.class_to_task[c] = task
        self.prepare_task(task)
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.model.eval()
        self.finish_task(self.task_id)
        self.trained_experiences += 1
        super()._after_training_exp(**kwargs)

    def _after_training_epoch(self, **kwargs: Any) -> None:
        if self.device.type != "cpu" and bool(self._nonfinite):
            self._nan_stop()
        if self._scheduler is not None and not self._scheduler_per_iteration:
            self._scheduler.step()
        super()._after_training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs: Any) -> None:
        if self._scheduler is not None and self._scheduler_per_iteration:
            self._scheduler.step()
        super()._after_training_iteration(**kwargs)

    def model_adaptation(self, model: nn.Module | None = None) -> nn.Module:
        model = self.model if model is None else model
        return model.to(self.device)

    def make_optimizer(self, **kwargs: Any) -> None:
        """A fresh optimizer per experience over the trainable parameter groups only."""
        groups = [g for g in self.model.param_groups(self.cfg) if any(p.requires_grad for p in g["params"])]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        if not groups:
            raise RuntimeError(f"{type(self).__name__}: the model has no trainable parameters")
        cfg = self.cfg
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        self.optimizer = opt
        self._scheduler, self._scheduler_per_iteration = build_lr_scheduler(
            opt, cfg.lr_schedule, epochs=self.schedule_epochs(),
            iters_per_epoch=len(self.dataloader) if cfg.lr_schedule == "cosine_iter" else None,
            lr_min=cfg.lr_min, freeze_iters=cfg.lr_freeze_iters,
            step_epochs=cfg.lr_step_epochs, step_gamma=cfg.lr_step_gamma,
        )

    def schedule_epochs(self) -> int:
        """Epochs the learning-rate schedule built by :meth:`make_optimizer` spans."""
        return self.train_epochs

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def forward(self) -> Tensor:
        x = self.mb_x
        with self._autocast():
            if self.is_training:
                return self.train_logits(x).float()
            if not self.task_classes:  # periodic eval before the first experience
                return self.model.head(self.model.vit(x)).float()
            oracle = self.mb_task_id if self.use_task_labels and len(self.mbatch) >= 3 else None
            logits = self.predict_logits(x, oracle).float()
        return mask_logits(logits, self._class_mask(self.seen_classes))

    def criterion(self) -> Tensor:
        if not self.is_training:
            return F.cross_entropy(self.mb_output, self.mb_y)
        logits = mask_logits(self.mb_output, self._class_mask(self.train_mask_classes()))
        loss = F.cross_entropy(logits, self.mb_y)
        extra = self.aux_loss()
        return loss if extra is None else loss + extra

    def backward(self) -> None:
        finite = torch.isfinite(self.loss.detach()).all()
        if self.device.type == "cpu":
            if not bool(finite):
                self._nan_stop()
        else:  # no host sync per step on accelerators: checked at the end of the epoch
            self._nonfinite = self._nonfinite.to(finite.device) | ~finite
        super().backward()
        if world_size() > 1:  # data parallel: average the trainable gradients over ranks
            all_reduce_grads_(p for g in self.optimizer.param_groups for p in g["params"])

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: bool | None = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """Avalanche's loader in one process; under ``torch.distributed`` each rank reads a
        ``DistributedSampler`` shard with batch ``train_mb_size // world_size`` (same global batch, and
        the same order for any world size: a permutation seeded by seed, experience and epoch)."""
        n = world_size()
        if not is_distributed():
            return super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                                 persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        if self.train_mb_size % n:
            raise ValueError(f"train_mb_size: {self.train_mb_size} is not divisible by the world size {n}")
        sampler = DistributedSampler(self.adapted_dataset, num_replicas=n, rank=rank(), shuffle=shuffle,
                                     seed=self.seed + self.trained_experiences, drop_last=drop_last)
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=self.train_mb_size // n, sampler=sampler,
                                     num_workers=num_workers, pin_memory=self.device.type == "cuda")

    def make_eval_dataloader(self, num_workers: int = 0, shuffle: bool = False, pin_memory: bool | None = None,
                             persistent_workers: bool = False, **kwargs: Any) -> None:
        """Avalanche's loader; under ``torch.distributed`` every rank evaluates the whole stream (no
        sharding), so every metric — ours and Avalanche's stock ones — is the global figure."""
        if not is_distributed():
            return super().make_eval_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                                persistent_workers=persistent_workers, **kwargs)
        from avalanche.benchmarks.utils.data_loader import (
            SingleDatasetDataLoader,
            collate_from_data_or_kwargs,
        )

        args = dict(batch_size=self.eval_mb_size, num_workers=num_workers, shuffle=False,
                    pin_memory=self.device.type == "cuda")
        collate_from_data_or_kwargs(self.adapted_dataset, args)
        self.dataloader = SingleDatasetDataLoader(self.adapted_dataset, distributed_sampling=False, **args)

    def _before_training_epoch(self, **kwargs: Any) -> None:
        sampler = getattr(self.dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.clock.train_exp_epochs)
        super()._before_training_epoch(**kwargs)

    def optimizer_step(self) -> None:
        if self.cfg.clip_grad is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        super().optimizer_step()

    # ------------------------------------------------------------------ checks
    def _task_of_class(self) -> Tensor:
        """``(num_classes,)`` task index of each trained class (−1 elsewhere), on the device."""
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long)
        if self.class_to_task:
            lookup[list(self.class_to_task)] = torch.tensor(list(self.class_to_task.values()))
        return lookup.to(self.device)

    def _class_mask(self, classes: Sequence[int]) -> Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool, device=self.device)
        mask[list(classes)] = True
        return mask

    def _check_experience(self, experience: Any) -> None:
        classes = [int(c) for c in experience.classes_in_this_experience]
        if len(experience.dataset) == 0 or not classes:
            raise ValueError(f"experience {experience.current_experience}: it is empty (no samples)")
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(
                f"experience {experience.current_experience}: class ids {bad[:10]} are outside "
                f"[0, {self.num_classes}) (num_classes={self.num_classes})"
            )
        future = getattr(experience, "future_classes", None) or []
        total = len(set(classes) | set(self.class_to_task) | {int(c) for c in future})
        if total > self.num_classes:
            raise ValueError(
                f"num_classes: the benchmark has at least {total} classes, more than num_classes={self.num_classes}"
            )
        repeated = sorted(set(classes) & set(self.class_to_task))
        if repeated:
            raise ValueError(
                f"experience {experience.current_experience}: classes {repeated[:10]} were already trained "
                f"in an earlier experience; class-incremental streams have disjoint classes"
            )

    def _nan_stop(self) -> None:
        path = self.checkpoint_dir / f"nan_stop_experience{self.trained_experiences}.pt"
        if is_main_process():
            save_checkpoint_file(path, self._pre_experience_state or self.state_dict_for_checkpoint())
        raise FloatingPointError(
            f"non-finite training loss in experience {self.trained_experiences} "
            f"(epoch {self.clock.train_exp_epochs}); the state before this experience was saved to "
            f"{path} — fix the cause (learning rate, data) and call resume_from({str(path)!r})"
        )

    # ------------------------------------------------------------------ checkpoints
    def _our_plugins(self) -> dict[str, Any]:
        out = {}
        for p in self.plugins:
            if hasattr(p, "state_dict") and hasattr(p, "load_state_dict") and not isinstance(p, nn.Module):
                out[type(p).__name__] = p
        for m in getattr(self.evaluator, "metrics", []):
            if hasattr(m, "state_dict") and hasattr(m, "load_state_dict"):
                out["metric:" + type(m).__name__] = m
        return out

    def state_dict_for_checkpoint(self) -> dict:
        """Everything needed to continue exactly: trainable state, plugin/metric state, RNG, position."""
        model_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items() if not k.startswith("vit.")}
        return {
            "strategy": type(self).__name__,
            "method": self.method_name,
            "config": self.cfg.to_dict(),
            "num_classes": self.num_classes,
            "seed": self.seed,
            "backbone": {**self.backbone_spec, "fingerprint": self.backbone_fingerprint},
            "model_structure": self.model.structure(),
            "model_state": model_state,
            "task_classes": [list(c) for c in self.task_classes],
            "trained_experiences": self.trained_experiences,
            "method_state": self.method_state_dict(),
            "plugins": {name: p.state_dict() for name, p in self._our_plugins().items()},
            "rng": capture_rng_state(),
            "generator": self.generator.get_state(),
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write an atomic, version-stamped checkpoint (loadable with ``weights_only=True``); under
        ``torch.distributed`` only rank 0 writes, the others wait for it."""
        if self._in_train_call:
            raise RuntimeError("save_checkpoint: call it between experiences, not inside train()")
        if is_main_process():  # under torch.distributed only rank 0 writes
            save_checkpoint_file(path, self.state_dict_for_checkpoint())
        barrier()
        return Path(path)

    def resume_from(self, path: str | Path) -> int:
        """Restore a checkpoint; returns the index of the next experience to train."""
        state = load_checkpoint_file(path)
        if state.get("strategy") != type(self).__name__:
            raise ValueError(
                f"checkpoint: {path} was written by {state.get('strategy')!r}, not {type(self).__name__}"
            )
        if state["config"] != self.cfg.to_dict() or state["num_classes"] != self.num_classes:
            diff = {k: (v, self.cfg.to_dict().get(k)) for k, v in state["config"].items() if self.cfg.to_dict().get(k) != v}
            raise ValueError(f"checkpoint: {path} was made with other settings {diff or 'num_classes'}")
        if state["backbone"]["fingerprint"] != self.backbone_fingerprint:
            raise ValueError(f"checkpoint: {path} was trained on another backbone (weights differ)")
        self.model.grow_to(state["model_structure"])
        missing, unexpected = self.model.load_state_dict(state["model_state"], strict=False)
        missing = [k for k in missing if not k.startswith("vit.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint: {path} does not fit the model (missing {missing}, unexpected {unexpected})")
        self.model.to(self.device)
        self.task_classes = [list(map(int, c)) for c in state["task_classes"]]
        self.class_to_task = {c: t for t, cs in enumerate(self.task_classes) for c in cs}
        self.trained_experiences = int(state["trained_experiences"])
        self.load_method_state_dict(state["method_state"])
        ours = self._our_plugins()
        for name, pstate in state["plugins"].items():
            if name in ours:
                ours[name].load_state_dict(pstate)
            else:
                log.warning("checkpoint: no plugin %s in this strategy; its state is ignored", name)
        restore_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.clock.train_exp_counter = self.trained_experiences
        return self.trained_experiences

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
