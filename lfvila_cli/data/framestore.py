"""The frame store's schema, and everything that creates, checks, reads or seeds one.

The frame store holds the decoded, resized frames of every corpus segment in a Zarr v3 group.
It is written by ``lfvila cache`` (``cache.py``: planning and decoding, through this module's
functions) and read by training every step (``FrameStore``). The group lives on any fsspec URL
(a local path, ``file://``, ``memory://``, ``s3://`` ...); by default ``frames.zarr`` in the
cache artifact (``store_location``). This module is the one place that knows the layout.

Layout (``layout_version`` 2; docs/data-formats.md §13 is the reference for other tools). ``K`` =
``frames_per_segment``, ``H`` × ``W`` = ``height`` × ``width``; ``R`` rows, ``S`` samples:

* one *row* per segment (a clip of the corpus, or an equal chunk of a downstream video);
  the rows of a sample are contiguous and in segment order. Row arrays, every one chunked one
  row per chunk, so ranks fill disjoint rows without locks:

  - ``frames``, dimensions ``row, frame[, y, x, rgb]``: with an image codec (``codec``
    ``jpeg``, the default, or ``jpegxl``) variable-length bytes ``(R, K)``, one encoded image
    per frame, no further compression, fill empty; with ``raw``/``zstd`` uint8
    ``(R, K, H, W, 3)``, fill 0, uncompressed or zstd level 1 (``codecs.py``);
  - ``times`` float32 ``(R, K)``, fill NaN (pending), dimensions ``row, frame``: the second
    of each frame in its video;
  - ``status`` uint8 ``(R,)``, fill 0, uncompressed: ``PENDING`` 0, ``OK`` 1, ``FAILED`` 2;
  - ``error`` uint8 ``(R, ERROR_BYTES)`` = ``(R, 256)``, fill 0, dimensions ``row, byte``:
    the utf-8 failure reason, zero padded.

  ``times``, ``error`` and the index arrays use Zarr's default codec (zstd level 0). A row
  counts only once its ``status`` (written after its frames and times) says ok; a failure's
  reason is written before its ``failed``.
* the sample index, one entry per sample in corpus order, chunks of up to ``INDEX_CHUNK``
  entries: ``sample_id`` (variable-length utf-8 string), ``sample_row_start`` int64 and
  ``sample_num_rows`` int32, all ``(S,)``. Samples asking for the same spans of the same
  video point at the same rows (each video's frames stored once, not once per question).
  Arrays rather than group attributes, because the ids of millions of samples would make the
  group's ``zarr.json`` as big as the corpus and be re-read with every attribute access;
* group attributes, in this order: ``layout_version``; the cache config that shapes the rows
  (``LAYOUT_ATTRS``: ``frames_per_segment``, ``height``, ``width``, ``segment_mode``,
  ``num_chunks`` (null unless ``segment_mode`` is ``chunks``), ``splits`` (sorted; empty =
  all), ``codec``, ``quality`` (null for ``raw``/``zstd``)); ``samples`` (S), ``rows`` (R),
  ``plan_digest`` (a digest of the corpus segments the rows stand for); ``frames_codec``
  (``codecs.codec_tag``: ``jpeg-q94-444``, ``jpegxl-q94-e3``, ``zstd-1`` or ``none``);
  ``ready``; and, when known, ``owner`` (the artifact the store was made for: ``workdir_id``,
  ``workdir``, ``stage``, ``key``; ``--force`` deletes no store of another owner). All of them
  are written in one write by the writer that created the arrays, after them: ``ready`` tells
  other ranks and resumes that the arrays are complete.

Stores of layout version 1 (before frame codecs: raw or zstd pixels, ``compression`` instead of
``codec``/``quality``) are still read.

No sharding (concurrent writers to one shard lose data) and no consolidated metadata (it goes
stale while rows are filled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from . import codecs

LAYOUT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: raw/zstd pixels only, ``compression`` for ``codec``
PENDING, OK, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", OK: "ok", FAILED: "failed"}
ERROR_BYTES = 256
INDEX_CHUNK = 1 << 16  # sample index arrays are written once, by rank 0: big chunks are fine
STORE_NAME = "frames.zarr"  # the store inside a cache artifact (unless ``store_url`` is set)
ROOT_METADATA = "zarr.json"
ARRAY_NAMES = ("frames", "times", "status", "error", "sample_row_start", "sample_num_rows", "sample_id")  # creation order
# The config fields that shape the rows (``CacheConfig.layout()``), stored as attributes.
LAYOUT_ATTRS = ("frames_per_segment", "height", "width", "segment_mode", "num_chunks", "splits", "codec", "quality")
OWNER_FIELDS = ("workdir_id", "workdir", "stage", "key")
# Attributes only a frame store's layout writes (a creation killed while writing them leaves some).
_OWN_ATTRS = {"layout_version", "plan_digest", "frames_codec", "ready", "owner"}
# Zarr writes zarr.json through ``zarr.<uuid hex>.partial``: a kill can leave one behind.
_PARTIAL_METADATA = re.compile(r"zarr\.[0-9a-f]{32}\.partial")


class StoreMismatchError(DataError):
    """An existing store was made for another config or corpus."""


@dataclass(frozen=True)
class StoreSpec:
    """What a store must hold: the config that shapes its rows and the plan of its rows."""

    layout: dict  # LAYOUT_ATTRS -> value (``CacheConfig.layout()``), stored in this order
    sample_ids: Sequence[str]
    row_start: np.ndarray  # (S,) int64: first row of each sample
    num_rows: np.ndarray  # (S,) int32: rows (segments) of each sample
    rows: int  # R
    plan_digest: str

    def __post_init__(self) -> None:
        if tuple(self.layout) != LAYOUT_ATTRS:
            raise ValueError(f"a store layout has the fields {LAYOUT_ATTRS}, got {tuple(self.layout)}")


def expected_attrs(spec: StoreSpec) -> dict:
    """The attributes a store of ``spec`` has (besides ``frames_codec``, ``ready``, ``owner``)."""
    return {
        "layout_version": LAYOUT_VERSION,
        **spec.layout,
        "samples": len(spec.sample_ids),
        "rows": spec.rows,
        "plan_digest": spec.plan_digest,
    }


def expected_arrays(spec: StoreSpec) -> dict[str, tuple[tuple, tuple, str]]:
    """name -> (shape, chunks, dtype) of every array of a store of ``spec``, in creation order."""
    k, h, w = spec.layout["frames_per_segment"], spec.layout["height"], spec.layout["width"]
    rows, samples = spec.rows, len(spec.sample_ids)
    index_chunk = (max(1, min(samples, INDEX_CHUNK)),)
    if codecs.is_image_codec(spec.layout["codec"]):
        frames = ((rows, k), (1, k), "bytes")
    else:
        frames = ((rows, k, h, w, 3), (1, k, h, w, 3), "uint8")
    return {
        "frames": frames,
        "times": ((rows, k), (1, k), "float32"),
        "status": ((rows,), (1,), "uint8"),
        "error": ((rows, ERROR_BYTES), (1, ERROR_BYTES), "uint8"),
        "sample_row_start": ((samples,), index_chunk, "int64"),
        "sample_num_rows": ((samples,), index_chunk, "int32"),
        "sample_id": ((samples,), index_chunk, "str"),
    }


def open_group(url: str | Path, mode: str, what: str = "frame store", make: str = "lfvila cache"):
    """Open the Zarr group at ``url``; ``file://`` URLs get ``auto_mkdir`` (docs/engineering.md §4).
    Errors are one line naming ``what`` the group should be and the command that ``make``s it."""
    import zarr

    url = str(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("file://"):
        kwargs["storage_options"] = {"auto_mkdir": True}
    try:
        return zarr.open_group(url, mode=mode, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{url}: no {what} here (run `{make}` first)") from None
    except (ValueError, TypeError) as exc:  # e.g. an array, not a group, at that path
        raise DataError(f"{url}: cannot open as a {what} ({exc})") from None
    except OSError as exc:  # e.g. a file where a directory of the path should be
        raise DataError(f"{url}: cannot open as a {what} ({exc.strerror or exc})") from None


# --- creating, resuming and checking a store (the cache's writers) ----------------------------


def _zarr_dtype(dtype: str):
    """The Zarr data type of an ``expected_arrays`` dtype name."""
    if dtype == "str":
        return str
    if dtype == "bytes":
        from zarr.dtype import VariableLengthBytes

        return VariableLengthBytes()
    return dtype


@contextlib.contextmanager
def _quiet_vlen_bytes():
    """Zarr warns that variable-length bytes have no Zarr v3 specification yet: the store's
    format page (docs/data-formats.md §13) spells their chunk layout out for other readers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*VariableLengthBytes.*")
        yield


