"""DualPrompt on the shared engine (the CODA-Prompt code base's DualPrompt)."""
