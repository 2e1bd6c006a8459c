"""ONNX export of a model artifact's encoders, the parity check, and ONNX Runtime sessions.

``export_onnx(model_dir, out_dir, cfg)`` writes, for a model with contrastive projections
(stage 1, stage 2, retrieval):

    video_encoder.onnx   frames (B, T, 3, H, W) float32, ImageNet-normalised
                         -> video (B, D) and clips (B, T/K, D), L2-normalised
    text_encoder.onnx    input_ids, attention_mask (B, M, L) int64
                         -> paragraph (B, D) and sentences (B, M, D), L2-normalised
    tokenizer/           the tokenizer the model was trained with
    export.json          what was exported, the preprocessing, versions and the parity figures

Each file is self-contained (weights inside), opset ``cfg.opset``. The batch axis is dynamic in
both; the text encoder's sentence axis too. The frame count and frame size are **fixed** at
export (``cfg.frames``, ``cfg.height``, ``cfg.width``; recorded in the metadata): the HTWA
window layout is computed from them in Python, so a graph traced at one frame count computes
windows for that count only. The preprocessing a client needs (frame size, mean/std, frames
per clip, max sentences and tokens) and the versions are stored in each file's metadata
(``lfvila.*`` keys). Not yet: fp16 weights for GPU serving.

Parity is part of export: every graph runs in ONNX Runtime on a batch size other than the traced
one (and, for text, another sentence count) and is compared with PyTorch — the largest absolute
difference is reported, and above ``tolerance`` (1e-4 in fp32) or with a different retrieval
ranking of the sample, export fails with a one-line error and leaves nothing behind.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo exporter
could not export the HTWA encoder with a dynamic batch (torch 2.13: a symbolic ``view`` of the
head-merge reshape fails in its decomposition pass).

Not yet exported: the QA models (cross-modal encoder + heads): the video-token pooling of
``lfvila-tiny`` (adaptive max pooling of a 1×2 map to 2×3) traces to a graph whose reshape
fails in ONNX Runtime at another batch size.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import check
from .errors import LfvilaError

log = logging.getLogger(__name__)

VIDEO_FILE = "video_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
SUMMARY_FILE = "export.json"
TRACE_BATCH = 2
PARITY_BATCH = 3


class ExportError(LfvilaError):
    """An export that cannot be produced or does not match PyTorch."""


class OnnxFileError(LfvilaError):
    """An ONNX file that is unreadable, corrupt, or not the graph the caller expects."""


@dataclass
class ExportConfig:
    model: str = "pretrain1"  # the model artifact's stage: pretrain1 | pretrain2 | finetune (retrieval)
    frames: int = 32  # fixed frame count of the video graph (clips × frames per clip)
    height: int = 192
    width: int = 320
    opset: int = 18
    tolerance: float = 1e-4  # parity: max |onnx − torch|

    def __post_init__(self) -> None:
        check(self.model in ("pretrain1", "pretrain2", "finetune"), "model", f"expected pretrain1, pretrain2 or finetune, got {self.model!r}")
        check(self.frames >= 1 and self.height >= 8 and self.width >= 8, "frames", "frames, height and width must be positive (height, width >= 8)")
        check(17 <= self.opset <= 21, "opset", f"must be between 17 and 21, got {self.opset}")
        check(self.tolerance > 0, "tolerance", f"must be > 0, got {self.tolerance}")


def input_names(cfg: ExportConfig) -> tuple[str, ...]:
    return (cfg.model,)


class _VideoGraph(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor):
        out = self.model.encode_video(frames)
        return out.global_embedding, out.clip_embeddings


class _TextGraph(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model.encode_text(input_ids, attention_mask)
        return out.paragraph_embedding, out.sentence_embeddings


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from . import __version__

    return {"lfvila": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _sample_text(batch: int, sentences: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab), (batch, sentences, length), generator=gen)
    lengths = torch.randint(3, length + 1, (batch, sentences), generator=gen)
    mask = (torch.arange(length)[None, None] < lengths[..., None]).long()
    if sentences > 1:
        mask[0, -1] = 0  # an empty sentence slot, as short paragraphs have
    return ids * mask, mask


def _export(module: torch.nn.Module, args: tuple, path: Path, names_in: list[str], names_out: list[str], dynamic: dict, opset: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=names_in, output_names=names_out,
            dynamic_axes=dynamic, opset_version=opset,
        )


def _set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"lfvila.{key}", value if isinstance(value, str) else json.dumps(value)
    onnx.save(graph, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``lfvila.*`` metadata of an exported file; a corrupt file is a one-line error."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise OnnxFileError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    out: dict[str, Any] = {}
    for entry in graph.metadata_props:
        if entry.key.startswith("lfvila."):
            key = entry.key[len("lfvila."):]
            try:
                out[key] = json.loads(entry.value)
            except json.JSONDecodeError:
                out[key] = entry.value
    if "graph" not in out:
        raise OnnxFileError(f"{path}: an ONNX file without lfvila metadata (not exported by lfvila export)")
    return out


def create_session(path: str | Path, graph: str | None = None, prefer_gpu: bool = True):
    """An ONNX Runtime session for an exported file: CUDA when a GPU is really usable, decided
    from the created session's providers (onnxruntime-gpu lists CUDA even without a GPU), else
    CPU; one log line says which. ``graph`` ("video" / "text"): refuse a file of another graph."""
    import onnxruntime as ort

    meta = read_metadata(path)
    if graph is not None and meta["graph"] != graph:
        raise OnnxFileError(f"{path}: holds the {meta['graph']} graph, not the {graph} graph")
    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ort.set_default_logger_severity(3)  # a CUDA provider that cannot start is reported below, once
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise OnnxFileError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    used = session.get_providers()[0]
    log.info("%s: ONNX Runtime on %s", Path(path).name, "CUDA" if used == "CUDAExecutionProvider" else "CPU")
    return session


def _ranks(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Per text, the videos ordered by similarity (ties by index): the ranking to preserve."""
    return np.argsort(-(text.astype(np.float64) @ video.astype(np.float64).T), axis=1, kind="stable")


