"""Prompt parameter containers (no routing logic). Imports only torch."""

from .layer_grouped import LayerGroupedPromptGenerator, check_layer_groups
from .layouts import PrefixLayout, arrange_prefix
from .pool import PromptPool, init_prompt_, prefix_lengths

__all__ = ["LayerGroupedPromptGenerator", "PrefixLayout", "PromptPool", "arrange_prefix", "check_layer_groups", "init_prompt_", "prefix_lengths"]
