"""QuerYD (captions + times + split lists, as released) -> paragraphs.

Reads from ``queryd.annotations``: the captions ``{"video-<id>": [description, ...]}`` (each a
list of word tokens or a string; JSON, or a pickle only with ``queryd.allow_pickle=true``), the
optional times (same keys, per description a ``[start, end]`` pair or a list of pairs), and the
split lists ``<stem>.txt`` of ``queryd.splits`` (one ``video-<id>`` or bare ``<id>`` per line).

Produces one sample per listed video: id the YouTube id, ``video``
``<video_root>/video-<id><video_ext>`` (``keep_prefix=false``: ``<id><video_ext>``), ``duration``
null, one segment per description, timed and sorted by start when the video's times are usable,
untimed in file order otherwise. Fields, rejection reasons and config keys: docs/data-formats.md §6.
"""

from __future__ import annotations

import logging
import math
import numbers
import pickle
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator

from ...config import check
from ...errors import DataError
from ..corpus import Rejections, Sample, Segment
from . import absolute, check_split_config, exists, join, load_json, not_utf8, open_text, require, safe_name, video_root

log = logging.getLogger(__name__)

SOURCE = "queryd"
PREFIX = "video-"
CAPTION_NAMES = ("raw_captions_combined_filtered.json", "raw_captions_combined_filtered.pkl")
TIME_NAMES = ("times_captions_combined_filtered.json", "times_captions_combined_filtered.pkl")
NO_TIMES = "none"
PICKLE_SUFFIXES = (".pkl", ".pickle")


def _default_splits() -> dict[str, str]:
    return {"train_list": "train", "val_list": "val", "test_list": "test"}


@dataclass
class QuerydConfig:
    annotations: str = ""  # directory (or URL) holding the captions, times and split lists
    captions: str = ""  # file name in annotations; "" = raw_captions_combined_filtered.json, else .pkl
    times: str = ""  # file name in annotations; "" = the release name if present; "none" = untimed
    splits: dict[str, str] = field(default_factory=_default_splits)  # split-list stem (<stem>.txt) -> corpus split
    video_root: str = ""  # directory or fsspec URL holding the videos
    video_ext: str = ".mp4"
    keep_prefix: bool = True  # video file video-<id><ext> (QuerYD downloader); false: <id><ext>
    allow_pickle: bool = False  # read .pkl files (unpickling runs code stored in the file)

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        check_split_config(SOURCE, self.video_ext, self.splits, "val_list")
        check(self.captions == "" or safe_name(self.captions), f"{SOURCE}.captions", f"expected a file name in queryd.annotations, got {self.captions!r}")
        check(self.times == "" or safe_name(self.times), f"{SOURCE}.times", f"expected a file name in queryd.annotations or 'none', got {self.times!r}")


Config = QuerydConfig


@dataclass(frozen=True)
class _Inputs:
    captions: str
    times: str | None
    splits: list[tuple[str, str, str]]  # (path, stem, split) of the split lists found


def _inputs(cfg: QuerydConfig) -> _Inputs:
    require(cfg, "annotations", SOURCE)
    captions = _pick(cfg, cfg.captions, CAPTION_NAMES, "captions")
    if cfg.times == NO_TIMES:
        times = None
    elif cfg.times:
        times = join(cfg.annotations, cfg.times)
    else:
        times = next((join(cfg.annotations, n) for n in TIME_NAMES if exists(join(cfg.annotations, n))), None)
    for path in (captions, times):
        if path is not None:
            _check_pickle_allowed(cfg, path)
    found = [(join(cfg.annotations, f"{stem}.txt"), stem, split) for stem, split in cfg.splits.items()]
    found = [entry for entry in found if exists(entry[0])]
    if not found:
        names = ", ".join(f"{stem}.txt" for stem in cfg.splits)
        raise DataError(f"{cfg.annotations}: none of {names} found (config key '{SOURCE}.splits')")
    return _Inputs(captions, times, found)


def _pick(cfg: QuerydConfig, name: str, defaults: tuple[str, ...], key: str) -> str:
    if name:
        return join(cfg.annotations, name)
    for candidate in defaults:
        path = join(cfg.annotations, candidate)
        if exists(path):
            return path
    raise DataError(f"{cfg.annotations}: none of {', '.join(defaults)} found (config key '{SOURCE}.{key}')")


def _is_pickle(path: str) -> bool:
    return any(suffix in PICKLE_SUFFIXES for suffix in PurePosixPath(path).suffixes)


def _check_pickle_allowed(cfg: QuerydConfig, path: str) -> None:
    json_name = PurePosixPath(path).name.split(".")[0] + ".json"
    check(
        not _is_pickle(path) or cfg.allow_pickle,
        f"{SOURCE}.allow_pickle",
        f"{path} is a Python pickle and unpickling runs code stored in the file; set {SOURCE}.allow_pickle=true "
        f"if you trust it, or convert it to JSON of the same structure ({json_name}), which needs no opt-in",
    )


