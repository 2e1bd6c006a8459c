"""lfvila: long-form video-language pre-training (LF-VILA) as reproducible, cached stages.

The Python API (README, "Python API"), imported on first use so that ``import lfvila_cli`` and
``lfvila --help`` stay free of torch:

    model = lfvila_cli.load("path/to/model-or-hub/id", device="cpu")   # -> lfvila_cli.api.Lfvila
    model.encode_videos(["a.mp4", "b.mp4"]); model.encode_paragraphs([["a sentence.", "another."]])
    model.rank(paragraphs, videos); model.answer("a.mp4", "what happens?", ["x", "y", "z", "w"])
    lfvila_cli.load_model(...)   # the bare torch model of its class (LfvilaModel.from_pretrained)
"""

from .version import __version__

_API = {"load": "lfvila_cli.api", "load_model": "lfvila_cli.api", "Lfvila": "lfvila_cli.api"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The API names, imported when first asked for (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'lfvila_cli' has no attribute {name!r}")
    from . import api

    value = getattr(api, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
