"""HD-VILA-100M clip metadata -> long-form samples (the LF-VILA-8M construction, docs/method.md §1).

Reads ``hdvila.metadata`` (JSON Lines, one video per line: ``{video_id, url, clip: [{clip_id,
span: ["HH:MM:SS.mmm", "HH:MM:SS.mmm"]}]}``; path, URL or glob) and the ASR text, from
``hdvila.text`` (JSON Lines ``{clip_id, text}``) or a ``text`` field on each clip. Per video:
clips are parsed one by one (a bad clip is rejected alone), chained into runs while
``|next.start - prev.end| <= gap_tolerance``, runs shorter than ``min_clips`` dropped, and runs
longer than ``max_clips`` cut into near-equal windows (``max_clips = 0`` keeps whole runs).

Produces one sample per window: id ``<video_id>-<window index>``, ``duration`` null, one segment
per clip on the source timeline; layout ``clips``: ``video`` ``<root>/<video_id>`` and each
segment its own ``<root>/<video_id>/<clip_id>``; layout ``source``: ``<root>/<video_id><ext>``.
Fields, rejection reasons and config keys: docs/data-formats.md §3.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from ...config import check
from ...errors import ConfigError
from ..corpus import SPLITS, Rejections, Sample, Segment
from . import absolute, expand, iter_jsonl, join, parse_time, safe_name, video_root

log = logging.getLogger(__name__)

SOURCE = "hdvila"
MISSING_TEXT_NO_FILE = f"missing text ({SOURCE}.text not set)"
# Float spans ("00:00:12.700" - "00:00:12.200") miss an exact tolerance by rounding.
_EPS = 1e-6


@dataclass
class HdvilaConfig:
    metadata: str = ""  # clip metadata JSON Lines: a path, URL or glob (hdvila_part*.jsonl)
    text: str = ""  # ASR JSON Lines {clip_id, text} (path, URL or glob); "" = inline clip text only
    video_root: str = ""  # directory or fsspec URL holding the videos
    layout: Literal["clips", "source"] = "clips"  # clips: <root>/<video_id>/<clip_id>; source: <root>/<video_id><video_ext>
    video_ext: str = ".mp4"  # source layout only
    split: str = "train"
    min_clips: int = 4  # shortest run of contiguous clips kept (docs/method.md §1)
    max_clips: int = 8  # longest window; longer runs are split evenly (0 = keep whole runs)
    gap_tolerance: float = 0.5  # seconds of gap or overlap between clips still counted as contiguous

    def __post_init__(self) -> None:
        self.metadata, self.text, self.video_root = absolute(self.metadata), absolute(self.text), absolute(self.video_root)
        check(self.layout in ("clips", "source"), f"{SOURCE}.layout", f"expected 'clips' or 'source', got {self.layout!r}")
        check(self.split in SPLITS, f"{SOURCE}.split", f"expected one of {list(SPLITS)}, got {self.split!r}")
        check(self.min_clips >= 1, f"{SOURCE}.min_clips", f"must be at least 1, got {self.min_clips}")
        check(
            self.max_clips == 0 or self.max_clips >= self.min_clips,
            f"{SOURCE}.max_clips",
            f"must be 0 (no limit) or at least min_clips ({self.min_clips}), got {self.max_clips}",
        )
        check(
            math.isfinite(self.gap_tolerance) and self.gap_tolerance >= 0,
            f"{SOURCE}.gap_tolerance",
            f"must be a non-negative number of seconds, got {self.gap_tolerance}",
        )
        check(self.video_ext == "" or self.video_ext.startswith("."), f"{SOURCE}.video_ext", f"must start with '.', got {self.video_ext!r}")


Config = HdvilaConfig


@dataclass(frozen=True)
class Clip:
    clip_id: str
    start: float
    end: float
    text: str


def raw_inputs(cfg: HdvilaConfig) -> list[str]:
    _require(cfg, "metadata")
    files = expand(cfg.metadata, f"{SOURCE}.metadata")
    if cfg.text:
        files += expand(cfg.text, f"{SOURCE}.text")
    return files


def read(cfg: HdvilaConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    """Long-form samples from every metadata file, in file and line order."""
    _require(cfg, "metadata")
    _require(cfg, "video_root")
    root = video_root(cfg.video_root)
    texts = load_texts(cfg.text, rejections) if cfg.text else {}
    # The release has no transcripts: without a text file, say which key would have given them.
    missing = "missing text" if cfg.text else MISSING_TEXT_NO_FILE
    videos = samples = 0
    for path in expand(cfg.metadata, f"{SOURCE}.metadata"):
        for lineno, record in iter_jsonl(path):
            where = f"{path}:{lineno}"
            parsed = _parse_video(record, where, texts, rejections, missing)
            if parsed is None:
                continue
            videos += 1
            video_id, url, clips = parsed
            windows = _windows(chain_runs(clips, cfg.gap_tolerance), cfg, where, rejections)
            for index, window in enumerate(windows):
                samples += 1
                sample = _sample(video_id, url, index, window, cfg, root)
                sample.origin = where
                yield sample
    log.info("hdvila: %d videos -> %d long-form samples", videos, samples)
    if not samples and rejections.counts[missing] and not cfg.text:
        raise ConfigError(
            f"config key '{SOURCE}.text' is required: {rejections.counts[missing]} clip(s) have no inline text and the "
            "HD-VILA release carries no transcripts; set it to the ASR JSON Lines {clip_id, text}"
        )


def load_texts(pattern: str, rejections: Rejections) -> dict[str, str]:
    """``clip_id -> text`` from ASR JSON Lines; a repeated clip keeps its first text."""
    texts: dict[str, str] = {}
    for path in expand(pattern, f"{SOURCE}.text"):
        for lineno, record in iter_jsonl(path):
            where = f"{path}:{lineno}"
            if not isinstance(record, dict):
                rejections.add("text record is not a JSON object", where)
            elif not isinstance(record.get("clip_id"), str) or not isinstance(record.get("text"), str):
                rejections.add("text record needs string 'clip_id' and 'text'", where)
            elif record["clip_id"] in texts:
                rejections.add("duplicate text for clip", where)
            else:
                texts[record["clip_id"]] = record["text"]
    return texts


def chain_runs(clips: list[Clip], gap_tolerance: float) -> list[list[Clip]]:
    """Runs of clips contiguous in time (|next.start - prev.end| <= gap_tolerance), by start."""
    runs: list[list[Clip]] = []
    for clip in sorted(clips, key=lambda c: c.start):
        if runs and abs(clip.start - runs[-1][-1].end) <= gap_tolerance + _EPS:
            runs[-1].append(clip)
        else:
            runs.append([clip])
    return runs


def window_sizes(n: int, min_clips: int, max_clips: int) -> tuple[list[int], int]:
    """Lengths of the consecutive windows a run of ``n`` clips is cut into, and the dropped tail."""
    if n < min_clips:
        return [], n
    if max_clips == 0 or n <= max_clips:
        return [n], 0
    count = -(-n // max_clips)
    base, extra = divmod(n, count)
    if base >= min_clips:
        return [base + 1] * extra + [base] * (count - extra), 0
    full, tail = divmod(n, max_clips)
    if tail >= min_clips:
        return [max_clips] * full + [tail], 0
    return [max_clips] * full, tail


def _windows(runs: list[list[Clip]], cfg: HdvilaConfig, where: str, rejections: Rejections) -> list[list[Clip]]:
    windows = []
    for run in runs:
        sizes, dropped = window_sizes(len(run), cfg.min_clips, cfg.max_clips)
        span = f"{where}#{run[0].clip_id}..{run[-1].clip_id}"
        if not sizes:
            rejections.add(f"run shorter than {cfg.min_clips} clips", span)
            continue
        if dropped:
            rejections.add(f"run remainder shorter than {cfg.min_clips} clips", span)
        start = 0
        for size in sizes:
            windows.append(run[start : start + size])
            start += size
    return windows


def _parse_video(
    record: Any, where: str, texts: dict[str, str], rejections: Rejections, missing: str = "missing text"
) -> tuple[str, str | None, list[Clip]] | None:
    if not isinstance(record, dict):
        rejections.add("record is not a JSON object", where)
        return None
    for name in ("video_id", "clip"):
        if name not in record:
            rejections.add(f"missing field '{name}'", where)
            return None
    video_id = record["video_id"]
    if not safe_name(video_id):
        rejections.add("bad video_id", where)
        return None
    if not isinstance(record["clip"], list):
        rejections.add("'clip' is not a list", where)
        return None
    if not record["clip"]:
        rejections.add("no clips", where)
        return None
    clips: list[Clip] = []
    seen: set[str] = set()
    for i, entry in enumerate(record["clip"]):
        clip = _parse_clip(entry, texts)
        if clip == "missing text":
            clip = missing
        if isinstance(clip, Clip) and clip.clip_id in seen:
            clip = "duplicate clip_id"
        if isinstance(clip, str):
            clip_id = entry.get("clip_id") if isinstance(entry, dict) else None
            rejections.add(clip, f"{where}#{clip_id if isinstance(clip_id, str) else f'clip[{i}]'}")
            continue
        seen.add(clip.clip_id)
        clips.append(clip)
    url = record.get("url")
    return video_id, url if isinstance(url, str) else None, clips


def _parse_clip(entry: Any, texts: dict[str, str]) -> Clip | str:
    """The clip, or the reason it cannot become a segment."""
    if not isinstance(entry, dict):
        return "clip is not an object"
    for name in ("clip_id", "span"):
        if name not in entry:
            return f"missing field '{name}'"
    if not safe_name(entry["clip_id"]):
        return "bad clip_id"
    span = entry["span"]
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return "span is not a [start, end] pair"
    try:
        start, end = parse_time(span[0]), parse_time(span[1])
    except ValueError:
        return "bad timestamp"
    if end <= start:
        return "segment ends before it starts"
    text = _clip_text(entry, texts)
    if text is None:
        return "missing text"
    if not isinstance(text, str):
        return "text is not a string"
    if not text.strip():
        return "empty text"
    return Clip(entry["clip_id"], start, end, text.strip())


def _clip_text(entry: dict, texts: dict[str, str]) -> Any:
    # The separate ASR file, when given, wins over inline text; inline text fills its gaps.
    return texts.get(entry["clip_id"], entry.get("text"))


def _sample(video_id: str, url: str | None, index: int, window: list[Clip], cfg: HdvilaConfig, root: str) -> Sample:
    if cfg.layout == "clips":
        video = join(root, video_id)
        segments = [Segment(c.start, c.end, c.text, join(root, video_id, c.clip_id)) for c in window]
    else:
        video = join(root, f"{video_id}{cfg.video_ext}")
        segments = [Segment(c.start, c.end, c.text) for c in window]
    return Sample(
        id=f"{video_id}-{index}",
        video=video,
        duration=None,
        segments=segments,
        split=cfg.split,
        task={"url": url} if url else {},
    )


def _require(cfg: HdvilaConfig, name: str) -> None:
    if not getattr(cfg, name):
        raise ConfigError(f"config key '{SOURCE}.{name}' is required for --source {SOURCE}")
