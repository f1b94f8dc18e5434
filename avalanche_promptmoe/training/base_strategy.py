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
  every attached plugin's state kept or refused (:mod:`.checkpointing.plugin_state`).

Where the code lives: this module holds the constructor, the method hooks and the training loop;
:mod:`.checkpointing.strategy_checkpoint` checkpoint/resume and the NaN stop, :mod:`.bookkeeping` the
classes of each task, the experience checks and evaluation with task labels, :mod:`.loaders` the
loaders under ``torch.distributed``.

Subclasses implement :meth:`build_model`, :meth:`train_logits`, :meth:`inference_logits` and may hook
:meth:`prepare_task`, :meth:`finish_task`, :meth:`aux_loss` and the ``method_state`` pair.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from ..engine import create_backbone, mask_logits
from ..paths import user_path
from .bookkeeping import TaskBookkeepingMixin
from .checkpointing.strategy_checkpoint import CheckpointingMixin, weights_fingerprint
from .compatibility import check_supported_plugins
from .config import MethodConfig, config_fields, replace_config
from .distributed import all_reduce_grads_, world_size
from .experience import experience_classes
from .experience_guard import ExperienceGuardMixin
from .input_checks import resolve_device
from .keywords import keyword_docstring, method_section_keywords, resolve_train_epochs, strategy_keyword_docs
from .loaders import DistributedLoadersMixin
from .losses import training_class_mask
from .optim import (
    check_plugins_for_optimizer,
    check_scheduler_keywords,
    describe_overrides,
    split_optimizer_keyword,
)
from .optimizer_setup import OptimizerSetupMixin
from .prediction import PredictionMixin
from .state_safety import check_loggers
from .task_labels import TaskLabelMap
from .validation import check_strategy_arguments

__all__ = ["PromptStrategyBase"]


