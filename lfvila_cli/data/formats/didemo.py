"""DiDeMo (official ``train_data.json``, ``val_data.json``, ``test_data.json``) -> paragraphs.

Reads each mapped file (``didemo.splits``: file stem -> split) as a JSON list of moments
``{video, times: [[start_chunk, end_chunk], ...], description, num_segments?, ...}``; chunks are
5 s, the end chunk inclusive. A moment's time is its annotators' most frequent pair after
clipping to ``num_segments``, in seconds ``[5·s, 5·(e + 1)]``: our choice (docs/method.md §7), as
the official evaluation picks no pair but scores against every annotator's and averages the
best 3 of the 4.

Produces one sample per video: id the file name's stem, ``video`` ``<video_root>/<video>`` (or
the stem + ``didemo.video_ext``), ``duration`` null, one segment per moment sorted by time.
Fields, rejection reasons and config keys: docs/data-formats.md §5.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator

from ...errors import DataError
from ..corpus import Rejections, Sample, Segment
from . import absolute, check_split_config, join, load_json, require, safe_name, split_files, video_root, warn_missing_splits

log = logging.getLogger(__name__)

SOURCE = "didemo"
CHUNK_SECONDS = 5.0
NUM_CHUNKS = 6


def _default_splits() -> dict[str, str]:
    return {"train_data": "train", "val_data": "val", "test_data": "test"}


@dataclass
class DidemoConfig:
    annotations: str = ""  # directory (or URL) holding train_data.json / val_data.json / test_data.json
    video_root: str = ""  # directory or fsspec URL holding the videos
    video_ext: str = ""  # "" = the file name as annotated; ".mp4" = same stem, this extension
    splits: dict[str, str] = field(default_factory=_default_splits)  # file stem -> corpus split

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        check_split_config(SOURCE, self.video_ext, self.splits, "val_data")


Config = DidemoConfig


def annotation_files(cfg: DidemoConfig) -> list[tuple[str, str, str]]:
    """``(path, file stem, split)`` for each mapped annotation file that exists."""
    require(cfg, "annotations", SOURCE)
    return split_files(cfg.annotations, cfg.splits, SOURCE)


def raw_inputs(cfg: DidemoConfig) -> list[str]:
    return [path for path, _, _ in annotation_files(cfg)]


def read(cfg: DidemoConfig, out_dir, rejections: Rejections) -> Iterator[Sample]:
    """One sample per video, files in ``splits`` order, videos in order of first appearance."""
    files = annotation_files(cfg)
    warn_missing_splits(files, cfg.annotations, cfg.splits, SOURCE)
    require(cfg, "video_root", SOURCE)
    root = video_root(cfg.video_root)
    for path, stem, split in files:
        moments = load_json(path)
        if not isinstance(moments, list):
            raise DataError(f"{path}: expected a JSON list of moments, got a {type(moments).__name__}")
        by_video: dict[str, list[tuple[float, float, str]]] = {}
        for i, moment in enumerate(moments):
            reason = _moment_error(moment)
            if reason is not None:
                rejections.add(reason, f"{path}#{i}")
                continue
            start, end = consensus(_clipped_times(moment, f"{path}#{i}", rejections))
            by_video.setdefault(moment["video"], []).append((start, end, moment["description"].strip()))
        for video, segments in by_video.items():
            segments.sort(key=lambda s: (s[0], s[1]))  # stable: equal times keep file order
            name = video if not cfg.video_ext else PurePosixPath(video).stem + cfg.video_ext
            yield Sample(
                id=PurePosixPath(video).stem,
                video=join(root, name),
                duration=None,
                segments=[Segment(start, end, text) for start, end, text in segments],
                split=split,
                origin=f"{path}#{video}",
            )
        log.info("didemo: %s -> %d %s samples from %d moments", path, len(by_video), split, len(moments))


def consensus(times: list) -> tuple[float, float]:
    """Seconds ``(start, end)`` of the most frequent valid ``[start_chunk, end_chunk]`` pair (ties:
    the first listed), the end chunk inclusive."""
    # most_common keeps first-seen order among equal counts
    (start, end), _ = Counter(tuple(p) for p in times if _valid_pair(p)).most_common(1)[0]
    return start * CHUNK_SECONDS, (end + 1) * CHUNK_SECONDS


def _clipped_times(moment: dict, where: str, rejections: Rejections) -> list[list[int]]:
    """The moment's valid pairs clipped to its ``num_segments`` chunks; invalid pairs counted."""
    last = moment.get("num_segments", NUM_CHUNKS) - 1
    pairs = []
    for j, pair in enumerate(moment["times"]):
        if not _valid_pair(pair):
            reversed_pair = isinstance(pair, list) and _valid_pair(pair[::-1])
            rejections.add("reversed times pair" if reversed_pair else "bad times pair", f"{where}/times[{j}]")
            continue
        if pair[1] > last:
            rejections.adjusted.add("times clipped to num_segments", f"{where}/times[{j}]")
            pair = [min(pair[0], last), last]
        pairs.append(pair)
    return pairs


def _valid_pair(pair: Any) -> bool:
    return (
        isinstance(pair, list) and len(pair) == 2
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CHUNKS for c in pair)
        and pair[0] <= pair[1]
    )


def _moment_error(moment: Any) -> str | None:
    if not isinstance(moment, dict):
        return "record is not a JSON object"
    for name in ("video", "times", "description"):
        if name not in moment:
            return f"missing field '{name}'"
    if not safe_name(moment["video"]):
        return "bad video name"
    if not isinstance(moment["description"], str):
        return "description is not a string"
    count = moment.get("num_segments", NUM_CHUNKS)
    if not (isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= NUM_CHUNKS):
        return "bad num_segments"
    if not isinstance(moment["times"], list) or not any(_valid_pair(p) for p in moment["times"]):
        return "no valid times pair"
    return None