def create_layout(group, spec: StoreSpec, owner: dict | None = None) -> None:
    """Pre-size every array, write the sample index, then every attribute with ``ready`` in
    one write (only rank 0 does this: resizing from several writers races)."""
    import zarr.codecs

    codec = spec.layout["codec"]
    image = codecs.is_image_codec(codec)
    # Raw pixels compress poorly losslessly (~1.3x with zstd on real footage) while zstd costs
    # ~4 ms of CPU per 8-frame row; encoded images are not compressed again.
    frame_compressors = zarr.codecs.ZstdCodec(level=codecs.ZSTD_LEVEL) if codec == "zstd" else None
    with _quiet_vlen_bytes():
        for name, (shape, chunks, dtype) in expected_arrays(spec).items():
            kwargs = {}
            if name == "frames":
                dims = ("row", "frame") if image else ("row", "frame", "y", "x", "rgb")
                kwargs = {"compressors": frame_compressors, "dimension_names": dims}
                if not image:
                    kwargs["fill_value"] = 0
            elif name == "times":
                kwargs = {"fill_value": float("nan"), "dimension_names": ("row", "frame")}
            elif name == "status":
                kwargs = {"compressors": None, "fill_value": PENDING, "dimension_names": ("row",)}
            elif name == "error":
                kwargs = {"fill_value": 0, "dimension_names": ("row", "byte")}
            group.create_array(name, shape=shape, chunks=chunks, dtype=_zarr_dtype(dtype), overwrite=True, **kwargs)
    if spec.sample_ids:
        group["sample_id"][:] = np.asarray(spec.sample_ids, dtype=object)
        group["sample_row_start"][:] = spec.row_start
        group["sample_num_rows"][:] = spec.num_rows
    # All attributes in one write of zarr.json (``attrs.update`` rewrites it once per key), with
    # ``ready``: other ranks (and resumes) trust the arrays only once it is set.
    attrs = {**expected_attrs(spec), "frames_codec": codecs.codec_tag(codec, spec.layout["quality"]), "ready": True}
    if owner:
        attrs["owner"] = owner
    group.attrs.put(attrs)


