"""One package per method: ``config.py`` (paper defaults), ``model.py`` (torch + timm only),
``strategy.py`` (the Avalanche strategy). Strategies are exported lazily by the top-level package."""