def export_onnx(model_dir: Path, out_dir: Path, cfg: ExportConfig) -> dict[str, Any]:
    """Export and parity-check the encoders of the model in ``model_dir`` into ``out_dir``."""
    from .data.loader import trained_loader_config
    from .train.pretrain import TOKENIZER_DIR, load_pretrained

    model = load_pretrained(model_dir).eval()
    config = model.config
    if model.projections is None:
        raise ExportError(f"{model_dir}: this model has no contrastive projections (a QA model): exporting QA models is not supported yet")
    k = config.video.frames_per_clip
    if cfg.frames % k:
        raise ExportError(f"config key 'frames': {cfg.frames} is not a whole number of {k}-frame clips")
    out_dir.mkdir(parents=True, exist_ok=True)
    tolerance = cfg.tolerance
    versions = _versions()
    trained = trained_loader_config(model_dir)  # the normalisation the model was trained with
    preprocessing = {
        "frames": cfg.frames, "frames_per_clip": k, "height": cfg.height, "width": cfg.width,
        "channel_order": "RGB", "layout": "B,T,3,H,W",
        "image_mean": list(trained.image_mean), "image_std": list(trained.image_std),
        "max_sentences": config.text.max_sentences, "max_tokens": config.text.max_tokens, "tokenizer": TOKENIZER_DIR,
    }
    summary: dict[str, Any] = {"preprocessing": preprocessing, "versions": versions, "opset": cfg.opset, "graphs": {}}

    # -- video
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(TRACE_BATCH, cfg.frames, 3, cfg.height, cfg.width, generator=gen)
    video_path = out_dir / VIDEO_FILE
    started = time.perf_counter()
    try:
        _export(_VideoGraph(model).eval(), (frames,), video_path, ["frames"], ["video", "clips"],
                {"frames": {0: "batch"}, "video": {0: "batch"}, "clips": {0: "batch"}}, cfg.opset)
    except Exception as exc:
        raise ExportError(f"video encoder: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    _set_metadata(video_path, {"graph": "video", "preprocessing": preprocessing, "versions": versions, "fixed": {"frames": cfg.frames, "height": cfg.height, "width": cfg.width}})
    export_s = time.perf_counter() - started

    # -- text
    m, length = min(4, config.text.max_sentences), config.text.max_tokens
    vocab = model.text_encoder.word_embeddings.num_embeddings
    ids, mask = _sample_text(TRACE_BATCH, m, length, vocab, seed=1)
    text_path = out_dir / TEXT_FILE
    try:
        _export(_TextGraph(model).eval(), (ids, mask), text_path, ["input_ids", "attention_mask"], ["paragraph", "sentences"],
                {"input_ids": {0: "batch", 1: "sentences"}, "attention_mask": {0: "batch", 1: "sentences"},
                 "paragraph": {0: "batch"}, "sentences": {0: "batch", 1: "sentences"}}, cfg.opset)
    except Exception as exc:
        raise ExportError(f"text encoder: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    _set_metadata(text_path, {"graph": "text", "preprocessing": preprocessing, "versions": versions})

    # -- parity, on a batch size (and sentence count) other than the traced ones
    frames = torch.randn(PARITY_BATCH, cfg.frames, 3, cfg.height, cfg.width, generator=gen)
    ids, mask = _sample_text(PARITY_BATCH, max(1, m - 1) if m > 1 else 1, length, vocab, seed=2)
    with torch.no_grad():
        video_ref = [t.numpy() for t in _VideoGraph(model)(frames)]
        text_ref = [t.numpy() for t in _TextGraph(model)(ids, mask)]
    video_onnx = create_session(video_path, "video", prefer_gpu=False).run(None, {"frames": frames.numpy()})
    text_onnx = create_session(text_path, "text", prefer_gpu=False).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    diffs = {
        "video": float(np.abs(video_onnx[0] - video_ref[0]).max()), "clips": float(np.abs(video_onnx[1] - video_ref[1]).max()),
        "paragraph": float(np.abs(text_onnx[0] - text_ref[0]).max()), "sentences": float(np.abs(text_onnx[1] - text_ref[1]).max()),
    }
    same_ranking = bool((_ranks(text_onnx[0], video_onnx[0]) == _ranks(text_ref[0], video_ref[0])).all())
    summary["graphs"] = {
        "video": {"file": VIDEO_FILE, "inputs": ["frames"], "outputs": ["video", "clips"], "dynamic": ["batch"], "fixed": {"frames": cfg.frames, "height": cfg.height, "width": cfg.width}},
        "text": {"file": TEXT_FILE, "inputs": ["input_ids", "attention_mask"], "outputs": ["paragraph", "sentences"], "dynamic": ["batch", "sentences"]},
    }
    summary["parity"] = {"batch": PARITY_BATCH, "traced_batch": TRACE_BATCH, "max_abs_diff": diffs, "tolerance": tolerance, "same_ranking": same_ranking}
    summary["export_seconds"] = round(export_s, 2)
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance or not same_ranking:
        raise ExportError(
            f"ONNX parity failed: max |onnx - torch| of {worst} is {diffs[worst]:.2e} (tolerance {tolerance:.0e})"
            + ("" if same_ranking else ", and the retrieval ranking of the sample differs")
        )
    shutil.copytree(model_dir / TOKENIZER_DIR, out_dir / TOKENIZER_DIR, dirs_exist_ok=True)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def describe(summary: dict) -> str:
    parity = summary.get("parity") or {}
    diffs = parity.get("max_abs_diff") or {}
    worst = max(diffs.values()) if diffs else float("nan")
    fixed = (summary.get("graphs", {}).get("video") or {}).get("fixed", {})
    return (
        f"video + text encoders, {fixed.get('frames', '?')} frames at {fixed.get('height', '?')}×{fixed.get('width', '?')}, "
        f"parity max |diff| {worst:.1e} at batch {parity.get('batch', '?')}, ranking {'same' if parity.get('same_ranking') else 'DIFFERENT'}"
    )
