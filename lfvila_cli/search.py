"""Paragraph-to-video search: index a frame store, then query it with a paragraph.

``index`` (a stage) embeds every sample of a ``chunks`` frame store with the exported ONNX
encoders (``engine: onnx``, input ``export``) or the PyTorch model (``engine: torch``, input
``pretrain1``) and writes a Zarr feature store ``features.zarr`` in the artifact:

    video       (N, D) float32   global video embedding, L2-normalised
    clips       (N, M, D) float32  per-clip embeddings (M = frames / frames per clip), when the
                                   model has them
    clip_start, clip_end (N, M) float32  each clip's span in seconds (its first and last frame)
    status      (N,) uint8       1 once the row's embeddings are written (written after them)
    sample_id   (N,) str

Indexing is resumable like the cache stage: rows are written a batch at a time with their status
last, and a rerun skips rows already marked.

``query(index_dir, sentences, top_k)`` encodes the paragraph with the same engine and returns the
top-k videos by cosine similarity and, for each sentence, the best-matching clip of each of
those videos with its time span — the temporal alignment MTC learns. A model without clip and
sentence embeddings (a retrieval fine-tune, whose projections are global only) indexes and
ranks videos without the per-sentence clips.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from .config import check
from .errors import ConfigError, DataError
from .model.precision import autocast, check_precision, resolve_precision
from .progress import ProgressLog
from .runtime import parse_device

log = logging.getLogger(__name__)

FEATURES = "features.zarr"
INFO_FILE = "index.json"


@dataclass
class IndexConfig:
    engine: Literal["onnx", "torch"] = "onnx"
    batch: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N (not part of the key: the embeddings are the model's)
    # engine torch: auto (bf16 where the hardware has it natively, else fp32) | bf16 | fp32; the
    # ONNX graphs run at the precision they were exported at
    precision: str = "auto"

    def __post_init__(self) -> None:
        check(self.engine in ("onnx", "torch"), "engine", f"expected onnx or torch, got {self.engine!r}")
        check_precision(self.precision, "precision")
        check(
            self.engine == "torch" or self.precision != "bf16", "precision",
            "bf16 is for engine torch; an ONNX export runs at the precision it was exported at",
        )
        check(self.batch >= 1, "batch", f"must be >= 1, got {self.batch}")
        try:
            parse_device(self.device)
        except ConfigError as exc:
            raise ConfigError(f"config key 'device': {exc}") from None


class Encoder:
    """Video and paragraph embeddings through ONNX Runtime (an export directory) or PyTorch (a
    model directory), with the preprocessing the model was trained with. ``dim``: the embedding
    width; ``grounded``: whether it gives clip and sentence embeddings.

    ``device``: "auto" (CUDA where it really runs, else the CPU, quietly), "cpu", "cuda" or
    "cuda:N" (CUDA required: a one-line ``DeviceError`` where it cannot run, never a silent CPU
    run). ONNX Runtime picks its provider from it; PyTorch moves the model there. ``device`` after
    construction says where the encoders run ("cpu" or "cuda"). Inputs and outputs are numpy
    arrays in host memory either way. ``precision`` (PyTorch): auto | bf16 | fp32
    (``model/precision.py``); ``precision`` after construction says what runs ("fp32" for ONNX)."""

    def __init__(self, engine: str, source: Path, max_batch: int = 16, device: str = "auto", precision: str = "auto") -> None:
        from .data.tokenizer import load_tokenizer

        self.engine, self.source = engine, Path(source)
        if engine == "onnx":
            from .export import QA_FILE, TEXT_FILE, VIDEO_FILE
            from .runtime import OnnxGraph

            if not (self.source / VIDEO_FILE).is_file() and (self.source / QA_FILE).is_file():
                raise ConfigError(f"{self.source}: an export of a QA model ({QA_FILE}); search needs the encoders: export a stage-1 or stage-2 model")
            self.video_graph = OnnxGraph(self.source / VIDEO_FILE, "video", device=device, max_batch=max_batch)
            self.text_graph = OnnxGraph(self.source / TEXT_FILE, "text", device=device, max_batch=max_batch)
            self.device = self.video_graph.device
            self.precision = self.video_graph.metadata.get("precision", "fp32")
            self.pre, self.fixed = self.video_graph.metadata["preprocessing"], self.video_graph.metadata["fixed"]
            self.frames_per_clip = self.pre["frames_per_clip"]
            self.max_tokens, self.max_sentences = self.pre["max_tokens"], self.pre["max_sentences"]
            self.dim = int(self.video_graph.session.get_outputs()[0].shape[1])
            self.grounded = "clips" in self.video_graph.output_names
            mean, std = self.pre["image_mean"], self.pre["image_std"]
        else:
            from .model.lfvila import LfvilaModel

            parse_device(device)  # one message for a malformed device, whichever the engine
            self.model = LfvilaModel.from_pretrained(self.source, device=device)  # eval mode, on the device
            self.torch_device = next(self.model.parameters()).device
            self.device = self.torch_device.type
            self.precision = resolve_precision(precision, self.torch_device)
            self.fixed = None
            self.frames_per_clip = self.model.config.video.frames_per_clip
            self.max_tokens, self.max_sentences = self.model.config.text.max_tokens, self.model.config.text.max_sentences
            self.dim = self.model.config.projections.embed_dim
            self.grounded = self.model.projections is not None and self.model.projections.clip is not None
            from .data.loader_config import trained_loader_config
            from .pipeline.artifacts import read_stage_config

            # The normalisation it was trained with: config.json's (any model directory, a hub
            # snapshot too), else the artifact's stage config (directories written before).
            pre = (self.model.pretrained_info or {}).get("preprocessing") or {}
            if "image_mean" not in pre:
                loader = trained_loader_config(read_stage_config(self.source))
                pre = {"image_mean": loader.image_mean, "image_std": loader.image_std}
            mean, std = pre["image_mean"], pre["image_std"]
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.tokenizer = load_tokenizer(self.source / "tokenizer", local_files_only=True)

    def videos(self, frames: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 (B, T, H, W, 3) -> video (B, D), clips (B, T/K, D) (None: a model without
        clip embeddings, a retrieval fine-tune)."""
        if self.fixed is not None and frames.shape[1:4] != (self.fixed["frames"], self.fixed["height"], self.fixed["width"]):
            raise DataError(
                f"frames of shape {frames.shape[1:4]} (T, H, W), but {self.source} was exported for "
                f"{(self.fixed['frames'], self.fixed['height'], self.fixed['width'])}"
            )
        x = (frames.astype(np.float32) / 255.0 - self.mean) / self.std
        x = np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))
        if self.engine == "onnx":
            video, *clips = self.video_graph(frames=x)
            return video, (clips[0] if clips else None)
        import torch

        with torch.inference_mode(), autocast(self.precision, self.torch_device):
            out = self.model.encode_video(torch.from_numpy(x).to(self.torch_device))
        return _host(out.global_embedding), _host(out.clip_embeddings)

    def paragraph(self, sentences: list[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """sentences -> paragraph (D,), sentences (M, D) (None without sentence embeddings)."""
        if len(sentences) > self.max_sentences:
            raise ConfigError(
                f"a paragraph of {len(sentences)} sentences; the model takes at most {self.max_sentences} "
                "(join some of them, or search with fewer)"
            )
        tokens = self.tokenizer(
            sentences, max_length=self.max_tokens, truncation=True, padding="max_length", return_tensors="np", return_token_type_ids=False,
        )
        ids, mask = tokens["input_ids"][None].astype(np.int64), tokens["attention_mask"][None].astype(np.int64)
        if self.engine == "onnx":
            paragraph, *sent = self.text_graph(input_ids=ids, attention_mask=mask)
            return paragraph[0], (sent[0][0] if sent else None)
        import torch

        with torch.inference_mode(), autocast(self.precision, self.torch_device):
            out = self.model.encode_text(torch.from_numpy(ids).to(self.torch_device), torch.from_numpy(mask).to(self.torch_device))
        sentences_out = _host(out.sentence_embeddings)
        return _host(out.paragraph_embedding)[0], None if sentences_out is None else sentences_out[0]


def _host(tensor) -> Optional[np.ndarray]:
    """A tensor on any device as a numpy array in host memory (None stays None)."""
    return None if tensor is None else tensor.cpu().numpy()


def build_index(store_url: str, source: Path, cfg: IndexConfig, out_dir: Path, progress: bool = False) -> dict[str, Any]:
    """Embed every sample of the frame store into ``out_dir/features.zarr`` (resumable). Samples
    sharing their frames with an earlier one (the questions of one video) are indexed once, under
    the first one's id; ``shared`` counts the others."""
    from .data.framestore import OK, FrameStore, open_group

    store = FrameStore(store_url)
    if store.segment_mode != "chunks":
        raise DataError(f"{store_url}: search indexes whole videos: cache with segment_mode=chunks")
    encoder = Encoder(cfg.engine, source, max_batch=cfg.batch, device=cfg.device, precision=cfg.precision)
    if store.frames_per_segment != encoder.frames_per_clip:
        raise ConfigError(f"the frame store holds {store.frames_per_segment} frames per chunk, the model's clips are {encoder.frames_per_clip}")
    status = store.status()
    ids, seen, shared = [], set(), 0
    for sid in store.sample_ids:
        rows = store.rows(sid)
        if rows.start in seen:  # the same frames as an earlier sample (e.g. two questions of one video)
            shared += 1
            continue
        if (status[rows.start : rows.stop] == OK).all():
            seen.add(rows.start)
            ids.append(sid)
    skipped = len(store.sample_ids) - len(ids) - shared
    if not ids:
        raise DataError(f"{store_url}: no sample with all its frames cached")
    clips = store.num_segments(ids[0])
    started = time.perf_counter()
    dim, grounded = encoder.dim, encoder.grounded  # clip embeddings: stage-1/2 models, not a retrieval fine-tune
    url = str(out_dir / FEATURES)
    group = open_group(url, mode="a")
    n = len(ids)
    arrays = {"video": ((n, dim), "float32"), "status": ((n,), "uint8")}
    if grounded:
        arrays.update({"clips": ((n, clips, dim), "float32"), "clip_start": ((n, clips), "float32"), "clip_end": ((n, clips), "float32")})
    fresh = [name for name, (shape, _) in arrays.items() if name not in group or tuple(group[name].shape) != shape]
    if fresh and "status" not in fresh:
        fresh.append("status")  # rows are done only if every array holds them: a new array restarts the index
    for name in fresh:
        shape, dtype = arrays[name]
        group.create_array(name, shape=shape, chunks=(min(n, cfg.batch),) + shape[1:], dtype=dtype, overwrite=True, fill_value=0)
    if "sample_id" not in group:
        group.create_array("sample_id", shape=(n,), chunks=(n,), dtype=str, overwrite=True)
        group["sample_id"][:] = np.asarray(ids)
    elif list(group["sample_id"][:]) != ids:
        raise DataError(f"{url}: a partial index of another store; rerun with --force")
    done = np.asarray(group["status"][:]).astype(bool)
    todo = np.flatnonzero(~done)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="video", desc="index")
    lines = ProgressLog(n, enabled=bar is None, done=n - len(todo))  # off a terminal: a line per interval
    for start in range(0, len(todo), cfg.batch):
        rows = todo[start : start + cfg.batch]
        frames, times = zip(*(store.sample(ids[r]) for r in rows))
        frames = np.stack([f.reshape(-1, store.height, store.width, 3) for f in frames])
        video, clip = encoder.videos(frames)
        if not np.isfinite(video).all() or (clip is not None and not np.isfinite(clip).all()):
            bad = next(ids[r] for r, v in zip(rows, video) if not np.isfinite(v).all()) if not np.isfinite(video).all() else ids[rows[0]]
            raise DataError(f"index: the model gave non-finite embeddings (NaN/Inf) for {bad}; its files are damaged, or the frames are")
        times = np.stack(times)  # (b, M, K)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        values = {"video": video}
        if grounded:
            values.update({"clips": clip, "clip_start": times[:, :, 0], "clip_end": times[:, :, -1]})
        if hi - lo == len(rows):  # contiguous rows: one write per array, status last
            for name, value in values.items():
                group[name][lo:hi] = value
            group["status"][lo:hi] = 1
        else:
            for i, r in enumerate(rows):
                for name, value in values.items():
                    group[name][r] = value[i]
                group["status"][r] = 1
        if bar is not None:
            bar.update(len(rows))
        if lines.advance(len(rows)):
            lines.log("index: %s, %.1f videos/s, about %s left", lines.counted("videos"), lines.rate(), lines.left())
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    info = {"engine": cfg.engine, "precision": encoder.precision, "videos": n, "clips_per_video": clips, "grounded": grounded, "dim": dim, "skipped": skipped, "shared": shared, "indexed_this_run": int(len(todo))}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    info["seconds"] = round(seconds, 2)
    info["videos_per_s"] = round(len(todo) / seconds, 2) if todo.size and seconds > 0 else None
    return info


def query(
    index_dir: Path, source: Path, engine: str, sentences: list[str], top_k: int = 5, device: str = "auto",
    precision: Optional[str] = None,
) -> list[dict[str, Any]]:
    """The ``top_k`` videos for the paragraph ``sentences`` by cosine similarity, each with the
    best clip (index, start, end, score) for every sentence; the paragraph is encoded on ``device``
    at ``precision`` (``Encoder``; None: the precision the index was built at, fp32 for an index
    that does not say)."""
    from .data.framestore import open_group

    if not sentences or not all(s.strip() for s in sentences):
        raise ConfigError("search needs a paragraph: one or more non-empty sentences")
    group = open_group(str(Path(index_dir) / FEATURES), mode="r")
    if precision is None:
        info_file = Path(index_dir) / INFO_FILE
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        precision = info.get("precision", "fp32") if engine == "torch" else "auto"
    encoder = Encoder(engine, source, device=device, precision=precision)
    paragraph, sentence_emb = encoder.paragraph(sentences)
    video = np.asarray(group["video"][:])
    scores = video @ paragraph
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        where = "the paragraph's embedding" if not np.isfinite(paragraph).all() else f"{bad} video embedding(s) of the index"
        raise DataError(f"{index_dir}: {bad} of {len(scores)} scores are not finite ({where}); the model or the index is damaged: rebuild it")
    order = np.argsort(-scores, kind="stable")[:top_k]
    ids = list(group["sample_id"][:])
    grounded = "clips" in group and sentence_emb is not None
    results = []
    for rank, row in enumerate(order.tolist(), 1):
        result = {"rank": rank, "id": str(ids[row]), "score": float(scores[row])}
        if grounded:
            clips = np.asarray(group["clips"][row])
            start, end = np.asarray(group["clip_start"][row]), np.asarray(group["clip_end"][row])
            sim = sentence_emb[: len(sentences)] @ clips.T  # (S, M)
            best = sim.argmax(axis=1)
            result["sentences"] = [
                {"sentence": s, "clip": int(c), "start": float(start[c]), "end": float(end[c]), "score": float(sim[i, c])}
                for i, (s, c) in enumerate(zip(sentences, best))
            ]
        results.append(result)
    return results


def result_lines(results: list[dict[str, Any]]) -> list[str]:
    """``query``'s results as text: a line per video, then one per sentence with its best clip."""
    lines = []
    for r in results:
        lines.append(f"{r['rank']}. {r['id']}  score {r['score']:.3f}")
        for s in r.get("sentences", []):
            lines.append(f"     clip {s['clip']} [{s['start']:.1f}s–{s['end']:.1f}s] {s['score']:.3f}  {s['sentence']}")
    return lines
