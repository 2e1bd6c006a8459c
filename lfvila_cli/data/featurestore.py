"""The feature store: the frozen stage-1 video encoder's output tokens, cached once for stage 2.

Stage 2 freezes the video encoder (docs/method.md §4), so its output for a given input never
changes; the ``features`` stage (``train/features.py``) writes it here once per cached *view*,
and stage 2 reads it instead of running the encoder (docs/method.md §8 for how views stand in
for the per-epoch augmentation). This module is the one place that knows the layout
(docs/data-formats.md §14 is the reference for other tools); it reads and writes arrays only,
and builds no model.

Layout (``layout_version`` 1), a Zarr v3 group (``features.zarr`` in the artifact). ``E`` entries
(the usable windows' samples of a split, in the pre-training dataset's order), ``V`` views,
``R = E · V`` rows, row ``e · V + v`` = view ``v`` of entry ``e``; the token map is
``(T, h, w, C)``, the encoder's final map (``VideoEncoderOutput.tokens``):

* one sub-group per split, ``train`` (``V`` = ``views``) and ``val`` (one view: evaluation
  draws no augmentation), each with
  - ``tokens`` uint16 ``(R, T, h, w, C)``, one row per chunk, uncompressed, fill 0: the bit
    patterns of bfloat16 values (a bf16 value is the top half of a float32);
  - ``window_start`` int32 ``(R,)``, one row per chunk: the first clip of the row's window
    (the text is that window's sentences);
  - ``status`` uint8 ``(R,)``, one row per chunk, uncompressed: ``PENDING`` 0, ``OK`` 1,
    written after the row's tokens and window start;
  - ``sample_id`` str ``(E,)``;
* group attributes, written in one write after every array exists: ``layout_version``,
  ``dtype`` (``bfloat16``), ``token_shape`` ``[T, h, w, C]``, ``views``, ``loader`` (the loader
  fields that shape a view, ``loader_config.view_config``), ``sources`` (``frame_store``: the
  frame store's ``plan_digest``; ``model``: the SHA-256 of the stage-1 ``model.safetensors``),
  ``splits`` (entries per split) and ``ready``.

Ranks fill disjoint rows (row ``r`` belongs to rank ``r mod world``): one chunk per row, no
sharding and no consolidated metadata, as the frame store (docs/engineering.md §4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import DataError
from .framestore import OK, PENDING, StoreMismatchError, open_group

LAYOUT_VERSION = 1
STORE_NAME = "features.zarr"
SPLITS = ("train", "val")
_WHAT, _MAKE = "feature store", "lfvila features"


@dataclass(frozen=True)
class FeatureLayout:
    """What a feature store must hold: the token map, the views, what the views were drawn with
    and from, and the entries of each split."""

    token_shape: tuple[int, int, int, int]  # (T, h, w, C)
    views: int
    loader: dict  # loader_config.view_config
    sources: dict  # {"frame_store": plan digest, "model": SHA-256 of the weights}
    sample_ids: dict[str, list[str]] = field(default_factory=dict)  # split -> entry sample ids

    def views_of(self, split: str) -> int:
        return self.views if split == "train" else 1

    def rows(self, split: str) -> int:
        return len(self.sample_ids.get(split, [])) * self.views_of(split)

    def attrs(self) -> dict:
        return {
            "layout_version": LAYOUT_VERSION,
            "dtype": "bfloat16",
            "token_shape": list(self.token_shape),
            "views": self.views,
            "loader": self.loader,
            "sources": self.sources,
            "splits": {split: len(ids) for split, ids in self.sample_ids.items()},
        }

    @property
    def bytes_per_view(self) -> int:
        """The tokens of one row: T·h·w·C bf16 values."""
        return int(np.prod(self.token_shape)) * 2


def _create(group, layout: FeatureLayout) -> None:
    """Every array, then every attribute with ``ready`` in one write (rank 0 only)."""
    for split, ids in layout.sample_ids.items():
        sub = group.require_group(split)
        rows = layout.rows(split)
        sub.create_array(
            "tokens", shape=(rows, *layout.token_shape), chunks=(1, *layout.token_shape), dtype="uint16", compressors=None,
            fill_value=0, overwrite=True, dimension_names=("row", "frame", "y", "x", "channel"),
        )
        sub.create_array("window_start", shape=(rows,), chunks=(1,), dtype="int32", fill_value=-1, overwrite=True, dimension_names=("row",))
        sub.create_array("status", shape=(rows,), chunks=(1,), dtype="uint8", compressors=None, fill_value=PENDING, overwrite=True, dimension_names=("row",))
        sub.create_array("sample_id", shape=(len(ids),), chunks=(max(1, len(ids)),), dtype=str, overwrite=True)
        if ids:
            sub["sample_id"][:] = np.asarray(ids, dtype=object)
    group.attrs.put({**layout.attrs(), "ready": True})


def _check(group, layout: FeatureLayout, url: str) -> None:
    attrs = group.attrs.asdict()
    for name, want in layout.attrs().items():
        if attrs.get(name) != want:
            raise StoreMismatchError(f"{url}: existing feature store does not match: {name} is {attrs.get(name)!r} there, {want!r} in this run; rerun with --force")
    for split, ids in layout.sample_ids.items():
        if list(group[split]["sample_id"][:]) != list(ids):
            raise StoreMismatchError(f"{url}: existing feature store holds other {split} samples; rerun with --force")


def open_for_writing(url: str, layout: FeatureLayout):
    """Rank 0: the store at ``url`` created, or, when a complete one is there (a resumed run),
    checked against ``layout`` and opened to fill its pending rows."""
    group = open_group(url, mode="a", what=_WHAT, make=_MAKE)
    if group.attrs.get("ready"):
        _check(group, layout, url)
    else:  # no row is written before ``ready``: whatever a killed creation left is made again
        _create(group, layout)
    return group


def wait_for_layout(url: str, layout: FeatureLayout, rank: int, timeout_s: float = 600.0, poll_s: float = 1.0):
    """Ranks > 0: the store once rank 0 has created it (checked against ``layout``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            group = open_group(url, mode="r+", what=_WHAT, make=_MAKE)
        except DataError:
            group = None
        if group is not None and group.attrs.get("ready"):
            _check(group, layout, url)
            return group
        if time.monotonic() > deadline:
            raise DataError(f"{url}: rank {rank} waited {timeout_s:.0f}s for rank 0 to create the feature store")
        time.sleep(poll_s)


def tokens_to_bits(tokens) -> np.ndarray:
    """A float tensor (any shape) rounded to bfloat16, as the uint16 bit patterns the store holds."""
    import torch

    return tokens.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)