def check_layout(group, spec: StoreSpec, url: str, owner: dict | None = None) -> None:
    """An existing store must be the one ``spec`` describes: else name the first difference.

    ``--force`` is suggested only for a store of this run's own artifact: it deletes the store,
    and a store of another artifact or work directory is not this run's to delete."""
    attrs = group.attrs.asdict()
    recorded = recorded_owner(attrs)
    if owner is not None and recorded is not None and not same_owner(recorded, owner):
        hint = f"it belongs to {describe_owner(recorded)}; point store_url at another location"
    else:
        hint = "point store_url at another location, delete the store, or rerun with --force (in one process)"
    for name, want in expected_attrs(spec).items():
        have = attrs.get(name)
        if have != want:
            what = "the corpus segments differ" if name == "plan_digest" else f"{have!r} in the store, {want!r} in this run"
            raise StoreMismatchError(f"{url}: existing frame store does not match: {name} is {what}; {hint}")
    members = dict(group.arrays())
    for name, (shape, chunks, dtype) in expected_arrays(spec).items():
        if name not in members:
            raise StoreMismatchError(f"{url}: existing frame store has no array '{name}'; {hint}")
        arr = members[name]
        if tuple(arr.shape) != shape or (dtype not in ("str", "bytes") and str(arr.dtype) != dtype) or tuple(arr.chunks) != chunks:
            raise StoreMismatchError(
                f"{url}: existing frame store does not match: array '{name}' is {arr.dtype} {tuple(arr.shape)} "
                f"chunked {tuple(arr.chunks)}, this run needs {dtype} {shape} chunked {chunks}; {hint}"
            )


