"""Issue #21, item 6: ``help()`` on every strategy describes every keyword; one public name for the
main epochs (``train_epochs``; ``epochs=`` warns once and means the same); the README's engine
snippet says what ``forward_explicit`` returns."""

from __future__ import annotations

import inspect
import pydoc
import re
import warnings
from pathlib import Path

import pytest
from strategy_kit import TINY_KW, make_tiny_strategy

from avalanche_promptmoe.training.keywords import section_entries

STRATEGIES = [cls for cls, _ in TINY_KW.values()]


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_help_describes_every_keyword(cls):
    doc = cls.__init__.__doc__
    entries = section_entries(doc, "Args")
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    undocumented = [n for n in names if not entries.get(n) or entries[n] == "(undocumented)"]
    assert not undocumented, f"{cls.__name__}: keywords without a description: {undocumented}"
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for name in ("top_k", "tap_epochs", "train_epochs", "lr_scheduler_interval"):
        if name in names:
            assert re.search(rf"\b{name}: \S", text), f"help({cls.__name__}) does not describe {name}"


def test_epochs_keyword_is_a_deprecated_alias_of_train_epochs():
    import avalanche_promptmoe.training.keywords as keywords

    keywords._warned_epochs_alias = False  # once per process: reset for this test
    with pytest.warns(DeprecationWarning, match=r"epochs=.*deprecated.*train_epochs="):
        s = make_tiny_strategy("seq", train_epochs=None, epochs=3)
    assert s.train_epochs == 3 and s.cfg.epochs == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        again = make_tiny_strategy("seq", train_epochs=None, epochs=2)  # warned once already
    assert again.train_epochs == 2
    with pytest.raises(ValueError, match="train_epochs=4 and epochs=3"):
        make_tiny_strategy("seq", train_epochs=4, epochs=3)


def test_train_epochs_is_what_the_config_records():
    s = make_tiny_strategy("seq", train_epochs=2)
    assert s.train_epochs == s.cfg.epochs == 2  # logged as method.epochs: what ran


def test_readme_engine_snippet_says_forward_explicit_returns_a_dict():
    import torch
    from conftest import make_tiny_vit

    from avalanche_promptmoe.engine import PrefixViT

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "forward_explicit(x, prefix)" in ln)
    assert "{layer: (B, H, N, P)}" in line
    feats, logits = PrefixViT(make_tiny_vit(), layers=[0]).forward_explicit(torch.zeros(1, 3, 32, 32), {
        0: (torch.zeros(1, 2, 1, 32), torch.zeros(1, 2, 1, 32))})
    assert isinstance(logits, dict) and logits[0].shape[-1] == 1
