"""Strategy keywords: docs that describe every one, and the ``epochs`` → ``train_epochs`` alias.

A strategy's keywords are the base class's (documented in its ``__init__`` "Args:" section) and its
config's fields (documented in the config classes' "Attributes:" sections, over the MRO).
:func:`keyword_docstring` joins them into one "Args:" list in signature order, so ``help()`` on any
strategy describes each keyword once.

One public name per setting: the main (WTP) epochs are ``train_epochs`` (Avalanche's name;
DECISIONS §C1). The config field behind it stays ``epochs`` (config files' ``[method] epochs``); as a
strategy keyword ``epochs=`` is a deprecated alias (:func:`resolve_train_epochs`, one warning).
"""

from __future__ import annotations

import inspect
import re
import textwrap
import warnings
from collections.abc import Iterable
from typing import Any

__all__ = ["keyword_docstring", "method_section_keywords", "resolve_train_epochs", "section_entries", "strategy_keyword_docs"]

_ENTRY = re.compile(r"^(?P<names>\*{0,2}[A-Za-z_]\w*(?:\s*[,/]\s*[A-Za-z_]\w*)*)\s*:\s*(?P<text>.*)$")


def section_entries(doc: str | None, section: str) -> dict[str, str]:
    """``{name: description}`` of a Google-style section (``"Args"``, ``"Attributes"``) of ``doc``.

    An entry ``a, b: text`` (or ``a / b: text``) documents both names; continuation lines (indented
    deeper) are joined.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        stripped = line.strip()
        if stripped == f"{section}:":
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if indent is None:
            indent = level
        if level < indent or (level == 0 and stripped.endswith(":")):
            inside = False
            continue
        match = _ENTRY.match(stripped) if level == indent else None
        if match:
            current = [n.strip().lstrip("*") for n in re.split(r"[,/]", match["names"])]
            for name in current:
                out[name] = match["text"].strip()
        elif current:
            for name in current:
                out[name] = f"{out[name]} {stripped}".strip()
    return out


def keyword_docstring(summary: str, names: Iterable[str], docs: dict[str, str], *, width: int = 100) -> str:
    """A docstring: ``summary``, then "Args:" with one entry per name in ``names`` (the signature's
    order). A name without a description is listed as "(undocumented)", so tests can find it."""
    body = [summary.strip(), "", "Args:"]
    for name in names:
        text = docs.get(name) or "(undocumented)"
        body.append(textwrap.fill(f"{name}: {text}", width=width, initial_indent="    ", subsequent_indent="        "))
    return "\n".join(body) + "\n"


def strategy_keyword_docs(base_doc: str | None, config_cls: type) -> dict[str, str]:
    """``{keyword: description}``: the config fields' "Attributes" over ``config_cls``'s MRO (a
    subclass's text wins), then the base constructor's "Args" (which win over both)."""
    docs: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        docs.update(section_entries(klass.__doc__, "Attributes"))
    docs.update(section_entries(base_doc, "Args"))
    docs["epochs"] = ("deprecated keyword: the config field behind ``train_epochs`` (pass "
                      "``train_epochs=``; ``[method] epochs`` in config files is fine).")
    return docs


_warned_epochs_alias = False


def resolve_train_epochs(train_epochs: int | None, overrides: dict[str, Any]) -> int | None:
    """Fold the deprecated ``epochs=`` keyword (in ``overrides``, the config-field keywords) into
    ``train_epochs`` and record the result as the config's ``epochs``, so that the config (and
    every log of it) says what runs. Both given and different is a ``ValueError``."""
    global _warned_epochs_alias
    if "epochs" in overrides:
        epochs = overrides["epochs"]
        if train_epochs is not None and train_epochs != epochs:
            raise ValueError(f"train_epochs={train_epochs} and epochs={epochs}: pass train_epochs= only "
                             f"(epochs= is its deprecated name)")
        if not _warned_epochs_alias:
            _warned_epochs_alias = True
            warnings.warn("epochs= as a strategy keyword is deprecated: pass train_epochs= (the main training "
                          "epochs; DECISIONS §C1)", DeprecationWarning, stacklevel=4)
        train_epochs = epochs
    if train_epochs is not None:
        overrides["epochs"] = train_epochs
    return train_epochs


def method_section_keywords(method: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """A config file's ``[method]`` section as strategy keywords: its ``epochs`` (the config field's
    name) becomes ``train_epochs`` unless the strategy keywords ``flat`` already set it."""
    method = dict(method)
    if "epochs" in method and "train_epochs" not in flat:
        flat["train_epochs"] = method.pop("epochs")
    return method
