"""Prompt parameter containers (no routing logic). Imports only torch."""

from .pool import PromptPool, init_prompt_, prefix_lengths

__all__ = ["PromptPool", "init_prompt_", "prefix_lengths"]
