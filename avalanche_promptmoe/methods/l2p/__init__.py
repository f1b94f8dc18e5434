"""L2P(++) on the shared engine (the CODA-Prompt code base's L2P)."""