def foreign_content(url: str) -> str | None:
    """What at ``url`` is no part of a frame store (or of one being created), if anything."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        if fs.isfile(path):
            return "is a file"
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ImportError):
        return None  # open_group reports what is wrong with the location
    ours = {ROOT_METADATA, *ARRAY_NAMES}
    names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}
    other = sorted(n for n in names - ours if not _PARTIAL_METADATA.fullmatch(n))
    return f"holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}" if other else None


def _is_own_layout(attrs: dict) -> bool:
    """Attributes only a frame store's layout writes (a run killed while writing them leaves some)."""
    return bool(set(attrs) & _OWN_ATTRS)


def open_or_create(url: str, spec: StoreSpec, owner: dict | None = None) -> tuple[Any, bool]:
    """The store at ``url`` opened for writing rows: ``(group, True)`` for a complete store
    (checked against ``spec``: resumed), ``(group, False)`` for one this call created, in an
    empty location or over a half-made layout of its own (no row of it was ever written)."""
    # Creating writes zarr.json and replaces the arrays (overwrite=True): never do that in a
    # location that holds anything else, e.g. a store_url pointing at a data directory. Checked
    # before opening, because opening for writing already puts a zarr.json there.
    foreign = foreign_content(url)
    if foreign:
        try:
            existing = open_group(url, mode="r")
        except DataError:
            existing = None
        if existing is None or not existing.attrs.get("ready"):
            raise StoreMismatchError(
                f"{url}: not a frame store and not empty ({foreign}); point store_url at a new or empty location"
            )
    group = open_group(url, mode="a")
    if group.attrs.get("ready"):
        check_layout(group, spec, url, owner)
        return group, True
    attrs = group.attrs.asdict()
    if attrs and not _is_own_layout(attrs):  # another tool's Zarr group
        raise StoreMismatchError(f"{url}: a Zarr group that is not a frame store; point store_url at a new or empty location")
    # Without ``ready`` no row was ever written (writers start after it), whatever a killed
    # creation left: (re)create everything.
    create_layout(group, spec, owner)
    return group, False


def open_ready(url: str, spec: StoreSpec, owner: dict | None = None):
    """The complete store at ``url`` opened for writing rows (checked against ``spec``: a
    ``StoreMismatchError`` if it differs), or None while it is not there or not complete."""
    try:
        group = open_group(url, mode="r+")
    except DataError:
        return None  # not there yet
    if not group.attrs.get("ready"):
        return None
    check_layout(group, spec, url, owner)
    return group


@dataclass
class RowArrays:
    """The per-row arrays of an open store, as the cache's writers use them."""

    frames: object
    times: object
    status: object
    error: object


def row_arrays(group, write_empty_chunks: bool = False) -> RowArrays:
    """The row arrays of ``group``. ``write_empty_chunks`` skips Zarr's compare-with-fill-value
    before every chunk write; it cost 6 of the 9 ms of writing one 8x192x320 row (a black frame
    is then stored, not elided)."""
    arrays = {name: group[name] for name in ("frames", "times", "status", "error")}
    if write_empty_chunks:
        arrays = {name: a.with_config({"write_empty_chunks": True}) for name, a in arrays.items()}
    return RowArrays(**arrays)


def reset_rows(arrays: RowArrays, rows: np.ndarray) -> None:
    """Turn ``rows`` back to pending with their reasons cleared.

    Status first, then the reason: a run killed in between leaves a pending row with a stale
    reason, which nothing reads (a new failure overwrites all of it), never a failed row
    without one.
    """
    rows = np.asarray(rows, dtype=np.int64)
    arrays.status.oindex[rows] = np.full(rows.size, PENDING, dtype=np.uint8)
    arrays.error.oindex[rows, :] = np.zeros((rows.size, ERROR_BYTES), dtype=np.uint8)


