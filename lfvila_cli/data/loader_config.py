"""What the data loaders are configured with (``LoaderConfig``): the training window, the
tokens per sentence, the augmentation and the normalisation (docs/method.md §1). Torch-free, so
that stage configs load without torch; the loaders themselves are ``loader.py`` and
``task_data.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import check
from ..errors import ConfigError
from .corpus import PRETRAIN_WINDOW

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class LoaderConfig:
    clips_per_sample: int = PRETRAIN_WINDOW
    frames_per_clip: int = 0  # 0 = the store's frames_per_segment; else must equal it
    max_tokens: int = 50
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  # of the frame's area
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # width / height
    flip_prob: float = 0.5
    seed: int = 0
    source: Literal["store", "decode"] = "store"

    def __post_init__(self) -> None:
        check(self.clips_per_sample >= 1, "clips_per_sample", f"must be >= 1, got {self.clips_per_sample}")
        check(self.frames_per_clip >= 0, "frames_per_clip", f"must be >= 0 (0 = from the store), got {self.frames_per_clip}")
        check(self.max_tokens >= 2, "max_tokens", f"must be >= 2 ([CLS] and [SEP]), got {self.max_tokens}")
        for name in ("image_mean", "image_std"):
            check(len(getattr(self, name)) == 3, name, f"needs 3 values (RGB), got {getattr(self, name)}")
        check(all(s > 0 for s in self.image_std), "image_std", f"must be positive, got {self.image_std}")
        lo, hi = (self.crop_scale + [0, 0])[:2]
        check(len(self.crop_scale) == 2 and 0 < lo <= hi <= 1, "crop_scale", f"needs 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = (self.crop_ratio + [0, 0])[:2]
        check(len(self.crop_ratio) == 2 and 0 < lo <= hi, "crop_ratio", f"needs 0 < min <= max, got {self.crop_ratio}")
        check(0.0 <= self.flip_prob <= 1.0, "flip_prob", f"must be in [0, 1], got {self.flip_prob}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(self.source in ("store", "decode"), "source", f"must be 'store' or 'decode', got {self.source!r}")


# The loader fields that decide an example's video (its window, crop, flip, normalisation): what
# a cached view of the frozen video encoder's output depends on (``featurestore.py``).
# ``max_tokens`` shapes the text only; ``source`` reads the same frames another way.
VIEW_FIELDS = ("clips_per_sample", "frames_per_clip", "image_mean", "image_std", "crop_scale", "crop_ratio", "flip_prob", "seed")


def view_config(cfg: LoaderConfig) -> dict:
    """The ``VIEW_FIELDS`` of ``cfg`` as a dict (lists for the list fields)."""
    return {name: list(getattr(cfg, name)) if isinstance(getattr(cfg, name), list) else getattr(cfg, name) for name in VIEW_FIELDS}


def trained_loader_config(stage_config: dict) -> LoaderConfig:
    """The loader settings a model was trained with, from its artifact's stage config (a dict:
    ``pipeline.artifacts.read_stage_config``); the tiny presets' defaults (``max_tokens`` 32)
    when it has none."""
    from ..config import from_dict

    loader = stage_config.get("loader") or {}
    return from_dict(LoaderConfig, loader, "loader.") if loader else LoaderConfig(max_tokens=32)


def text_slots(kind: str, clips_per_sample: int, max_subtitles: int) -> int:
    """Sentence slots per text: the paragraph's M, or question (+ candidate) + subtitles."""
    if kind == "retrieval":
        return clips_per_sample
    return (2 if kind == "multiple_choice" else 1) + max_subtitles


def check_task_shapes(
    kind: str, k: int, n: int, slots: int, frames_per_clip: int, max_frames: int | None, max_sentences: int, store: str = "the frame store"
) -> None:
    """One-line errors when a chunks store of ``n`` chunks × ``k`` frames and texts of ``slots``
    sentence slots do not fit a model: used on the loaded dataset (``check_fit``) and, before
    anything runs, on the configs alone (stages/compat.py)."""
    if k != frames_per_clip:
        raise ConfigError(
            f"{store} holds {k} frames per chunk but the model's clips are {frames_per_clip} frames "
            f"(video.frames_per_clip): cache with frames_per_segment={frames_per_clip}"
        )
    if max_frames is not None and n * k > max_frames:
        raise ConfigError(f"{store} gives {n} chunks × {k} = {n * k} frames, more than the model's fusion.max_frames={max_frames}: cache fewer num_chunks")
    if slots > max_sentences:
        key = "loader.clips_per_sample" if kind == "retrieval" else "max_subtitles"
        raise ConfigError(f"config key '{key}': {slots} sentence slots per text, more than the model's {max_sentences}")
