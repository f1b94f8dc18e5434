"""Nothing lost, nothing silent around one experience (issue #22), a mixin of
:class:`~.base_strategy.PromptStrategyBase`.

* ``train()`` checks its argument; an exception or Ctrl-C inside it rolls the strategy back to its
  state before the interrupted experience (model, classes, plugins, RNG; a snapshot of the model
  also undoes what ``prepare_task`` grew), so ``save_checkpoint`` saves that state and says so,
  ``resume_from`` of it continues with the interrupted experience, and a retry works.
* At the end of each experience the trainable state and the optimizer state are checked to be
  finite (one reduction); a non-finite one stops like a non-finite loss.
* A one-class experience warns (the task-masked loss is 0: nothing is learned); evaluation images
  with non-finite values are counted here (``eval()`` warns: :mod:`.bookkeeping`); mini-batch labels and images
  of a convertible dtype are converted (one warning), others refused (:mod:`.input_checks`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from .experience import experience_classes
from .input_checks import check_train_argument, convert_minibatch
from .state_safety import copy_sharing_backbone, tensors_finite

__all__ = ["ExperienceGuardMixin"]

log = logging.getLogger("avalanche_promptmoe.training.base_strategy")


class ExperienceGuardMixin:
    """Rollback of interrupted experiences, end-of-experience finite check, input checks (attributes
    set in ``PromptStrategyBase.__init__``: ``_experience_open``, ``_pre_experience_model``,
    ``interrupted_experience``, ``_converted_inputs``, ``_eval_nonfinite``)."""

    def train(self, experiences: Any, eval_streams: Any = None, **kwargs: Any) -> dict:
        check_train_argument(experiences)
        self._in_train_call = True
        try:
            result = super().train(experiences, eval_streams=eval_streams, **kwargs)
        except BaseException:
            self._in_train_call = False
            if self._experience_open:
                self._roll_back_interrupted_experience()
            raise
        finally:
            self._in_train_call = False
        self.interrupted_experience = None
        return result

    def _unpack_minibatch(self) -> None:
        super()._unpack_minibatch()
        self.mbatch[0], self.mbatch[1] = convert_minibatch(self.mbatch[0], self.mbatch[1], self._converted_inputs)
        if not self.is_training and self._eval_nonfinite is not None:  # one reduction per batch, no host sync
            x = self.mbatch[0]
            bad = (~torch.isfinite(x).flatten(1).all(1)).sum()
            self._eval_nonfinite[0] = self._eval_nonfinite[0].to(bad.device) + bad
            self._eval_nonfinite[1] += len(x)

    # ------------------------------------------------------------------ experience boundaries
    def _open_experience(self) -> None:
        """Called before an experience changes anything: the state to come back to."""
        self._pre_experience_state = self.state_dict_for_checkpoint()
        self._pre_experience_model = copy_sharing_backbone(self.uncompiled_model)
        self._experience_open = True
        classes = experience_classes(self.experience)
        if len(classes) == 1:
            warnings.warn(
                f"experience {self.trained_experiences} holds one class ({classes[0]}): the cross-entropy masked to "
                f"the experience's classes is 0 at every step, so nothing is learned from it — use experiences of "
                f"at least 2 classes", UserWarning, stacklevel=2,
            )

    def _check_state_finite(self) -> None:
        """One reduction over the trainable parameters and the optimizer state; a non-finite state
        stops training like a non-finite loss (the pre-experience state is the resume point)."""
        tensors = [p for p in self.model.parameters() if p.requires_grad]
        tensors += [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        if not tensors_finite(tensors):
            self._nan_stop(f"non-finite state (trainable parameters or optimizer state) at the end of experience "
                           f"{self.trained_experiences}")

    def _close_experience(self) -> None:
        self._experience_open = False
        self._pre_experience_model = None

    def _roll_back_interrupted_experience(self) -> None:
        index = self.trained_experiences
        pre_model, state = self._pre_experience_model, self._pre_experience_state
        self._close_experience()
        if pre_model is not None and self.uncompiled_model.structure() != state["model_structure"]:
            self.model = pre_model  # undoes the parameters prepare_task created
        self._restore_state(state, self._our_plugins(strict=False), loggers=False)
        self.interrupted_experience = index
        log.warning("train() interrupted in experience %d: the strategy is back at its state before it (retry "
                    "train(experience) or save_checkpoint, which continues with it)", index)