def encode_reason(reason: str) -> np.ndarray:
    """A failure reason as ``ERROR_BYTES`` zero-padded utf-8 bytes (cut on a character boundary)."""
    data = reason.encode("utf-8")[:ERROR_BYTES]
    data = data.decode("utf-8", errors="ignore").encode("utf-8")
    out = np.zeros(ERROR_BYTES, dtype=np.uint8)
    out[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


def decode_reason(row: np.ndarray) -> str:
    return bytes(np.asarray(row, dtype=np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


# --- the store as the stage machinery sees it: where, whether, whose --------------------------


def store_location(directory: str | Path, store_url: str = "") -> str:
    """Where a cache artifact's store lives: ``store_url`` when configured, else ``frames.zarr``
    in the artifact's ``directory``."""
    return store_url if store_url else str(Path(directory) / STORE_NAME)


def store_present(url: str) -> str | None:
    """None while the store at ``url`` is there, else the problem in one line (missing or
    unreachable). Looks for the group's ``zarr.json`` only: cheap on any filesystem."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        present = fs.exists(f"{path.rstrip('/')}/{ROOT_METADATA}")
    except (OSError, ValueError, ImportError) as exc:
        return f"cannot reach its frame store {url}: {exc}"
    return None if present else f"its frame store {url} is missing"


def location_exists(url: str | Path) -> bool:
    """Whether anything (a store or not) is at ``url``."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return fs.exists(path)


def read_attrs(url: str | Path) -> dict | None:
    """The root attributes of the Zarr group at ``url`` (read from its ``zarr.json``, whatever
    state the store is in), or None when there is none or it cannot be read. Whether they are a
    frame store's: ``is_frame_store``."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(str(url))
        with fs.open(f"{path.rstrip('/')}/{ROOT_METADATA}", "rb") as fh:
            attrs = json.load(fh).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_frame_store(attrs: dict | None) -> bool:
    """Whether root attributes are a frame store's (complete or not): it records a layout version."""
    return attrs is not None and "layout_version" in attrs


def same_rows(attrs: dict | None, spec: StoreSpec) -> bool:
    """Whether a store with these attributes is complete and holds exactly the rows of
    ``spec`` (same corpus segments and layout): its files can seed a store of ``spec``."""
    return bool(
        attrs
        and attrs.get("ready")
        and attrs.get("plan_digest") == spec.plan_digest
        and attrs.get("rows") == spec.rows
        and all(attrs.get(k) == v for k, v in spec.layout.items())
    )


def delete_store(url: str | Path) -> None:
    """Delete everything at ``url`` (check ``read_attrs``/``recorded_owner`` first)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    fs.rm(path, recursive=True)


def owner_record(workdir_id: str, workdir: str, stage: str, key: str) -> dict:
    """The ``owner`` attribute of a store made for an artifact (``cache_frames(owner=...)``)."""
    return {"workdir_id": workdir_id, "workdir": workdir, "stage": stage, "key": key}


def recorded_owner(attrs: dict | None) -> dict | None:
    """The artifact a store with these attributes belongs to (``owner_record``), if recorded."""
    owner = (attrs or {}).get("owner")
    return owner if isinstance(owner, dict) else None


def same_owner(a: dict, b: dict) -> bool:
    return a.get("workdir_id") == b.get("workdir_id") and a.get("stage") == b.get("stage") and a.get("key") == b.get("key")


def describe_owner(owner: dict) -> str:
    return f"{owner.get('stage', '?')} artifact {str(owner.get('key', '?'))[:16]} of the work directory {owner.get('workdir', '?')}"


def seed_store(source: str | Path, dest: str | Path, reset: Sequence[int], owner: dict) -> None:
    """Start a new local store at ``dest`` from the complete store at ``source``: its files are
    hard-linked (copied where linking fails; Zarr replaces a chunk file when it writes one, so
    ``source`` stays as it was), the rows ``reset`` go back to pending with their reasons
    cleared, and ``owner`` is recorded. Built aside and renamed into place, so ``dest``
    appears complete or not at all."""
    building = Path(dest).with_name(f".seeding-{os.getpid()}.zarr")
    shutil.rmtree(building, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or no hard links: a copy
            shutil.copy2(src, dst)

    shutil.copytree(source, building, copy_function=link)
    group = open_group(str(building), mode="r+")
    if len(reset):
        reset_rows(row_arrays(group), np.asarray(reset, dtype=np.int64))
    group.attrs.put({**group.attrs.asdict(), "owner": owner})
    os.replace(building, dest)  # complete before any rank sees it


# --- reading ------------------------------------------------------------------------------------


class UnknownSampleError(DataError, KeyError):
    """The sample id is not in the store (a ``KeyError`` too, for ``in``-style callers)."""

    __str__ = DataError.__str__


class FrameStore:
    """Read-only view of a frame store: ``store.sample(id) -> (frames, times)``.

    >>> store = FrameStore("lfvila-work/store/cache/<key>/frames.zarr")   # doctest: +SKIP
    >>> frames, times = store.sample("v_0001")                              # doctest: +SKIP
    >>> frames.shape, times.shape                  # (M, K, H, W, 3) uint8, (M, K) float32
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        group = open_group(self.url, mode="r")
        attrs = group.attrs.asdict()
        if attrs.get("layout_version") not in READABLE_VERSIONS:
            raise DataError(
                f"{self.url}: not a frame store this lfvila reads (layout_version={attrs.get('layout_version')!r}, "
                f"readable: {', '.join(map(str, READABLE_VERSIONS))}); rebuild it with `lfvila cache --force`"
            )
        if not attrs.get("ready"):
            raise DataError(f"{self.url}: frame store was never completely created; run `lfvila cache` again")
        self.attrs = attrs
        self.frames_per_segment = int(attrs["frames_per_segment"])
        self.height, self.width = int(attrs["height"]), int(attrs["width"])
        self.segment_mode = attrs["segment_mode"]
        # Version 1 stores hold raw or zstd pixels and name the choice ``compression``.
        self.codec = attrs.get("codec") or ("zstd" if attrs.get("compression") == "zstd" else "raw")
        with _quiet_vlen_bytes():
            self._frames, self._times = group["frames"], group["times"]
        self._status, self._error = group["status"], group["error"]
        ids = group["sample_id"][:]
        self._row_start = np.asarray(group["sample_row_start"][:], dtype=np.int64)
        self._num_rows = np.asarray(group["sample_num_rows"][:], dtype=np.int64)
        self._row_owner: np.ndarray | None = None  # row -> first sample using it, built on demand
        self._ids = [str(i) for i in ids]
        self._index = {sample_id: i for i, sample_id in enumerate(self._ids)}
        self.num_rows = int(self._status.shape[0])

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index

    @property
    def sample_ids(self) -> list[str]:
        return list(self._ids)

    def rows(self, sample_id: str) -> range:
        """The store rows of ``sample_id``, one per segment, in segment order."""
        try:
            i = self._index[sample_id]
        except KeyError:
            raise UnknownSampleError(f"{self.url}: sample {sample_id!r} is not in the frame store") from None
        start = int(self._row_start[i])
        return range(start, start + int(self._num_rows[i]))

    def num_segments(self, sample_id: str) -> int:
        return len(self.rows(sample_id))

    def sample(self, sample_id: str, segments: slice | None = None, check_status: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(M, K, H, W, 3)`` uint8 and times ``(M, K)`` float32 of one sample.

        ``segments`` picks consecutive segments (e.g. ``slice(s, s + 4)`` for the 4-clip window
        of docs/method.md §1) so only those rows are read. Any selected row that is not ok is an error
        naming the sample, the segment and the reason: training never silently swaps a failed
        video for another. ``check_status=False`` skips re-reading the rows' status (a reader
        that already checked it, as the training loader does at construction, saves a chunk
        read per row).
        """
        rows = self.rows(sample_id)
        if segments is not None:
            rows = rows[segments]
            if rows.step != 1:
                raise ValueError("segments must be a slice of consecutive segments")
        if len(rows) == 0:
            empty = (0, self.frames_per_segment)
            return np.zeros(empty + (self.height, self.width, 3), np.uint8), np.zeros(empty, np.float32)
        status, frames, times = self._read_rows(slice(rows.start, rows.stop), check_status)
        if check_status and (status != OK).any():
            bad = int(np.flatnonzero(status != OK)[0])
            row = rows.start + bad
            segment = row - int(self._row_start[self._index[sample_id]])
            if status[bad] == FAILED:
                why = f"failed: {decode_reason(self._error[row])}"
            else:
                why = "still pending (the cache stage has not finished)"
            raise DataError(f"{self.url}: sample {sample_id!r} segment {segment} (row {row}) is {why}")
        try:
            frames = codecs.decode(frames, self.codec, (len(rows), self.frames_per_segment, self.height, self.width, 3))
        except DataError as exc:
            raise DataError(f"{self.url}: sample {sample_id!r} rows {rows.start}-{rows.stop - 1}: {exc}") from None
        return frames, times

    def _read_rows(self, rows: slice, with_status: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Status (unless ``with_status`` is false: None), frames and times of ``rows`` in one
        round trip through Zarr's event loop (separate synchronous reads cost ~2 ms more per
        training sample)."""
        from zarr.core.sync import sync

        arrays = ([self._status] if with_status else []) + [self._frames, self._times]

        async def read():
            return await asyncio.gather(*(a.async_array.getitem(rows) for a in arrays))

        out = [np.asarray(x) for x in sync(read())]
        return (out[0] if with_status else None), out[-2], out[-1]

    def status(self) -> np.ndarray:
        """Status of every row (0 pending, 1 ok, 2 failed); reads one tiny chunk per row."""
        return np.asarray(self._status[:])

    def status_counts(self) -> dict[str, int]:
        counts = np.bincount(self.status(), minlength=3)
        return {name: int(counts[code]) for code, name in STATUS_NAMES.items()}

    def row_sample(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sample index, segment index) of each store row, for the first sample that uses it
        (samples with the same spans of the same video share rows)."""
        if self._row_owner is None:
            # Samples share whole row ranges (same start, same count) and the ranges tile the rows:
            # each row's owner is the first sample with its range's start.
            used = np.flatnonzero(self._num_rows > 0)
            _, first = np.unique(self._row_start[used], return_index=True)
            owners = used[first]
            self._row_owner = np.repeat(owners, self._num_rows[owners])
            if len(self._row_owner) != self.num_rows:
                raise DataError(f"{self.url}: the sample index does not tile the store's {self.num_rows} rows")
        rows = np.asarray(rows, dtype=np.int64)
        sample = self._row_owner[rows]
        return sample, rows - self._row_start[sample]

    def failures(self) -> list[dict]:
        """The failures table: ``{row, sample, segment, reason}`` for every failed row."""
        failed = np.flatnonzero(self.status() == FAILED)
        if failed.size == 0:
            return []
        reasons = np.asarray(self._error.oindex[failed, :])
        samples, segments = self.row_sample(failed)
        return [
            {"row": int(r), "sample": self._ids[s], "segment": int(g), "reason": decode_reason(reason)}
            for r, s, g, reason in zip(failed, samples, segments, reasons)
        ]


# --- frames stored once per work directory ------------------------------------------------------

POOL_FORMAT = 1  # bump when a chunk's bytes for the same row would change (codec settings, times codec)
POOL_DIR = ".frames"  # in the cache stage's directory: ignored as an artifact, kept by deletions


def video_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a video file's bytes: the identity of its frames, whatever the path or corpus."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            h.update(data)
    return h.hexdigest()


def _link_over(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst``, replacing what is there, in one rename (an ``OSError`` when
    ``src`` is gone or the filesystem has no hard links between the two)."""
    import threading

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.link")
    os.link(src, tmp)
    os.replace(tmp, dst)


def _is_local(array) -> bool:
    from zarr.storage import LocalStore

    return isinstance(array.store_path.store, LocalStore)


def _row_chunk_file(array, row: int) -> Path:
    """The file holding ``row`` of a row array (one row per chunk) of a local directory store."""
    coords = (row,) + (0,) * (len(array.shape) - 1)
    return Path(array.store_path.store.root) / array.store_path.path / array.metadata.encode_chunk_key(coords)


class FramePool:
    """Rows of frames shared by every frame store of a work directory (docs/data-formats.md §13).

    The same span of the same video (by the sha256 of its bytes) at the same frame count, size
    and codec makes the same row files, whichever corpus asks for it. A row a store wrote is
    *put* in the pool as hard links to its ``frames`` and ``times`` chunk files, named by the
    row's content key; a store that needs that row *takes* it by hard-linking them into its own
    chunk paths before its ``status`` says ok. The bytes are on disk once; deleting a store (or
    the pool) removes only its links, so no other store loses a row. Zarr replaces a chunk file
    when it writes one (it never rewrites a shared inode in place). Entries only the pool still
    links (every store that used them deleted) are removed by ``prune``.

    Only stores in a local directory on the pool's filesystem take part: ``FramePool.for_store``
    returns None for any other store.
    """

    def __init__(self, root: Path, arrays: RowArrays, layout: dict) -> None:
        tag = codecs.codec_tag(layout["codec"], layout["quality"])
        k, h, w = layout["frames_per_segment"], layout["height"], layout["width"]
        self.dir = Path(root) / f"v{POOL_FORMAT}-{k}x{h}x{w}-{tag}"
        self.arrays = arrays

    @classmethod
    def for_store(cls, root: str | Path, arrays: RowArrays, layout: dict) -> "FramePool | None":
        return cls(Path(root), arrays, layout) if _is_local(arrays.frames) else None

    @staticmethod
    def row_key(digest: str, span: tuple) -> str:
        """The content key of a row: the video's digest and the span (the layout is the pool's directory)."""
        import hashlib

        return hashlib.sha256(json.dumps([digest, list(span)]).encode()).hexdigest()

    def _files(self, row: int) -> tuple[Path, Path]:
        return _row_chunk_file(self.arrays.frames, row), _row_chunk_file(self.arrays.times, row)

    def _entry(self, key: str) -> tuple[Path, Path]:
        base = self.dir / key[:2] / key
        return base.with_suffix(".frames"), base.with_suffix(".times")

    def take(self, key: str, row: int) -> bool:
        """Link the pool's files of ``key`` into ``row`` of the store; False when the pool has no
        complete entry (or linking fails): decode the row instead. The caller marks the row ok."""
        pooled_frames, pooled_times = self._entry(key)
        frames, times = self._files(row)
        try:  # replacing what a killed run may have left for this pending row
            _link_over(pooled_times, times)
            _link_over(pooled_frames, frames)
        except OSError:
            return False
        return True

    def put(self, key: str, row: int) -> None:
        """Add the store's files of ``row`` (written, status ok) to the pool under ``key``."""
        pooled_frames, pooled_times = self._entry(key)
        frames, times = self._files(row)
        try:  # frames last: an entry is complete once they are in
            _link_over(times, pooled_times)
            _link_over(frames, pooled_frames)
        except OSError:
            pass  # another filesystem, or no hard links: the row stays in its own store only

    def prune(self) -> tuple[int, int]:
        """Remove the pool's files no store links any more; returns (rows, bytes) removed.
        Frames go before times: an entry without its frames is never taken."""
        rows = freed = 0
        if not self.dir.is_dir():
            return 0, 0
        for suffix in (".frames", ".times"):
            for path in self.dir.glob(f"*/*{suffix}"):
                try:
                    st = path.stat()
                    if st.st_nlink == 1:
                        path.unlink()
                        freed += st.st_size
                        rows += suffix == ".frames"
                except FileNotFoundError:
                    continue
        return rows, freed
