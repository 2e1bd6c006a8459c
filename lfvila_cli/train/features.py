"""The frozen stage-1 video encoder's output, cached for stage 2 (``lfvila features``; docs/method.md §8).

Stage 2 trains the cross-modal layers and heads on top of a frozen stage-1 model, so the video
encoder's output for a given example never changes. ``build_features`` runs the encoder once per
cached view of every usable training sample (``views`` of them: view ``v`` is the example stage 2
would draw in epoch ``v``, its window, crop and flip) and once per validation sample, and writes
the tokens, rounded to bfloat16, into a feature store (``data/featurestore.py``). Stage 2 with
``features`` then reads them (``data.loader.PretrainFeatureDataset``).

Resumable and rank-sharded like the frame cache: rank 0 creates the store, every rank encodes the
rows ``r ≡ rank (mod world)`` that are still pending, a row's status is written after its tokens,
and rank 0 waits for the other ranks' rows before the summary (``data.cache.wait_for_rows``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..data.cache import wait_for_rows
from ..data.featurestore import SPLITS, FeatureLayout, FeatureStore, open_for_writing, tokens_to_bits, wait_for_layout
from ..data.framestore import OK, FrameStore, video_digest
from ..data.loader_config import view_config
from ..errors import ConfigError, DataError
from ..progress import ProgressLog
from .config import FeaturesConfig

log = logging.getLogger(__name__)


def feature_sources(frame_store_url: str, model_dir: Path) -> dict:
    """What a feature store is computed from: the frame store's plan digest and the SHA-256 of
    the stage-1 weights (the content the store's tokens depend on, besides the loader)."""
    from ..model.pretrained import WEIGHTS_FILE

    return {"frame_store": FrameStore(frame_store_url).attrs.get("plan_digest"), "model": video_digest(Path(model_dir) / WEIGHTS_FILE)}  # sha256 of the file's bytes


def check_feature_sources(features_url: str, frame_store_url: str, model_dir: Optional[Path]) -> None:
    """A feature store read by stage 2 must come from the frame store and the stage-1 model that
    stage 2 starts from: a one-line ``DataError`` otherwise (the pipeline checks the same on the
    artifacts' keys before anything runs)."""
    store = FeatureStore(features_url)
    if model_dir is None:
        return
    have = feature_sources(frame_store_url, model_dir)
    for name, what in (("frame_store", f"the frame store {frame_store_url}"), ("model", f"the stage-1 model {model_dir}")):
        if store.sources.get(name) != have[name]:
            raise DataError(f"{features_url}: the feature store was not made from {what} (rerun `lfvila features` with them)")


def _device(name: str) -> torch.device:
    from ..model.files import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as exc:
        raise ConfigError(f"config key 'device': {exc}") from None


def build_features(
    corpus_path: Path,
    frame_store_url: str,
    model_dir: Path,
    cfg: FeaturesConfig,
    out_url: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    wait_timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Fill the feature store at ``out_url`` with the video tokens of the stage-1 model in
    ``model_dir`` for every usable sample of the corpus' train (``cfg.views`` views) and val (one
    view) splits. Rows found written are kept (a resumed run). Returns a JSON-able summary: for
    the whole store on rank 0, for this rank's rows elsewhere."""
    from ..data.corpus import read_split
    from ..data.loader import PretrainDataset
    from ..data.tokenizer import load_tokenizer
    from ..model.lfvila import LfvilaModel
    from ..model.pretrained import TOKENIZER_DIR

    started = time.perf_counter()
    device = _device(cfg.device)
    tokenizer = load_tokenizer(Path(model_dir) / TOKENIZER_DIR)
    root = Path(corpus_path).parent
    datasets = {}
    for split in SPLITS:
        samples = read_split(corpus_path, split)
        if samples:
            datasets[split] = PretrainDataset(samples, frame_store_url, tokenizer, cfg.loader, train=split == "train", video_root=root)
    if not datasets.get("train"):
        raise DataError(f"{corpus_path}: no usable train-split sample to cache features of")
    model = LfvilaModel.from_pretrained(model_dir, device=device)
    encoder = model.video_encoder.eval()  # frozen in stage 2, kept in eval mode there too
    first = datasets["train"].get(0, 0)["frames"]
    with torch.no_grad():
        token_shape = tuple(encoder(first[None].to(device)).tokens.shape[1:])
    layout = FeatureLayout(
        token_shape=token_shape, views=cfg.views, loader=view_config(cfg.loader), sources=feature_sources(frame_store_url, model_dir),
        sample_ids={split: [ds.sample_id(i) for i in range(len(ds))] for split, ds in datasets.items()},
    )
    group = open_for_writing(out_url, layout) if rank == 0 else wait_for_layout(out_url, layout, rank)

    todo: dict[str, np.ndarray] = {}
    for split in datasets:
        status = np.asarray(group[split]["status"][:])
        mine = np.arange(layout.rows(split)) % world_size == rank
        todo[split] = np.flatnonzero(mine & (status != OK))
    total = sum(int((np.arange(layout.rows(s)) % world_size == rank).sum()) for s in datasets)
    pending = sum(t.size for t in todo.values())
    log.info("features: rank %d/%d: %d of %d rows to encode -> %s", rank, world_size, pending, total, out_url)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=pending, unit="view", desc="features")
    lines = ProgressLog(total, enabled=bar is None, done=total - pending)
    encode_seconds = 0.0
    for split, rows in todo.items():
        ds, views, sub = datasets[split], layout.views_of(split), group[split]
        for lo in range(0, rows.size, cfg.batch):
            batch = rows[lo : lo + cfg.batch]
            items = [ds.get(int(row) // views, int(row) % views) for row in batch]  # view v = epoch v's example
            frames = torch.stack([it["frames"] for it in items]).to(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                tokens = encoder(frames).tokens  # (b, T, h, w, C), the map stage 2's video token embedding reads
            encode_seconds += time.perf_counter() - t0
            if not torch.isfinite(tokens).all():
                raise DataError(f"features: the stage-1 video encoder gave non-finite tokens for {items[0]['sample_id']}; its weights are damaged, or the frames are")
            bits = tokens_to_bits(tokens)
            for i, row in enumerate(batch):
                sub["tokens"][row] = bits[i]
                sub["window_start"][row] = items[i]["window_start"]
                sub["status"][row] = OK  # last: a row counts once its tokens are in
            if bar is not None:
                bar.update(len(batch))
            if lines.advance(len(batch)):
                lines.log("features: rank %d: %s, %.1f views/s, about %s left", rank, lines.counted("views"), lines.rate(), lines.left())
    if bar is not None:
        bar.close()
    if rank == 0 and world_size > 1:
        for split in datasets:
            others = np.flatnonzero(np.arange(layout.rows(split)) % world_size != 0)
            wait_for_rows(group[split]["status"], others, out_url, wait_timeout_s, 1.0)
    encoded = int(pending)
    summary = {
        "views": cfg.views,
        "samples": {split: len(ds) for split, ds in datasets.items()},
        "rows": {split: layout.rows(split) for split in datasets} if rank == 0 else {split: int(len(t)) for split, t in todo.items()},
        "encoded_this_run": encoded,
        "token_shape": list(token_shape),
        "bytes_per_view": layout.bytes_per_view,
        "bytes_per_sample": layout.bytes_per_view * cfg.views,
        "encode_seconds": round(encode_seconds, 2),
        "views_per_s": round(encoded / encode_seconds, 2) if encoded and encode_seconds > 0 else None,
        "seconds": round(time.perf_counter() - started, 2),
        "rank": rank,
        "world_size": world_size,
    }
    return summary