def raw_inputs(cfg: QuerydConfig) -> list[str]:
    found = _inputs(cfg)
    return [found.captions, *([found.times] if found.times else []), *(path for path, _, _ in found.splits)]


def read(cfg: QuerydConfig, out_dir, rejections: Rejections) -> Iterator[Sample]:
    """One sample per listed video, split files in ``splits`` order, videos in list order."""
    found = _inputs(cfg)
    absent = sorted(set(cfg.splits) - {stem for _, stem, _ in found.splits})
    if absent:
        log.warning("queryd: %s not found in %s; their splits stay empty", ", ".join(f"{s}.txt" for s in absent), cfg.annotations)
    require(cfg, "video_root", SOURCE)
    root = video_root(cfg.video_root)
    captions = _load_dict(found.captions, "captions")
    times = _load_dict(found.times, "times") if found.times else {}
    listed: set[str] = set()
    untimed = 0
    for path, _, split in found.splits:
        count = 0
        for lineno, line in _split_lines(path):
            where = f"{path}:{lineno}"
            key = line if line.startswith(PREFIX) else PREFIX + line  # a bare YouTube id
            if not safe_name(key[len(PREFIX):]):
                rejections.add("bad video id", where)
                continue
            if key in listed:
                rejections.add("video listed twice", where)
                continue
            listed.add(key)
            if key not in captions:
                rejections.add("no captions", where)
                continue
            sentences = _sentences(captions[key], f"{found.captions}#{key}", rejections)
            if not sentences:
                continue
            spans = _spans(times.get(key), len(captions[key]))
            if spans is None:
                untimed += 1
                segments = [Segment(None, None, text) for _, text in sentences]
            else:
                timed = sorted(((spans[i][0], spans[i][1], text) for i, text in sentences), key=lambda s: s[0])
                segments = [Segment(start, end, text) for start, end, text in timed]
            youtube_id = key[len(PREFIX):]
            count += 1
            yield Sample(
                id=youtube_id,
                video=join(root, (key if cfg.keep_prefix else youtube_id) + cfg.video_ext),
                duration=None,
                segments=segments,
                split=split,
                origin=where,
            )
        log.info("queryd: %s -> %d %s samples", path, count, split)
    if untimed:
        log.warning("queryd: %d video(s) without usable times: their sentences are untimed", untimed)
    unlisted = len(set(captions) - listed)
    if unlisted:
        log.info("queryd: %d captioned video(s) are in no split list and were skipped", unlisted)


def _load_dict(path: str, what: str) -> dict:
    data = _load_pickle(path) if _is_pickle(path) else load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {what} keyed by 'video-<id>', got a {type(data).__name__}")
    return data


def _load_pickle(path: str) -> Any:
    """Unpickle ``path``; only reached when ``queryd.allow_pickle`` is set (checked in ``_inputs``)."""
    import fsspec

    try:
        with fsspec.open(path, "rb", compression="infer") as fh:
            return pickle.load(fh)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # an unpickling failure can raise almost anything
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from None


def _split_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` for each non-blank line of a split list."""
    fh = open_text(path)
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, line.strip()
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except OSError as exc:
            raise DataError(f"{path}:{lineno + 1}: read failed ({exc.strerror or exc})") from None


def _sentences(descriptions: Any, where: str, rejections: Rejections) -> list[tuple[int, str]]:
    """``(description index, sentence)`` for each usable description; an empty list after
    counting why the video has none."""
    if not isinstance(descriptions, (list, tuple)):
        rejections.add("captions are not a list", where)
        return []
    sentences = []
    for i, tokens in enumerate(descriptions):
        if isinstance(tokens, str):
            text = " ".join(tokens.split())
        elif isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens):
            text = " ".join(t.strip() for t in tokens if t.strip())
        else:
            rejections.add("bad description", f"{where}[{i}]")
            continue
        if not text:
            rejections.add("empty description", f"{where}[{i}]")
            continue
        sentences.append((i, text))
    if not sentences:
        rejections.add("no descriptions", where)
    return sentences


def _spans(entry: Any, count: int) -> list[tuple[float, float]] | None:
    """One ``(start, end)`` per description (indexed like the captions), or ``None`` when the
    times entry is absent or not one of the accepted shapes."""
    entry = _as_list(entry)
    if entry is None or len(entry) != count:
        return None
    spans = []
    for item in entry:
        item = _as_list(item)
        if item is None:
            return None
        pair = _pair(item)
        if pair is None:
            pairs = [_pair(_as_list(p)) for p in item]
            if not pairs or any(p is None for p in pairs):
                return None
            pair = (min(p[0] for p in pairs), max(p[1] for p in pairs))
        spans.append(pair)
    return spans


def _pair(item: list | None) -> tuple[float, float] | None:
    if item is None or len(item) != 2 or not all(_is_number(t) for t in item):
        return None
    start, end = float(item[0]), float(item[1])
    return (start, end) if 0 <= start < end else None


def _as_list(value: Any) -> list | None:
    """Lists and tuples, and numpy arrays from a pickle, as a list; anything else ``None``."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
        return value if isinstance(value, list) else None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
