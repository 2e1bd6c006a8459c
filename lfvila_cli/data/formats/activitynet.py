"""ActivityNet Captions (official ``train.json``, ``val_1.json``, ``val_2.json``) -> paragraphs.

Reads each mapped file (``activitynet.splits``: file stem -> split) as one JSON object
``{"v_<id>": {duration, timestamps: [[start, end], ...], sentences: [...]}}``.

Produces one sample per video entry: id ``<file stem>-<key>`` (``val_1`` and ``val_2`` annotate
the same videos), ``video`` ``<video_root>/<key><video_ext>``, the given ``duration``, one
segment per sentence (stripped), sorted by start. An end past the duration is clamped to it
(counted under ``adjusted``); a segment starting past it is dropped alone.
Fields, rejection reasons and config keys: docs/data-formats.md §4.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ...errors import DataError
from ..corpus import Rejections, Sample, Segment
from . import absolute, check_split_config, join, load_json, require, safe_name, split_files, video_root, warn_missing_splits

log = logging.getLogger(__name__)

SOURCE = "activitynet"


def _default_splits() -> dict[str, str]:
    return {"train": "train", "val_1": "val", "val_2": "test"}


@dataclass
class ActivityNetConfig:
    annotations: str = ""  # directory (or URL) holding train.json / val_1.json / val_2.json
    video_root: str = ""  # directory or fsspec URL holding v_<id><video_ext>
    video_ext: str = ".mp4"
    splits: dict[str, str] = field(default_factory=_default_splits)  # file stem -> corpus split

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        check_split_config(SOURCE, self.video_ext, self.splits, "val_1")


Config = ActivityNetConfig


def annotation_files(cfg: ActivityNetConfig) -> list[tuple[str, str, str]]:
    """``(path, file stem, split)`` for each mapped annotation file that exists."""
    require(cfg, "annotations", SOURCE)
    return split_files(cfg.annotations, cfg.splits, SOURCE)


def raw_inputs(cfg: ActivityNetConfig) -> list[str]:
    return [path for path, _, _ in annotation_files(cfg)]


def read(cfg: ActivityNetConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    """One sample per video entry, files in ``splits`` order, entries in file order."""
    files = annotation_files(cfg)
    warn_missing_splits(files, cfg.annotations, cfg.splits, SOURCE)
    require(cfg, "video_root", SOURCE)
    root = video_root(cfg.video_root)
    for path, stem, split in files:
        count = 0
        for key, entry in _load(path).items():
            where = f"{path}#{key}"
            segments = _segments(entry, key, where, rejections)
            if segments is None:
                continue
            count += 1
            yield Sample(
                id=f"{stem}-{key}",
                video=join(root, f"{key}{cfg.video_ext}"),
                duration=float(entry["duration"]),
                segments=segments,
                split=split,
                origin=where,
            )
        log.info("activitynet: %s -> %d %s samples", path, count, split)


def _load(path: str) -> dict:
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object keyed by video id, got a {type(data).__name__}")
    return data


def _segments(entry: Any, key: str, where: str, rejections: Rejections) -> list[Segment] | None:
    """The entry's segments in time order, ends clamped to the duration, or ``None`` after
    counting why it was rejected."""
    reason = _entry_error(entry, key)
    if reason is not None:
        rejections.add(reason, where)
        return None
    duration = float(entry["duration"])
    pairs = []
    for i, ((start, end), sentence) in enumerate(zip(entry["timestamps"], entry["sentences"])):
        start, end = float(start), float(end)
        if start >= duration > 0:
            rejections.add("segment starts past the duration", f"{where}[{i}]")
            continue
        if end > duration > 0:
            rejections.adjusted.add("segment end clamped to the duration", f"{where}[{i}]")
            end = duration
        pairs.append((start, end, sentence.strip()))
    pairs.sort(key=lambda p: p[0])
    return [Segment(start, end, text) for start, end, text in pairs]


def _entry_error(entry: Any, key: str) -> str | None:
    if not safe_name(key):
        return "bad video id"
    if not isinstance(entry, dict):
        return "record is not a JSON object"
    for name in ("duration", "timestamps", "sentences"):
        if name not in entry:
            return f"missing field '{name}'"
    if not _is_number(entry["duration"]):
        return "duration is not a number"
    timestamps, sentences = entry["timestamps"], entry["sentences"]
    if not isinstance(timestamps, list) or not isinstance(sentences, list):
        return "timestamps or sentences is not a list"
    if len(timestamps) != len(sentences):
        return "timestamps and sentences differ in length"
    for pair in timestamps:
        if not isinstance(pair, list) or len(pair) != 2 or not all(_is_number(t) for t in pair):
            return "bad timestamp"
    if not all(isinstance(s, str) for s in sentences):
        return "sentence is not a string"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