def _unwrapped(fn: Any) -> Any:
    """The function under Avalanche's keyword-checking ``__init__`` wrappers."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


class PromptStrategyBase(PredictionMixin, ExperienceGuardMixin, CheckpointingMixin, TaskBookkeepingMixin,
                         OptimizerSetupMixin, DistributedLoadersMixin, SupervisedTemplate):
    """Base strategy for frozen-ViT prompt methods (keyword-only).

    Args:
        backbone: a timm model name or a built timm ``VisionTransformer`` (frozen in place).
        num_classes: total classes of the benchmark (the head's width).
        pretrained: load timm hub weights for a named backbone (offline: from the local cache).
        checkpoint_path: a local backbone weight file (timm ``pretrained_cfg_overlay`` route).
        backbone_kwargs: extra ``timm.create_model`` keywords (``img_size``, ...).
        train_mb_size, eval_mb_size: mini-batch sizes (eval defaults to train).
        train_epochs: main prompt-training (WTP) epochs per experience; default: the method config's
            ``epochs`` (the paper's), which then records this value.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        plugins: extra Avalanche plugins (appended after the method's own).
        evaluator: an Avalanche ``EvaluationPlugin``; or ``loggers`` for the default one (not both).
        loggers: Avalanche loggers for the default evaluator; default: an ``InteractiveLogger``.
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
            ``lr_scheduler_interval``; it replaces the method's default
            ``lr_schedule`` (an explicitly given non-constant one is refused).
        lr_scheduler_interval: ``"epoch"`` (default) or ``"iteration"``: when ``lr_scheduler`` steps.
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
        docs = strategy_keyword_docs(PromptStrategyBase.__doc__, cls.config_cls)  # help(): every keyword
        cls.__init__.__doc__ = keyword_docstring(f"Build a {cls.__name__} (keyword-only; method settings default "
                                                 f"to the paper's).", [p.name for p in params if p.name != "self"], docs)

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
        check_loggers(list(loggers) if loggers is not None else list(getattr(evaluator, "loggers", None) or []))
        device = resolve_device(device)
        self._optimizer_factory = split_optimizer_keyword(kwargs)
        method_keys = set(config_fields(self.config_cls))
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in method_keys}
        train_epochs = resolve_train_epochs(train_epochs, overrides)  # epochs= is its deprecated name
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
        self.checkpoint_dir = user_path(checkpoint_dir)
        self.progress = progress
        self.backbone_spec = {
            "backbone": backbone if isinstance(backbone, str) else type(backbone).__name__,
            "pretrained": pretrained,
            "checkpoint_path": str(checkpoint_path) if checkpoint_path else None,
            "backbone_kwargs": dict(backbone_kwargs or {}),
        }

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
            train_epochs=self.cfg.epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[*self.default_plugins(), *(plugins or [])],
            evaluator=evaluator,
            **kwargs,
        )
        check_supported_plugins(type(self).__name__, self.plugins, self.evaluator, bool(self.model.structure()))
        self.model.to(self.device)
        self.task_classes: list[list[int]] = []  # classes of each trained task, in training order
        self.class_to_task: dict[int, int] = {}
        self.trained_experiences = 0
        self._in_train_call = False
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._scheduler_per_iteration = False
        self._pre_experience_state: dict | None = None
        self._pre_experience_model: nn.Module | None = None  # undoes what prepare_task grew on interruption
        self._experience_open = False
        self.interrupted_experience: int | None = None  # set when train() was interrupted (issue #22)
        self._last_checkpoint: Path | None = None  # the last finite checkpoint written or resumed
        self._converted_inputs: set[str] = set()  # input dtypes converted (one warning each)
        self._eval_nonfinite: list | None = None  # non-finite evaluation images, counted during eval()
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self.resume_overrides: dict[str, tuple[Any, Any]] = {}  # set by resume_from
        self.task_label_map = TaskLabelMap()  # stream task label -> task index (use_task_labels)
        self.mb_logits: Tensor | None = None  # unmasked logits of the last forward
        self.backbone_fingerprint = weights_fingerprint(self.model.vit.backbone)

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
        flat.update(method_section_keywords(flat.pop("method", {}) or {}, flat))
        flat.update(overrides)
        base_args = set(inspect.signature(_unwrapped(PromptStrategyBase.__init__)).parameters) - {"self", "kwargs"}
        allowed = base_args | set(config_fields(cls.config_cls)) | {"eval_every", "peval_mode"}
        unknown = sorted(set(flat) - allowed)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_config: unknown keys {unknown}; accepted: {sorted(allowed)}")
        return cls(**flat)

    # ------------------------------------------------------------------ per-task hooks
    def prepare_task(self, task_id: int) -> None:
        """Create the task's parameters before the optimizer is built."""

    def finish_task(self, task_id: int) -> None:
        """Post-training phases of a task (statistics, alignment...)."""

    def train_logits(self, x: Tensor) -> Tensor:
        """Training logits with the current task's prompts."""
        raise NotImplementedError(f"{type(self).__name__} must define train_logits(x) (abstract hook)")

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Unmasked inference logits of one batch (``task_ids``: oracle task ids under ``use_task_labels``);
        the public, masked and batched API is :meth:`predict_logits`."""
        raise NotImplementedError(f"{type(self).__name__} must define inference_logits(x, task_ids) (abstract hook)")

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
    def _before_training_exp(self, **kwargs: Any) -> None:
        self.model.train()  # train(list): the previous experience's end left it in eval mode
        self._check_experience(self.experience)
        self._open_experience()  # the pre-experience state an interruption or a NaN stop goes back to
        classes = experience_classes(self.experience)
        task = len(self.task_classes)
        self.task_classes.append(classes)
        for c in classes:
            self.class_to_task[c] = task
        self.prepare_task(task)
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.model.eval()
        self.model.zero_grad(set_to_none=True)  # no gradient outlives its experience (AGEM, GEM read p.grad)
        self.finish_task(self.task_id)
        self._check_state_finite()  # one reduction: a diverged state is never taken as done
        self.trained_experiences += 1
        super()._after_training_exp(**kwargs)
        self._close_experience()

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

    def eval_mask_classes(self) -> list[int] | None:
        """Classes the predictions are masked to (default: all seen so far); ``None``: unmasked."""
        return self.seen_classes

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

    def optimizer_step(self) -> None:
        if self.cfg.clip_grad is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        super().optimizer_step()
