"""ONNX export of a model artifact, the parity check that is part of it.

``export_onnx(model_dir, out_dir, cfg)`` writes, for a model with contrastive projections
(stage 1, stage 2, retrieval):

    video_encoder.onnx   frames (B, T, 3, H, W) float32, normalised as in training
                         -> video (B, D) and clips (B, T/K, D), L2-normalised
    text_encoder.onnx    input_ids, attention_mask (B, M, L) int64
                         -> paragraph (B, D) and sentences (B, M, D), L2-normalised

(a retrieval fine-tune has global projections only: video and paragraph, no clips or sentences),

and for a fine-tuned QA model (cross-modal encoder + heads, no contrastive projections) the full
model in one graph:

    qa_model.onnx        how2qa:  frames, input_ids, attention_mask (B, K, M, L)
                                  -> choice_logits (B, K), span_logits (B, T, 2)
                         violin, anet-qa:  frames, input_ids, attention_mask (B, M, L)
                                  -> logits (B, num_labels)
    answers.json         anet-qa: the answer of each class (from the prepare artifact)

beside ``tokenizer/`` (the tokenizer the model was trained with) and ``export.json`` (what was
exported, the preprocessing, versions and the parity figures).

Each file is self-contained (weights inside), opset ``cfg.opset``. The batch axis is dynamic,
and so are the sentence axis and the candidate axis. The frame count and frame size are
**fixed** at export (``cfg.frames``, ``cfg.height``, ``cfg.width``; recorded in the metadata):
the HTWA window layout is computed from them in Python, so a graph traced at one frame count
computes windows for that count only. The preprocessing a client needs (frame size, mean/std,
frames per clip, max sentences and tokens) and the versions are stored in each file's metadata
(``lfvila.*`` keys, read with ``runtime.read_metadata``).

``precision: fp16`` writes fp16 weights and computes in fp16 (for GPU serving), with float32
inputs and outputs so clients do not change; it is checked against the float32 PyTorch model
with the fp16 tolerance (1e-2 by default).

``precision: int8`` (the encoders only, for CPU serving) exports and checks the fp32 graphs as
above, in a scratch folder, then quantizes them (``quantize_int8``: ONNX Runtime's dynamic
quantization, int8 MatMul weights; the scheme and why in docs/engineering.md §8) under the same
file names, so index and search read them as they read fp32 files. The int8 graphs are judged
against the fp32 graphs, their reference, by ranking rather than by difference
(``int8_parity``): on a batch of ``INT8_BATCH`` videos and paragraphs, every embedding within
``tolerance`` of its fp32 counterpart in 1 − cos (1e-2 by default), and at least
``INT8_MIN_AGREEMENT`` of the paragraphs with the same top-1 video.

Parity is part of export: every graph runs in ONNX Runtime on a batch size other than the traced
one (and another sentence / candidate count) and is compared with PyTorch — the largest absolute
difference is reported, and above the tolerance (1e-4 in fp32), or with a different retrieval
ranking of the sample (encoders) or different predicted answers (QA), export fails with a
one-line error and leaves nothing behind.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The dynamo exporter
could not export the HTWA encoder with a dynamic batch (torch 2.13: a symbolic ``view`` of the
head-merge reshape fails in its decomposition pass).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .errors import LfvilaError
from .runtime import OnnxFileError, create_session, read_metadata  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

VIDEO_FILE = "video_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
QA_FILE = "qa_model.onnx"
ANSWERS_FILE = "answers.json"
SUMMARY_FILE = "export.json"
TRACE_BATCH = 2
PARITY_BATCH = 3
INT8_BATCH = 16  # the int8 check's batch: its top-1 agreement counts 16 paragraphs
INT8_MIN_AGREEMENT = 0.75  # the share of them whose top-1 video the int8 graphs must keep


class ExportError(LfvilaError):
    """An export that cannot be produced or does not match PyTorch."""


class _Graph(torch.nn.Module):
    """One exported graph: a forward of the model with float inputs cast to the model's dtype
    and float outputs returned as float32 (so an fp16 graph keeps float32 inputs and outputs)."""

    def __init__(self, model, run: Callable) -> None:
        super().__init__()
        self.model, self.run = model, run

    def forward(self, *args: torch.Tensor):
        dtype = next(self.model.parameters()).dtype
        args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
        return tuple(t.float() for t in self.run(self.model, *args))


def _video(model, frames):
    out = model.encode_video(frames)
    return tuple(t for t in (out.global_embedding, out.clip_embeddings) if t is not None)  # no clips: a retrieval model


def _text(model, input_ids, attention_mask):
    out = model.encode_text(input_ids, attention_mask)
    return tuple(t for t in (out.paragraph_embedding, out.sentence_embeddings) if t is not None)


def _multiple_choice(model, frames, input_ids, attention_mask):
    out = model(frames, input_ids, attention_mask)  # LfvilaForMultipleChoice
    return out.choice_logits, out.span_logits


def _classification(model, frames, input_ids, attention_mask):
    return (model(frames, input_ids, attention_mask).logits,)  # LfvilaForClassification


@dataclass
class GraphSpec:
    """What one exported file holds and how to make its inputs (``sample(batch, variant, seed)``:
    variant 0 the traced shapes, 1 the parity shapes: another sentence / candidate count)."""

    name: str
    file: str
    run: Callable
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    sample: Callable[[int, int, int], tuple[torch.Tensor, ...]]
    fixed: dict[str, int] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from .version import __version__

    return {"lfvila": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _sample_text(shape: tuple[int, ...], length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask (*shape, length): random lengths of 3.., the last slot of the first
    text empty when there are several (as short paragraphs have)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab), (*shape, length), generator=gen)
    lengths = torch.randint(3, length + 1, shape, generator=gen)
    mask = (torch.arange(length)[None] < lengths[..., None]).long()
    if shape[-1] > 1:
        mask.view(-1, shape[-1], length)[0, -1] = 0
    return ids * mask, mask


def graph_specs(model, cfg) -> list[GraphSpec]:
    """The graphs a model exports to: the two encoders (contrastive models) or the QA model."""
    config = model.config
    size = (cfg.frames, cfg.height, cfg.width)
    fixed = {"frames": cfg.frames, "height": cfg.height, "width": cfg.width}
    length, vocab = config.text.max_tokens, model.text_encoder.word_embeddings.num_embeddings
    sentences = min(4, config.text.max_sentences)
    slots = (sentences, max(1, sentences - 1))  # traced, parity

    def frames(batch: int, seed: int) -> torch.Tensor:
        return torch.randn(batch, *size[:1], 3, *size[1:], generator=torch.Generator().manual_seed(seed))

    text_axes = {"input_ids": {0: "batch", 1: "sentences"}, "attention_mask": {0: "batch", 1: "sentences"}}
    if model.projections is not None:
        local = model.projections.clip is not None  # stage 1 and 2: clip and sentence embeddings too
        return [
            GraphSpec("video", VIDEO_FILE, _video, ["frames"], ["video", "clips"][: 1 + local],
                      {"frames": {0: "batch"}, "video": {0: "batch"}, "clips": {0: "batch"}},
                      lambda b, v, s: (frames(b, s),), fixed),
            GraphSpec("text", TEXT_FILE, _text, ["input_ids", "attention_mask"], ["paragraph", "sentences"][: 1 + local],
                      {**text_axes, "paragraph": {0: "batch"}, "sentences": {0: "batch", 1: "sentences"}},
                      lambda b, v, s: _sample_text((b, slots[v]), length, vocab, s)),
        ]
    if config.fusion is not None and cfg.frames > config.fusion.max_frames:
        raise ExportError(f"config key 'frames': {cfg.frames} frames exceed the QA model's {config.fusion.max_frames} (its temporal embedding)")
    if model.multiple_choice_head is not None:
        candidates = (4, 3)
        qa_axes = {"input_ids": {0: "batch", 1: "candidates", 2: "sentences"}, "attention_mask": {0: "batch", 1: "candidates", 2: "sentences"}}
        return [GraphSpec(
            "multiple_choice", QA_FILE, _multiple_choice, ["frames", "input_ids", "attention_mask"], ["choice_logits", "span_logits"],
            {"frames": {0: "batch"}, **qa_axes, "choice_logits": {0: "batch", 1: "candidates"}, "span_logits": {0: "batch"}},
            lambda b, v, s: (frames(b, s), *_sample_text((b, candidates[v], slots[v]), length, vocab, s + 1)), fixed,
        )]
    if model.classification_head is not None:
        return [GraphSpec(
            "classification", QA_FILE, _classification, ["frames", "input_ids", "attention_mask"], ["logits"],
            {"frames": {0: "batch"}, **text_axes, "logits": {0: "batch"}},
            lambda b, v, s: (frames(b, s), *_sample_text((b, slots[v]), length, vocab, s + 1)), fixed,
        )]
    raise ExportError("this model has neither contrastive projections nor a QA head: nothing to export")


def _export(module: torch.nn.Module, args: tuple, path: Path, spec: GraphSpec, opset: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(
            module, args, str(path), dynamo=False, input_names=spec.inputs, output_names=spec.outputs,
            dynamic_axes={k: v for k, v in spec.dynamic.items() if k in spec.inputs + spec.outputs}, opset_version=opset,
        )


def _set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = f"lfvila.{key}", value if isinstance(value, str) else json.dumps(value)
    onnx.save(graph, str(path))


def _ranks(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Per text, the videos ordered by similarity (ties by index): the ranking to preserve."""
    return np.argsort(-(text.astype(np.float64) @ video.astype(np.float64).T), axis=1, kind="stable")


