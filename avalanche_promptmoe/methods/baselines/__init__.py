"""Baselines in the same engine (DECISIONS.md §D): HiDe-Prompt, linear probe, sequential prompt
tuning (the lower bound) and joint training (the upper bound)."""
