"""SMoPE: Sparse Mixture of Prompt Experts (Le et al., ICLR 2026, arXiv 2509.24483)."""