def quantize_int8(source: Path, target: Path) -> None:
    """The fp32 graph ``source`` with dynamic int8 quantization, into ``target``
    (docs/engineering.md §8): the weights of every MatMul with a constant weight in int8
    (symmetric, one scale per output channel), its input quantized to uint8 at run time (per
    tensor, from the tensor's own range: no calibration data). The patch embedding's Conv, the
    attention's activation × activation MatMuls, the projections' Gemm, LayerNorm and Softmax
    stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic advises pre-processing on the root logger; symbolic shape inference, the
    # heart of it, cannot complete on these graphs (§8), and ONNX Runtime fuses at load anyway.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=False, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ExportError(f"{Path(source).name}: int8 quantization failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    finally:
        logging.disable(previous)


def _cosine_deviation(got: np.ndarray, ref: np.ndarray) -> float:
    """The largest 1 − cos between matching rows of two embedding arrays (..., D): rows zero in
    both agree; a NaN or inf anywhere is inf (a failure, not a comparison that is False)."""
    got, ref = got.reshape(-1, got.shape[-1]).astype(np.float64), ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    both_zero = ~got.any(axis=1) & ~ref.any(axis=1)
    cos = np.where(both_zero, 1.0, (got * ref).sum(axis=1) / np.maximum(norms, 1e-30))
    return float((1.0 - cos).max())


def int8_parity(got: dict[str, dict[str, np.ndarray]], ref: dict[str, dict[str, np.ndarray]], tolerance: float) -> dict[str, Any]:
    """int8 encoders' outputs ``got`` judged against the fp32 graphs' ``ref`` on the same batch
    (``{"video": {"video": …, "clips": …}, "text": {"paragraph": …, "sentences": …}}``): the
    largest 1 − cos of each output must be at most ``tolerance``, and the text→video top-1 of at
    least ``INT8_MIN_AGREEMENT`` of the paragraphs the fp32 one. Returns the figures; a failure is
    a one-line ``ExportError`` naming what failed."""
    deviation = {name: _cosine_deviation(value, ref[graph][name]) for graph, outs in got.items() for name, value in outs.items()}
    top1 = _ranks(got["text"]["paragraph"], got["video"]["video"])[:, 0]
    top1_ref = _ranks(ref["text"]["paragraph"], ref["video"]["video"])[:, 0]
    batch, agreeing = len(top1_ref), int((top1 == top1_ref).sum())
    worst = max(deviation, key=deviation.get)
    failed = []
    if not deviation[worst] <= tolerance:
        failed.append(f"max 1 − cos of {worst} is {deviation[worst]:.2e} (tolerance {tolerance:.0e})")
    if agreeing < INT8_MIN_AGREEMENT * batch:
        failed.append(f"text→video top-1 agreement is {agreeing}/{batch} (at least {INT8_MIN_AGREEMENT:.0%} needed)")
    if failed:
        raise ExportError("int8 parity against the fp32 graphs failed: " + ", and ".join(failed))
    return {"batch": batch, "cosine_deviation": deviation, "tolerance": tolerance, "top1_agreeing": agreeing,
            "min_top1_agreement": INT8_MIN_AGREEMENT, "scheme": "dynamic: int8 per-channel MatMul weights, uint8 activations at run time"}


def _quantize_encoders(specs: list[GraphSpec], fp32_dir: Path, out_dir: Path, metadata_of: dict[str, dict], tolerance: float) -> dict[str, Any]:
    """The checked fp32 encoders of ``fp32_dir`` quantized into ``out_dir`` (same file names, the
    metadata saying int8), then run beside them on ``INT8_BATCH`` parity-shaped inputs and judged
    by ``int8_parity``."""
    got: dict[str, dict[str, np.ndarray]] = {}
    ref: dict[str, dict[str, np.ndarray]] = {}
    for spec in specs:
        target = out_dir / spec.file
        quantize_int8(fp32_dir / spec.file, target)
        _set_metadata(target, metadata_of[spec.name])
        feeds = {n: a.numpy() for n, a in zip(spec.inputs, spec.sample(INT8_BATCH, 1, 200))}
        got[spec.name] = dict(zip(spec.outputs, create_session(target, spec.name, device="cpu").run(spec.outputs, feeds)))
        ref[spec.name] = dict(zip(spec.outputs, create_session(fp32_dir / spec.file, spec.name, device="cpu").run(spec.outputs, feeds)))
    return int8_parity(got, ref, tolerance)


def _find_answers(model_dir: Path, depth: int = 4) -> Optional[Path]:
    """The ``answers.json`` of the prepare artifact a classification model was trained from,
    found by following the artifacts' recorded inputs (finetune -> cache -> prepare)."""
    from .data.formats.anetqa import ANSWERS_FILE as PREPARED

    seen, frontier = set(), [model_dir]
    for _ in range(depth):
        nxt = []
        for path in frontier:
            if (path / PREPARED).is_file():
                return path / PREPARED
            try:
                manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            for parent in (manifest.get("input_paths") or {}).values():
                if parent not in seen:
                    seen.add(parent)
                    nxt.append(Path(parent))
        frontier = nxt
    return None


