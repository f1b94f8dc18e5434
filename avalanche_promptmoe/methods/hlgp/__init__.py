"""HLGP: Hierarchical Layer-Grouped Prompt tuning (Jiang et al., arXiv 2511.12090)."""
