"""Bring your own videos: a corpus JSON Lines file in the ``prepare`` output format itself.

Reads ``jsonl.path``, one record per line as ``Sample.from_json`` reads it::

    {"id": "cooking-01", "video": "videos/cooking-01.mp4", "duration": 95.0, "split": "train",
     "segments": [{"start": 0.0, "end": 12.5, "text": "Chop the onions."}, ...]}

Produces the same samples, with relative ``video`` paths (sample and segments) resolved under
``jsonl.video_root`` (default: the file's directory) and written absolute. A line that is not
JSON fails the run with ``file:line``; a record ``from_json`` refuses is rejected with its
reason, made countable. Details: docs/data-formats.md §12; walk-through: ``examples/custom_dataset``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...errors import ConfigError
from ..corpus import Rejections, Sample
from . import absolute, is_url, iter_jsonl, join, parent, video_root

log = logging.getLogger(__name__)

SOURCE = "jsonl"


@dataclass
class JsonlConfig:
    path: str = ""  # the corpus JSON Lines file (path or fsspec URL)
    video_root: str = ""  # base of relative video paths; "" = the directory holding `path`

    def __post_init__(self) -> None:
        self.path, self.video_root = absolute(self.path), absolute(self.video_root)


Config = JsonlConfig


def raw_inputs(cfg: JsonlConfig) -> list[str]:
    _require(cfg)
    return [cfg.path]


def read(cfg: JsonlConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    _require(cfg)
    base = video_root(cfg.video_root) if cfg.video_root else parent(cfg.path)
    count = 0
    for lineno, record in iter_jsonl(cfg.path):
        try:
            sample = Sample.from_json(record)
        except ValueError as exc:
            rejections.add(countable_reason(str(exc)), f"{cfg.path}:{lineno}")
            continue
        sample.origin = f"{cfg.path}:{lineno}"
        sample.video = resolve(sample.video, base)
        for segment in sample.segments:
            if segment.video is not None:
                segment.video = resolve(segment.video, base)
        count += 1
        yield sample
    log.info("jsonl: %s -> %d samples", cfg.path, count)


def resolve(video: str, base: str) -> str:
    """A record's video reference as a path or URL that opens from anywhere."""
    if not video or is_url(video) or os.path.isabs(video):
        return video
    return join(base, video)


def countable_reason(message: str) -> str:
    """``"'segments[3].start' is not a number: 'x'"`` -> ``"'segment.start' is not a number"``."""
    message = re.sub(r"segments\[\d+\]", "segment", message)
    return message.split(": ", 1)[0]


def _require(cfg: JsonlConfig) -> None:
    if not cfg.path:
        raise ConfigError(f"config key '{SOURCE}.path' is required for --source {SOURCE}")