def export_onnx(model_dir: Path, out_dir: Path, cfg) -> dict[str, Any]:
    """Export and parity-check the graphs of the model in ``model_dir`` into ``out_dir``; ``cfg``:
    the export stage's config (``stages.export.ExportConfig``)."""
    from .data.loader_config import trained_loader_config
    from .model.pretrained import TOKENIZER_DIR, load_pretrained
    from .pipeline.artifacts import read_stage_config

    unset = [name for name in ("frames", "height", "width") if not getattr(cfg, name)]
    if unset:
        raise ExportError(f"config key '{unset[0]}': 0 (as the model was trained) is resolved by the export stage; give frames, height and width")
    model = load_pretrained(model_dir).eval()
    config = model.config
    k = config.video.frames_per_clip
    if cfg.frames % k:
        raise ExportError(f"config key 'frames': {cfg.frames} is not a whole number of {k}-frame clips")
    specs = graph_specs(model, cfg)
    int8 = cfg.precision == "int8"
    if int8 and specs[0].name != "video":
        raise ExportError("config key 'precision': int8 quantizes the encoders of a contrastive model; export a QA model in fp32 or fp16")
    exported = copy.deepcopy(model).half() if cfg.precision == "fp16" else model
    out_dir.mkdir(parents=True, exist_ok=True)
    # int8: the fp32 graphs, its reference, are exported and checked in a scratch folder first
    # (removed once quantized; the runner removes the whole folder of a failed export)
    graph_dir = out_dir / ".fp32" if int8 else out_dir
    graph_dir.mkdir(exist_ok=True)
    versions = _versions()
    training = read_stage_config(model_dir)
    trained = trained_loader_config(training)  # the normalisation the model was trained with
    task = training.get("task")
    preprocessing = {
        "frames": cfg.frames, "frames_per_clip": k, "height": cfg.height, "width": cfg.width,
        "channel_order": "RGB", "layout": "B,T,3,H,W",
        "image_mean": list(trained.image_mean), "image_std": list(trained.image_std),
        "max_sentences": config.text.max_sentences, "max_tokens": config.text.max_tokens, "tokenizer": TOKENIZER_DIR,
    }
    summary: dict[str, Any] = {"preprocessing": preprocessing, "versions": versions, "opset": cfg.opset, "precision": cfg.precision, "graphs": {}}
    if task:
        summary["task"] = task
    answers = None
    if specs[0].name == "classification" and task in ("anet-qa", "classification"):
        from .tasks import read_answers

        # anet-qa always has an answer vocabulary; a generic classification corpus has one when its
        # items gave their answers as text (else its classes are bare labels).
        found = _find_answers(model_dir)
        if found is None and task == "anet-qa":
            raise ExportError(f"{model_dir}: an ActivityNet-QA model, but the answers.json of its prepare artifact was not found")
        answers = read_answers(found.parent) if found is not None else None
    if answers is not None:
        if len(answers) != config.heads.num_labels:
            raise ExportError(f"{found}: {len(answers)} answers for a classifier of {config.heads.num_labels} classes")

    started = time.perf_counter()
    outputs: dict[str, dict[str, np.ndarray]] = {}
    references: dict[str, dict[str, np.ndarray]] = {}
    diffs: dict[str, float] = {}
    metadata_of: dict[str, dict[str, Any]] = {}
    for spec in specs:
        path = graph_dir / spec.file
        try:
            _export(_Graph(exported, spec.run).eval(), spec.sample(TRACE_BATCH, 0, 0), path, spec, cfg.opset)
        except Exception as exc:
            raise ExportError(f"{spec.name} graph: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        metadata = metadata_of[spec.name] = {"graph": spec.name, "preprocessing": preprocessing, "versions": versions, "precision": cfg.precision}
        if spec.fixed:
            metadata["fixed"] = spec.fixed
        if task:
            metadata["task"] = task
        _set_metadata(path, {**metadata, "precision": "fp32"} if int8 else metadata)
        # parity on a batch size and sentence / candidate count other than the traced ones
        args = spec.sample(PARITY_BATCH, 1, 100)
        with torch.no_grad():
            ref = _Graph(model, spec.run)(*args)
        # on the CPU, beside the PyTorch reference: the check is about the graph, not the device
        got = create_session(path, spec.name, device="cpu").run(spec.outputs, {n: a.numpy() for n, a in zip(spec.inputs, args)})
        outputs[spec.name] = dict(zip(spec.outputs, got))
        references[spec.name] = {n: r.numpy() for n, r in zip(spec.outputs, ref)}
        for name in spec.outputs:
            got_out = outputs[spec.name][name]
            # a NaN or inf output is a failure, not a difference that compares False with the tolerance
            diffs[name] = float(np.abs(got_out - references[spec.name][name]).max()) if np.isfinite(got_out).all() else float("inf")
        summary["graphs"][spec.name] = {"file": spec.file, "inputs": spec.inputs, "outputs": spec.outputs,
                                        "dynamic": sorted({a for k, axes in spec.dynamic.items() if k in spec.inputs for a in axes.values()}), "fixed": spec.fixed}
    export_s = time.perf_counter() - started

    if "video" in outputs:  # the retrieval ranking of the sample
        agree = bool((_ranks(outputs["text"]["paragraph"], outputs["video"]["video"])
                      == _ranks(references["text"]["paragraph"], references["video"]["video"])).all())
        check_name = "same_ranking"
    else:  # the predicted answers
        name, logits = specs[0].name, specs[0].outputs[0]
        agree = bool((outputs[name][logits].argmax(-1) == references[name][logits].argmax(-1)).all())
        check_name = "same_predictions"
    # int8's tolerance is its own check's (int8_parity); its fp32 graphs meet fp32's
    tolerance = cfg.graph_max_diff
    summary["parity"] = {"batch": PARITY_BATCH, "traced_batch": TRACE_BATCH, "max_abs_diff": diffs, "tolerance": tolerance, check_name: agree}
    summary["export_seconds"] = round(export_s, 2)
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= tolerance or not agree:
        raise ExportError(
            f"ONNX parity failed ({'fp32, the int8 reference' if int8 else cfg.precision}): max |onnx - torch| of {worst} is {diffs[worst]:.2e} (tolerance {tolerance:.0e})"
            + ("" if agree else (", and the retrieval ranking of the sample differs" if "video" in outputs else ", and the predicted answers differ"))
        )
    if int8:
        summary["int8"] = _quantize_encoders(specs, graph_dir, out_dir, metadata_of, cfg.max_diff)
        shutil.rmtree(graph_dir)
    shutil.copytree(model_dir / TOKENIZER_DIR, out_dir / TOKENIZER_DIR, dirs_exist_ok=True)
    if answers is not None:
        (out_dir / ANSWERS_FILE).write_text(json.dumps(answers, ensure_ascii=False) + "\n", encoding="utf-8")
        summary["answers"] = ANSWERS_FILE
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