def bits_to_tokens(bits: np.ndarray):
    """The store's uint16 bit patterns as a bfloat16 tensor of the same shape."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(torch.bfloat16)


class FeatureStore:
    """A complete feature store, read by stage 2's loaders. Opening checks that it is one and
    that every row is written: a missing, foreign, unfinished or damaged store is a one-line
    ``DataError`` naming it."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        group = open_group(self.url, mode="r", what=_WHAT, make=_MAKE)
        attrs = group.attrs.asdict()
        if attrs.get("layout_version") != LAYOUT_VERSION:
            raise DataError(f"{self.url}: not an lfvila feature store (layout_version {attrs.get('layout_version')!r}, expected {LAYOUT_VERSION})")
        if not attrs.get("ready"):
            raise DataError(f"{self.url}: the feature store was never completed (rerun `lfvila features`)")
        self.attrs = attrs
        self.views = int(attrs["views"])
        self.token_shape = tuple(int(n) for n in attrs["token_shape"])
        self.loader: dict = attrs.get("loader") or {}
        self.sources: dict = attrs.get("sources") or {}
        self._splits: dict[str, Any] = {}
        self._ids: dict[str, dict[str, int]] = {}
        try:
            for split in attrs.get("splits", {}):
                sub = group[split]
                status = np.asarray(sub["status"][:])
                if (status != OK).any():
                    raise DataError(f"{self.url}: {int((status != OK).sum())} of {status.size} {split} rows are not written (rerun `lfvila features` to finish it)")
                self._splits[split] = sub
                self._ids[split] = {str(sid): i for i, sid in enumerate(sub["sample_id"][:])}
        except DataError:
            raise
        except (KeyError, ValueError, OSError, RuntimeError) as exc:
            raise DataError(f"{self.url}: damaged feature store ({type(exc).__name__}: {exc})") from None

    def views_of(self, split: str) -> int:
        return self.views if split == "train" else 1

    def entry(self, split: str, sample_id: str) -> Optional[int]:
        """The entry of ``sample_id`` in ``split``, or None when the store has none."""
        return self._ids.get(split, {}).get(sample_id)

    def read(self, split: str, entry: int, view: int):
        """``(tokens (T, h, w, C) bfloat16 tensor, window start)`` of one row."""
        row = entry * self.views_of(split) + view
        sub = self._splits[split]
        try:
            bits = np.asarray(sub["tokens"][row])
            start = int(sub["window_start"][row])
        except (ValueError, OSError, RuntimeError) as exc:
            raise DataError(f"{self.url}: {split} row {row} is damaged ({type(exc).__name__}: {exc})") from None
        if bits.shape != self.token_shape:
            raise DataError(f"{self.url}: {split} row {row} holds {bits.shape}, not the store's {self.token_shape}")
        return bits_to_tokens(bits), start
