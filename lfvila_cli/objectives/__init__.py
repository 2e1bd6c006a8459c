"""LF-VILA's losses: features in, losses out (``losses.py``; docs/method.md §4, §6), and their
configuration (``config.py``).

``from lfvila_cli.objectives import X`` gives any of them. The losses (and torch) are imported on
first use of one: the config is part of every stage config, which must load without torch.
"""

from __future__ import annotations

from .config import IGNORE_INDEX, NO_TARGET, ObjectiveConfig

__all__ = ["IGNORE_INDEX", "NO_TARGET", "ObjectiveConfig"]


def __getattr__(name: str):
    """A loss of ``losses.py``, importing it on first use."""
    if name == "losses" or name.startswith("__"):  # the submodule itself is found by the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import losses

    try:
        return getattr(losses, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
