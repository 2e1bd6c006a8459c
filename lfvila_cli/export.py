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
    exported = model if cfg.precision == "fp32" else copy.deepcopy(model).half()
    out_dir.mkdir(parents=True, exist_ok=True)
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
    for spec in specs:
        path = out_dir / spec.file
        try:
            _export(_Graph(exported, spec.run).eval(), spec.sample(TRACE_BATCH, 0, 0), path, spec, cfg.opset)
        except Exception as exc:
            raise ExportError(f"{spec.name} graph: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        metadata = {"graph": spec.name, "preprocessing": preprocessing, "versions": versions, "precision": cfg.precision}
        if spec.fixed:
            metadata["fixed"] = spec.fixed
        if task:
            metadata["task"] = task
        _set_metadata(path, metadata)
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
    summary["parity"] = {"batch": PARITY_BATCH, "traced_batch": TRACE_BATCH, "max_abs_diff": diffs, "tolerance": cfg.max_diff, check_name: agree}
    summary["export_seconds"] = round(export_s, 2)
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= cfg.max_diff or not agree:
        raise ExportError(
            f"ONNX parity failed ({cfg.precision}): max |onnx - torch| of {worst} is {diffs[worst]:.2e} (tolerance {cfg.max_diff:.0e})"
            + ("" if agree else (", and the retrieval ranking of the sample differs" if "video" in outputs else ", and the predicted answers differ"))
        )
    shutil.copytree(model_dir / TOKENIZER_DIR, out_dir / TOKENIZER_DIR, dirs_exist_ok=True)
    if answers is not None:
        (out_dir / ANSWERS_FILE).write_text(json.dumps(answers, ensure_ascii=False) + "\n", encoding="utf-8")
        summary["answers"] = ANSWERS_FILE
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
