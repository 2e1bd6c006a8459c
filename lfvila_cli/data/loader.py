"""The pre-training data pipeline: corpus + frame store → batches of 4-clip windows (docs/method.md §1).

Each training example is a *window* of ``clips_per_sample`` (4) consecutive clips of one
long-form sample: their ``K`` frames each (``T = clips · K`` frames, ImageNet-normalised) and
their sentences, each tokenised alone as ``[CLS] sentence [SEP]`` padded/truncated to
``max_tokens``. Train augmentation: ONE RandomResizedCrop (area 0.8–1.0, aspect 3/4–4/3)
and ONE horizontal flip for all ``T`` frames of the example; eval: none (the store's frames
are already resized and centre-cropped to ``H × W``).

Reproducibility and robustness:

* ``dataset[index]`` is a pure function of ``(seed, epoch, index)``: every random choice comes
  from a generator keyed by those three numbers, so an example is the same in the main
  process, in any DataLoader worker, on any rank, and after a resume.
* **Every** valid window start is reachable: a sample of ``M`` segments has ``M − C + 1``
  starts (the authors' release drew from ``M − C`` and never used the last clip's window).
* Failed or pending store rows are never swapped for another sample (open_clip style: count,
  log, never hide). A window that touches such a row is excluded; a sample left with no
  window, or with fewer than ``C`` segments, is skipped at construction and counted in
  ``dataset.skipped`` by reason.
* The frame store (Zarr) is opened lazily, once per process: handles are not fork-safe, so a
  DataLoader worker opens its own on first use.
* ``source="decode"`` reads the same rows straight from the videos with ``VideoDecoder``
  (the path the cache stage uses), the slow reference of the store (docs/engineering.md §3).

``make_loader`` shards with a deterministic distributed batch sampler (order a pure function of
``(seed, epoch)``, disjoint per rank) and resumes mid-epoch by skipping batches unloaded.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from .loader_config import LoaderConfig
from ..errors import DataError
from .corpus import Sample, resolve_video
from .framestore import FAILED, OK, PENDING, FrameStore

if TYPE_CHECKING:
    from .featurestore import FeatureStore

log = logging.getLogger(__name__)

_CROP_TRIES = 10  # torchvision's RandomResizedCrop: then fall back to a centre crop
_SAMPLER_STREAM = 1  # keeps the shuffle generator apart from the per-example generators


def augment(video: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``box`` = (top, left, h, w) of ``(T, 3, H, W)`` uint8 frames, resize to ``size``
    (bilinear, antialiased), maybe flip: uint8 out. The resize runs on uint8 in channels-last
    layout (torch's vectorised path: 0.4 ms against 4.3 ms in float32 for 32 × 64×96 frames);
    ``augment_reference`` is the float32 path it matches to within one grey level."""
    import torch.nn.functional as F

    top, left, ch, cw = box
    video = video[:, :, top : top + ch, left : left + cw]
    if (ch, cw) != tuple(size):
        video = F.interpolate(video.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear", antialias=True, align_corners=False)
    return video.flip(-1) if flip else video


def augment_reference(video: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: tuple[int, int]) -> torch.Tensor:
    """The float32 reference of ``augment``: crop ``box`` = (top, left, h, w) of
    ``(T, 3, H, W)`` uint8 frames, resize to ``size`` (bilinear, antialiased), maybe flip; values in [0, 255]."""
    import torch.nn.functional as F

    top, left, ch, cw = box
    out = video[:, :, top : top + ch, left : left + cw].float()
    if (ch, cw) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.flip(-1) if flip else out


def crop_params(rng: np.random.Generator, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)`` (torchvision's algorithm, numpy generator)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height  # fallback: the largest centred box with an allowed aspect
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class _Entry:
    """One usable sample: where its rows are and which window starts avoid bad rows."""

    sample: int  # index into the samples list
    row_start: int
    starts: np.ndarray  # valid window starts (segment indices), ascending


def normalisation(cfg: LoaderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``x * scale - shift == (x / 255 - mean) / std`` per channel, (1, 3, 1, 1)."""
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), mean / std


class StoreBacked:
    """A dataset reading a ``FrameStore`` it opens lazily, once per process: Zarr handles are
    not fork-safe, so a DataLoader worker opens its own on first use. Call ``_attach(store)``
    in ``__init__`` and ``_detach()`` once indexing is done."""

    def _attach(self, store: FrameStore | str | Path) -> None:
        if isinstance(store, FrameStore):
            self.store_url, self._store, self._store_pid = store.url, store, os.getpid()
        else:
            self.store_url, self._store, self._store_pid = str(store), None, None

    def _detach(self) -> None:
        if self._store_pid is None:
            self._store = None  # opened here only to index: workers open their own

    @property
    def store(self) -> FrameStore:
        pid = os.getpid()
        if self._store is None or self._store_pid != pid:  # first use, or a forked worker
            self._store, self._store_pid = FrameStore(self.store_url), pid
        return self._store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"], state["_store_pid"] = None, None  # spawned workers open their own
        return state


class PretrainDataset(StoreBacked, torch.utils.data.Dataset):
    """4-clip windows of long-form samples of one split.

    ``dataset[i]`` (or ``dataset[(epoch, i)]``) → ``{"frames": (C·K, 3, H, W) float32,
    "times": (C·K,) float32 seconds, "input_ids": (C, L) int64, "attention_mask": (C, L)
    int64, "sample_id": str, "window_start": int, "index": int}`` with ``C`` =
    ``clips_per_sample`` and ``L`` = ``max_tokens``.

    ``store`` is a ``FrameStore`` or its URL (reopened lazily in each process); with
    ``source="decode"`` it still decides which rows are usable, and ``video_root`` (the
    corpus directory) resolves relative video paths. Construction reads the status of every
    store row once.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        store: FrameStore | str | Path,
        tokenizer,
        cfg: LoaderConfig,
        train: bool,
        video_root: str | Path | None = None,
    ) -> None:
        self.samples = list(samples)
        self.cfg, self.train, self.tokenizer = cfg, train, tokenizer
        self.video_root = Path(video_root) if video_root is not None else None
        self.epoch = 0
        self._attach(store)
        if cfg.source == "decode" and self.video_root is None:
            raise DataError("source 'decode' needs video_root (the corpus directory) to find the videos")
        splits = sorted({s.split for s in self.samples})
        if len(splits) > 1:
            raise DataError(f"PretrainDataset takes the samples of one split, got {splits}")

        st = self.store
        if st.segment_mode != "clips":
            raise DataError(f"{st.url}: pre-training needs a store of clips, this one has segment_mode={st.segment_mode!r}")
        if cfg.frames_per_clip and cfg.frames_per_clip != st.frames_per_segment:
            raise DataError(
                f"config key 'frames_per_clip': {cfg.frames_per_clip} but the store at {st.url} holds "
                f"{st.frames_per_segment} frames per segment (cache again, or set 0 to use the store's)"
            )
        self.frames_per_clip = st.frames_per_segment
        self.height, self.width = st.height, st.width
        self._scale, self._shift = normalisation(cfg)

        status = st.status()
        self.skipped: Counter[str] = Counter()
        self.excluded_windows = 0  # windows of kept samples lost to failed/pending rows
        entries: list[_Entry] = []
        c = cfg.clips_per_sample
        for i, sample in enumerate(self.samples):
            if sample.id not in st:
                self.skipped["not in frame store"] += 1
                continue
            rows = st.rows(sample.id)
            if len(rows) != len(sample.segments):
                raise DataError(
                    f"{st.url}: sample {sample.id!r} has {len(rows)} rows but {len(sample.segments)} segments in "
                    "the corpus: the store was cached from another corpus"
                )
            m = len(rows)
            if m < c:
                self.skipped[f"fewer than {c} segments"] += 1
                continue
            bad = status[rows.start : rows.stop] != OK
            # window s touches rows s..s+c-1: it is valid when none of them is bad
            bad_in_window = np.convolve(bad.astype(np.int64), np.ones(c, np.int64), mode="valid")  # (m - c + 1,)
            starts = np.flatnonzero(bad_in_window == 0)
            if starts.size == 0:
                kind = "failed" if (status[rows.start : rows.stop] == FAILED).any() else "pending"
                self.skipped[f"no window without {kind} rows"] += 1
                continue
            self.excluded_windows += (m - c + 1) - starts.size
            entries.append(_Entry(i, rows.start, starts))
        self._entries = entries
        if self.skipped or self.excluded_windows:
            log.warning(
                "pretrain data: %d of %d samples usable; skipped %s; %d windows excluded for failed/pending rows",
                len(entries), len(self.samples), dict(self.skipped), self.excluded_windows,
            )
        if (status == PENDING).any():
            log.warning("pretrain data: %s still has pending rows (cache not finished)", st.url)
        self._detach()

    # --- the dataset ----------------------------------------------------------------------------

    @property
    def frames_per_item(self) -> int:
        """Frames of an item's video: the training window's clips × frames per clip."""
        return self.cfg.clips_per_sample * self.frames_per_clip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._entries)

    def sample_id(self, index: int) -> str:
        return self.samples[self._entries[index].sample].id

    def valid_starts(self, index: int) -> np.ndarray:
        """Window starts of example ``index`` that avoid failed/pending rows."""
        return self._entries[index].starts.copy()

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        return self.get(int(index), int(epoch))

    def get(self, index: int, epoch: int) -> dict[str, Any]:
        """Example ``index`` of ``epoch``: a pure function of ``(cfg.seed, epoch, index)``."""
        if not 0 <= index < len(self._entries):
            raise IndexError(f"index {index} out of range for {len(self._entries)} examples")
        entry = self._entries[index]
        sample = self.samples[entry.sample]
        # Eval examples keep one window for every epoch; train draws a new one each epoch.
        rng = np.random.default_rng([self.cfg.seed, epoch if self.train else 0, index])
        start = int(entry.starts[rng.integers(0, entry.starts.size)])
        frames, times = self._read(sample, entry, start)  # (C, K, H, W, 3) uint8, (C, K)
        video = torch.from_numpy(np.ascontiguousarray(frames.reshape((-1,) + frames.shape[2:])))  # (T, H, W, 3)
        video = video.permute(0, 3, 1, 2)  # (T, 3, H, W) uint8, channels-last in memory
        if self.train:
            video = self._augment(video, rng)
        # (x / 255 − mean) / std in one pass over the float copy.
        video = video.contiguous().float().mul_(self._scale).sub_(self._shift)
        return {
            "frames": video.contiguous(),
            "times": torch.from_numpy(np.asarray(times, np.float32).reshape(-1)),
            **self._text(sample, start),
            "index": index,
        }

    def _text(self, sample: Sample, start: int) -> dict[str, Any]:
        """The sentences of the window at ``start``, each tokenised alone: ``input_ids`` and
        ``attention_mask`` (C, L), with ``sample_id`` and ``window_start``."""
        texts = [seg.text for seg in sample.segments[start : start + self.cfg.clips_per_sample]]
        tokens = self.tokenizer(
            texts, max_length=self.cfg.max_tokens, truncation=True, padding="max_length", return_tensors="pt",
            return_token_type_ids=False,
        )
        return {
            "input_ids": tokens["input_ids"].long(),  # (C, L)
            "attention_mask": tokens["attention_mask"].long(),  # (C, L)
            "sample_id": sample.id,
            "window_start": start,
        }

    def _augment(self, video: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """One crop box and one flip decision for all frames: ``(T, 3, H, W)`` uint8 → same shape."""
        box = crop_params(rng, self.height, self.width, self.cfg.crop_scale, self.cfg.crop_ratio)
        flip = bool(rng.random() < self.cfg.flip_prob)
        return augment(video, box, flip, (self.height, self.width))

    def _read(self, sample: Sample, entry: _Entry, start: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg.clips_per_sample
        if self.cfg.source == "store":
            # Statuses were read when the dataset was built; a committed store does not change.
            return self.store.sample(sample.id, slice(start, start + c), check_status=False)
        from .video import VideoDecoder, VideoError

        frames, times = [], []
        decoders: dict[str, VideoDecoder] = {}
        try:
            for i, seg in enumerate(sample.segments[start : start + c], start):
                source = resolve_video(seg.video or sample.video, self.video_root)
                if source not in decoders:
                    decoders[source] = VideoDecoder(source, self.height, self.width)
                # the cache stage's spans: a segment with its own file spans all of it, an untimed
                # one is its equal chunk of the video
                decoder = decoders[source]
                if seg.video is not None:
                    span = (None, None)
                elif not seg.timed:
                    n, duration = len(sample.segments), decoder.info.duration
                    span = (i * duration / n, (i + 1) * duration / n)
                else:
                    span = (seg.start, seg.end)
                f, t = decoder.span(*span, self.frames_per_clip)
                frames.append(f)
                times.append(t)
        except VideoError as exc:
            raise DataError(f"sample {sample.id!r}: cannot decode window at segment {start}: {exc}") from None
        finally:
            for decoder in decoders.values():
                decoder.close()
        return np.stack(frames), np.stack(times)


def collate_pretrain(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack examples: ``frames (B, T, 3, H, W)`` and ``times (B, T)`` (or, from cached
    features, ``video_tokens (B, T, h, w, C)``), ``input_ids`` and ``attention_mask (B, C, L)``,
    ``window_start (B,)``, ``index (B,)``, ``sample_ids`` list."""
    stacked = ("frames", "times", "video_tokens", "input_ids", "attention_mask")
    return {
        **{key: torch.stack([it[key] for it in items]) for key in stacked if key in items[0]},
        "window_start": torch.tensor([it["window_start"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "sample_ids": [it["sample_id"] for it in items],
    }


class PretrainFeatureDataset(PretrainDataset):
    """Stage 2 from cached features (``featurestore.py``, docs/method.md §8): the examples of
    ``PretrainDataset`` with the frozen video encoder's output in place of the frames.

    ``dataset[(epoch, i)]`` → ``{"video_tokens": (T, h, w, C) bfloat16, "input_ids",
    "attention_mask", "sample_id", "window_start", "index"}``: view ``epoch mod views`` of
    example ``i`` (eval: its one view). View ``v`` is the example ``PretrainDataset`` yields in
    epoch ``v`` (the same window, crop and flip), so while ``epoch < views`` an example is
    today's, its video rounded to bfloat16. The frame store still decides which samples and
    windows are usable; every usable sample must be in the feature store, which was made with
    the same view fields of the loader config (a one-line ``DataError`` otherwise).
    """

    def __init__(self, samples, store, tokenizer, cfg: LoaderConfig, train: bool, features: "FeatureStore | str | Path", video_root=None) -> None:
        from .featurestore import FeatureStore
        from .loader_config import view_config

        super().__init__(samples, store, tokenizer, cfg, train, video_root=video_root)
        self.features_url = features.url if isinstance(features, FeatureStore) else str(features)
        self._features, self._features_pid = (features, os.getpid()) if isinstance(features, FeatureStore) else (None, None)
        fs = self.features
        for name, value in view_config(cfg).items():
            if fs.loader.get(name) != value:
                raise DataError(f"config key 'loader.{name}': {value!r} here, but the feature store {self.features_url} was made with {fs.loader.get(name)!r}")
        self.split = "train" if train else "val"
        self._rows = [fs.entry(self.split, self.sample_id(i)) for i in range(len(self))]
        missing = [self.sample_id(i) for i, row in enumerate(self._rows) if row is None]
        if missing:
            raise DataError(f"{self.features_url}: no {self.split} features of {len(missing)} usable samples (e.g. {missing[0]!r}): made from another frame store or corpus")
        self.views = fs.views_of(self.split)

    @property
    def features(self):
        from .featurestore import FeatureStore

        pid = os.getpid()
        if self._features is None or self._features_pid != pid:  # first use, or a forked worker
            self._features, self._features_pid = FeatureStore(self.features_url), pid
        return self._features

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_features"], state["_features_pid"] = None, None
        return state

    def get(self, index: int, epoch: int) -> dict[str, Any]:
        if not 0 <= index < len(self._entries):
            raise IndexError(f"index {index} out of range for {len(self._entries)} examples")
        view = epoch % self.views if self.train else 0
        tokens, start = self.features.read(self.split, self._rows[index], view)
        sample = self.samples[self._entries[index].sample]
        return {"video_tokens": tokens, **self._text(sample, start), "index": index}


class DistributedBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` keys for one rank; the order is a pure function of
    ``(seed, epoch)``.

    The epoch's permutation is cut to a multiple of ``world_size`` (``drop_last``) or padded
    with its own head (otherwise, like torch's ``DistributedSampler``); rank ``r`` takes
    positions ``r, r + world_size, ...``, so ranks are disjoint (up to that padding) and
    together cover the epoch. ``start_index`` skips this rank's first batches without
    producing them (mid-epoch resume). The epoch travels inside each key, so workers need
    no ``set_epoch``.
    """

    def __init__(
        self, num_examples: int, batch_size: int, rank: int = 0, world_size: int = 1, epoch: int = 0,
        seed: int = 0, shuffle: bool = True, drop_last: bool = True, start_index: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.rank, self.world_size, self.epoch, self.seed = rank, world_size, epoch, seed
        self.shuffle, self.drop_last, self.start_index = shuffle, drop_last, start_index

    def rank_indices(self) -> np.ndarray:
        """This rank's example indices for the whole epoch, in order."""
        n = self.num_examples
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, _SAMPLER_STREAM]).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[: n - n % self.world_size]
        elif n % self.world_size and n:
            pad = self.world_size - n % self.world_size
            order = np.concatenate([order, np.resize(order, pad)])
        return order[self.rank :: self.world_size]

    def _batches(self) -> int:
        per_rank = len(self.rank_indices())
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return max(0, self._batches() - self.start_index)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self.rank_indices()
        for b in range(self.start_index, self._batches()):
            chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]


def make_loader(
    dataset: PretrainDataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    num_workers: int = 0,
    drop_last: bool = True,
    start_index: int = 0,
    shuffle: bool | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` for one rank and one epoch.

    ``start_index``: batches of this rank already consumed this epoch (from a checkpoint);
    they are skipped without being loaded. ``shuffle`` defaults to ``dataset.train``. Batches
    are made by ``dataset.collate_fn`` when it has one, else ``collate_pretrain``.
    """
    dataset.set_epoch(epoch)
    sampler = DistributedBatchSampler(
        len(dataset), batch_size, rank=rank, world_size=world_size, epoch=epoch, seed=dataset.cfg.seed,
        shuffle=dataset.train if shuffle is None else shuffle, drop_last=drop_last, start_index=start_index,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate_fn", collate_pretrain),
        persistent_workers=False,
    )
