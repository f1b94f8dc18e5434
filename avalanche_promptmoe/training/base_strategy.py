"""``PromptStrategyBase``: the Avalanche ``SupervisedTemplate`` every method in this library extends.

What it adds to Avalanche's loop:

* a keyword-only constructor that builds the frozen backbone (timm name or model) and the method's
  model, with the method's own settings (a frozen config dataclass, the papers' defaults) accepted
  as plain keywords and listed in the signature;
* a fresh optimizer per experience over the trainable parameters only (prompt and head groups);
* cross-entropy masked to the current experience's classes in training, widened to the classes a
  mini-batch holds (rehearsal plugins: :func:`~.losses.training_class_mask`), logits masked to the
  classes seen so far at evaluation (−1e4, never −inf); ``mb_output`` is the masked logits in both
  (stock accuracy metrics score them, ``mb_logits`` keeps the unmasked ones); the evaluation loss
  admits the batch's own classes too (finite, comparable stock loss metrics); bf16 autocast on CUDA;
* bring-your-own optimizer / scheduler / criterion as factories (:mod:`.optim`);
* checks on each experience (class ids in range, not empty), an error for ``eval()`` before any
  training, and a NaN stop that writes a checkpoint of the state before the failing experience;
* exact resume: ``save_checkpoint(path)`` / ``resume_from(path)`` in our own weights-only format, with
  every attached plugin's state kept or refused (:mod:`.plugin_state`).

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
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from ..engine import create_backbone, mask_logits
from .checkpoint import capture_rng_state, load_checkpoint_file, restore_rng_state, save_checkpoint_file
from .config import MethodConfig, config_fields, replace_config
from .distributed import all_reduce_grads_, barrier, is_distributed, is_main_process, rank, world_size
from .experience import experience_classes
from .losses import training_class_mask
from .optim import (
    build_optimizer,
    build_user_scheduler,
    check_plugins_for_optimizer,
    check_scheduler_keywords,
    describe_overrides,
    split_optimizer_keyword,
)
from .plugin_state import checkpoint_plugins
from .resume import check_checkpoint_payload, format_overrides, settings_overrides
from .schedules import build_lr_scheduler
from .task_labels import TaskLabelMap
from .validation import check_strategy_arguments

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
        use_task_labels: take the stream's task labels as an oracle task id at evaluation; samples of
            experiences not trained yet are evaluated as without task labels, and a stream without
            task labels warns once (training/task_labels.py).
        config: a method config instance; plain keywords named after its fields override it.
        progress: show progress bars in the method's own phases.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (the config field) or a factory
            ``params -> torch.optim.Optimizer`` called at every experience on the trainable parameter
            groups, each with its own ``lr`` (training/optim.py).
        lr_scheduler: a factory ``optimizer -> scheduler`` called at every experience, stepped per
            ``lr_scheduler_interval`` (``"epoch"`` or ``"iteration"``); it replaces the method's default
            ``lr_schedule`` (an explicitly given non-constant one is refused).
        criterion: ``(logits, targets) -> loss``; it gets logits masked to −1e4 outside the admitted
            classes (training: ``mb_output``; evaluation: the seen classes ∪ the batch's own), so it
            should ignore those (a plain or weighted CE does; label smoothing would not).
            Default: ``nn.CrossEntropyLoss()``.
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
        lr_scheduler: Any = None,
        lr_scheduler_interval: str = "epoch",
        criterion: Any = None,
        **kwargs: Any,
    ) -> None:
        from avalanche.training.determinism.rng_manager import RNGManager

        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2, got {num_classes!r}")
        check_strategy_arguments(
            train_mb_size=train_mb_size, eval_mb_size=eval_mb_size, train_epochs=train_epochs,
            use_task_labels=use_task_labels, seed=seed,
        )
        if evaluator is not None and loggers is not None:
            raise ValueError("evaluator, loggers: pass one of them, not both (loggers go into the evaluator)")
        self._optimizer_factory = split_optimizer_keyword(kwargs)
        method_keys = set(config_fields(self.config_cls))
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in method_keys}
        cfg = config if config is not None else self.config_cls()
        if not isinstance(cfg, self.config_cls):
            raise ValueError(f"config: expected a {self.config_cls.__name__}, got {type(cfg).__name__}")
        self.cfg = replace_config(cfg, overrides)
        # a user scheduler replaces the method's default lr_schedule; one asked for explicitly clashes
        explicit_schedule = self.cfg.lr_schedule if ("lr_schedule" in overrides or config is not None) else None
        check_scheduler_keywords(lr_scheduler, lr_scheduler_interval, explicit_schedule)
        check_plugins_for_optimizer(plugins or [])
        if criterion is not None and not callable(criterion):
            raise TypeError(f"criterion: expected a callable (logits, targets) -> loss, got {criterion!r}")
        self._lr_scheduler_factory = lr_scheduler
        self._lr_scheduler_interval = lr_scheduler_interval
        # what the user replaced (the config's optimizer / lr_schedule do not apply to it), for run logs
        self.training_overrides = describe_overrides(self._optimizer_factory, lr_scheduler, lr_scheduler_interval,
                                                     criterion)
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
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
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
        self.resume_overrides: dict[str, tuple[Any, Any]] = {}  # set by resume_from
        self.task_label_map = TaskLabelMap()  # stream task label -> task index (use_task_labels)
        self.mb_logits: Tensor | None = None  # unmasked logits of the last forward
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
        classes = experience_classes(self.experience)
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

    def training_config(self) -> Any:
        """The config the main phase's optimizer and lr schedule are built from (default ``cfg``)."""
        return self.cfg

    def eval_mask_classes(self) -> list[int] | None:
        """Classes the predictions are masked to (default: all seen so far); ``None``: unmasked."""
        return self.seen_classes

    def make_optimizer(self, **kwargs: Any) -> None:
        """A fresh optimizer per experience over the trainable parameter groups only."""
        cfg = self.training_config()
        groups = [g for g in self.model.param_groups(cfg) if any(p.requires_grad for p in g["params"])]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        if not groups:
            raise RuntimeError(f"{type(self).__name__}: the model has no trainable parameters")
        opt = build_optimizer(groups, cfg, self._optimizer_factory)
        self.optimizer = opt
        if self._lr_scheduler_factory is not None:  # the user's scheduler replaces lr_schedule
            self._scheduler = build_user_scheduler(self._lr_scheduler_factory, opt)
            self._scheduler_per_iteration = self._lr_scheduler_interval == "iteration"
            return
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
        batch_labels = self.mb_task_id if len(self.mbatch) >= 3 else None
        with self._autocast():
            if self.is_training:
                if self.use_task_labels:
                    self.task_label_map.record(self.task_id, batch_labels, self.experience)
                self.mb_logits = self.train_logits(x).float()
                return mask_logits(self.mb_logits, self._train_mask())
            if not self.task_classes:  # periodic eval before the first experience
                self.mb_logits = self.model.head(self.model.vit(x)).float()
                return self.mb_logits
            logits = self._predict_with_task_labels(x, batch_labels)
        self.mb_logits = logits
        classes = self.eval_mask_classes()
        return logits if classes is None else mask_logits(logits, self._class_mask(classes))

    def _predict_with_task_labels(self, x: Tensor, batch_labels: Tensor | None) -> Tensor:
        """``predict_logits`` with the oracle task ids of samples from trained experiences; the
        other samples (experiences not trained yet, or a stream without task labels) are
        evaluated as without task labels (training/task_labels.py)."""
        if not self.use_task_labels:
            return self.predict_logits(x, None).float()
        ids, known = self.task_label_map.lookup(batch_labels)
        if ids is None or not bool(known.any()):
            return self.predict_logits(x, None).float()
        if bool(known.all()):
            return self.predict_logits(x, ids).float()
        logits = self.predict_logits(x, None).float()
        logits[known] = self.predict_logits(x[known], ids[known]).float()
        return logits

    def _train_mask(self) -> Tensor:
        """Bool ``(C,)``: :meth:`train_mask_classes` ∪ the mini-batch's classes (rehearsal), ∪ all seen
        classes when a plugin reads old-class logits (LwF); see :func:`.losses.training_class_mask`."""
        from avalanche.training.plugins import LwFPlugin

        seen = self._class_mask(self.seen_classes) if any(isinstance(p, LwFPlugin) for p in self.plugins) else None
        return training_class_mask(self._class_mask(self.train_mask_classes()), self.mb_y, seen)

    def criterion(self) -> Tensor:
        """Training: the criterion on the masked logits (``mb_output``) + :meth:`aux_loss`.

        Evaluation: the criterion on the logits masked to the seen classes ∪ the mini-batch's own
        classes (the training rule), so the −1e4 of the prediction mask never reaches the loss: on a
        trained experience it is the loss over the seen classes (as before), on one not trained yet
        a finite loss (stock ``loss_metrics`` stay comparable). Predictions (``mb_output``) keep the
        seen-class mask."""
        if not self.is_training:
            if self.mb_logits is None or not self.task_classes:
                return self._criterion(self.mb_output, self.mb_y)
            allowed = training_class_mask(self._class_mask(self.seen_classes), self.mb_y)
            return self._criterion(mask_logits(self.mb_logits, allowed), self.mb_y)
        loss = self._criterion(self.mb_output, self.mb_y)
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
        classes = experience_classes(experience)
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
            f"{path} — fix the cause (learning rate, data; settings that do not shape the model may change) and "
            f"call resume_from({str(path)!r}) on a strategy built with the fixed settings"
        )

    # ------------------------------------------------------------------ checkpoints
    def _our_plugins(self) -> dict[str, Any]:
        # plugins whose state a checkpoint keeps; unknown stateful ones refused outside train()
        out = checkpoint_plugins(self.plugins, strict=not self._in_train_call)
        for m in getattr(self.evaluator, "metrics", []):
            if hasattr(m, "state_dict") and hasattr(m, "load_state_dict"):
                out["metric:" + type(m).__name__] = m
        for lg in getattr(self.evaluator, "loggers", []):  # e.g. MLflowLogger: resume continues its run
            if hasattr(lg, "state_dict") and hasattr(lg, "load_state_dict"):
                out["logger:" + type(lg).__name__] = lg
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
            "task_labels": self.task_label_map.state_dict(),
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
        """Restore a checkpoint; returns the index of the next experience to train.

        Everything is checked before any state changes: the file's digest, every key's presence and
        type, the strategy class, ``num_classes``, the backbone's fingerprint, the structural settings
        (the config's ``STRUCTURAL`` fields) and — on a copy of the model that shares the frozen
        backbone — that the trainable state fits. Non-structural settings (learning rates, epochs,
        optimizers, schedules...) may differ: they are logged as a warning and kept in
        :attr:`resume_overrides` as ``{field: (checkpoint value, current value)}``.

        Raises:
            CheckpointError: the file is corrupt, of an old format, or incomplete.
            ValueError: the checkpoint belongs to another strategy, ``num_classes``, backbone or
                structural setting (listed), or its state does not fit the model.
        """
        state = load_checkpoint_file(path)
        check_checkpoint_payload(state, path)
        if state["strategy"] != type(self).__name__:
            raise ValueError(
                f"checkpoint: {path} was written by {state['strategy']!r}, not {type(self).__name__}"
            )
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint: {path} was made with num_classes={state['num_classes']}, this strategy has "
                f"num_classes={self.num_classes}"
            )
        overrides = settings_overrides(state["config"], self.cfg, path)
        if state["backbone"]["fingerprint"] != self.backbone_fingerprint:
            raise ValueError(f"checkpoint: {path} was trained on another backbone (weights differ)")
        self._check_model_state_fits(state, path)
        ours = self._our_plugins()

        # ---- nothing above mutated the strategy; restore
        self.model.grow_to(state["model_structure"])
        self.model.load_state_dict(state["model_state"], strict=False)
        self.model.to(self.device)
        self.task_classes = [list(map(int, c)) for c in state["task_classes"]]
        self.class_to_task = {c: t for t, cs in enumerate(self.task_classes) for c in cs}
        self.trained_experiences = int(state["trained_experiences"])
        self.load_method_state_dict(state["method_state"])
        for name, pstate in state["plugins"].items():
            if name in ours:
                ours[name].load_state_dict(pstate)
            else:
                log.warning("checkpoint: no plugin %s in this strategy; its state is ignored", name)
        restore_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.clock.train_exp_counter = self.trained_experiences
        if "task_labels" in state:
            self.task_label_map.load_state_dict(state["task_labels"])
        else:  # older checkpoints: task label t was task t
            self.task_label_map.load_state_dict({"label_to_task": {t: t for t in range(len(self.task_classes))}})
        self.resume_overrides = overrides
        if overrides:
            log.warning("resume_from(%s): settings differ from the checkpoint's, using the new ones: %s",
                        path, format_overrides(overrides))
        return self.trained_experiences

    def expert_usage(self) -> Tensor | None:
        """Cumulative expert-selection counts ``(layers, heads, experts)`` (int64, CPU; heads = 1 when
        routing is shared across heads), committed up to the last finished experience; ``None`` for
        methods without sparse expert routing. Methods with routing override this; MLflowLogger
        plots it after each experience."""
        return None

    def _check_model_state_fits(self, state: dict, path: str | Path) -> None:
        """Dry run of ``grow_to`` + ``load_state_dict`` on a copy sharing the frozen backbone."""
        import copy

        memo: dict[int, Any] = {id(t): t for t in self.model.vit.backbone.state_dict(keep_vars=True).values()}
        for module in self.model.modules():
            for value in vars(module).values():
                if isinstance(value, torch.Generator):
                    memo[id(value)] = value
        try:
            trial = copy.deepcopy(self.model, memo)
            trial.grow_to(state["model_structure"])
            missing, unexpected = trial.load_state_dict(state["model_state"], strict=False)
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"checkpoint: {path} does not fit the model ({type(err).__name__}: {err})") from err
        missing = [k for k in missing if not k.startswith("vit.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint: {path} does not fit the model (missing {missing}, unexpected {unexpected})")

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
