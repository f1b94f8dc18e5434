"""CODA-Prompt on the shared engine (its official code, GT-RIPL/CODA-Prompt)."""
