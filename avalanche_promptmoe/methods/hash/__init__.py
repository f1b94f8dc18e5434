"""Hash: History-Aware prompt-SHaring (Li et al., CVPR 2026, arXiv 2601.20894)."""
