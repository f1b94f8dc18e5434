"""Checkpointing of the strategies: the file format, plugin state, resume checks and the strategy mixin.

* :mod:`.checkpoint`: our versioned, atomic, weights-only checkpoint file (torch only);
* :mod:`.plugin_state`: which attached plugins' state a checkpoint keeps, and which it refuses;
* :mod:`.resume`: the pure checks of a payload before anything is restored;
* :mod:`.strategy_checkpoint`: ``save_checkpoint`` / ``resume_from`` / the NaN stop of
  ``PromptStrategyBase`` (a mixin).

The file-format names are also exported by :mod:`avalanche_promptmoe.training`.
"""
