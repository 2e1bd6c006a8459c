"""ONNX export of the QA models, fp16 export, and the batched ONNX Runtime graph (I/O binding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lfvila_cli.config import to_dict
from lfvila_cli.export import ANSWERS_FILE, QA_FILE, TEXT_FILE, VIDEO_FILE, ExportError, export_onnx
from lfvila_cli.stages.export import ExportConfig
from lfvila_cli.model.lfvila import build_model
from lfvila_cli.model.presets import get_preset
from lfvila_cli.runtime import OnnxGraph, read_metadata
from lfvila_cli.model.pretrained import load_pretrained, save_weights

SIZE = {"frames": 16, "height": 64, "width": 96}


def _model_dir(root, variant: str, num_labels=None, task=None, seed: int = 0):
    """A model artifact as training leaves it (config, weights, tokenizer, stage config)."""
    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer

    torch.manual_seed(seed)
    config = get_preset("lfvila-tiny", variant, num_labels=num_labels)
    model = build_model(config)
    path = root / f"{variant}-{task or 'none'}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(to_dict(config)))
    save_weights(model.state_dict(), path / "model.safetensors")
    train_wordpiece_tokenizer(["a red circle grows", "the blue square moves left", "what happens next"], 60, path / "tokenizer")
    if task:
        (path / "stage_config.json").write_text(json.dumps({"task": task}))
    return path


def _qa_inputs(batch: int, candidates: int | None, sentences: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, SIZE["frames"], 3, SIZE["height"], SIZE["width"], generator=gen)
    shape = (batch, candidates, sentences) if candidates else (batch, sentences)
    ids = torch.randint(5, 500, (*shape, 32), generator=gen)
    mask = torch.zeros_like(ids)
    mask[..., :9] = 1
    return frames, ids * mask, mask


def test_multiple_choice_model_exports_with_dynamic_batch_candidates_and_sentences(tmp_path):
    model_dir = _model_dir(tmp_path, "qa-multichoice", task="how2qa")
    summary = export_onnx(model_dir, tmp_path / "out", ExportConfig(model="finetune", **SIZE))
    assert summary["parity"]["same_predictions"] and max(summary["parity"]["max_abs_diff"].values()) <= 1e-4
    assert summary["task"] == "how2qa" and not (tmp_path / "out" / VIDEO_FILE).exists()
    meta = read_metadata(tmp_path / "out" / QA_FILE)
    assert meta["graph"] == "multiple_choice" and meta["fixed"] == SIZE and meta["task"] == "how2qa"
    model = load_pretrained(model_dir).eval()
    graph = OnnxGraph(tmp_path / "out" / QA_FILE, "multiple_choice", prefer_gpu=False, max_batch=4)
    for batch, candidates, sentences in ((1, 4, 2), (5, 5, 3)):  # traced at 2 × 4 × 4
        frames, ids, mask = _qa_inputs(batch, candidates, sentences, seed=batch)
        choice, span = graph(frames=frames.numpy(), input_ids=ids.numpy(), attention_mask=mask.numpy())
        with torch.no_grad():
            ref = model(frames, ids, mask)
        assert choice.shape == (batch, candidates) and span.shape == (batch, SIZE["frames"], 2)
        assert np.abs(choice - ref.choice_logits.numpy()).max() < 1e-4
        assert np.abs(span - ref.span_logits.numpy()).max() < 1e-4
    from lfvila_cli.errors import ConfigError
    from lfvila_cli.search import Encoder

    with pytest.raises(ConfigError, match="an export of a QA model .* search needs the encoders"):
        Encoder("onnx", tmp_path / "out")


def test_classification_model_exports_with_its_answers(tmp_path):
    model_dir = _model_dir(tmp_path, "qa-classification", num_labels=3, task="anet-qa")
    with pytest.raises(ExportError, match="answers.json of its prepare artifact was not found"):
        export_onnx(model_dir, tmp_path / "none", ExportConfig(model="finetune", **SIZE))
    # finetune -> cache -> prepare, as the artifacts record their inputs
    prepare, cache = tmp_path / "prepare", tmp_path / "cache"
    prepare.mkdir(), cache.mkdir()
    (prepare / "answers.json").write_text(json.dumps(["yes", "no", "two"]))
    (cache / "manifest.json").write_text(json.dumps({"input_paths": {"prepare": str(prepare)}}))
    (model_dir / "manifest.json").write_text(json.dumps({"input_paths": {"cache": str(cache)}}))
    summary = export_onnx(model_dir, tmp_path / "out", ExportConfig(model="finetune", **SIZE))
    assert summary["parity"]["same_predictions"] and json.loads((tmp_path / "out" / ANSWERS_FILE).read_text()) == ["yes", "no", "two"]
    model = load_pretrained(model_dir).eval()
    frames, ids, mask = _qa_inputs(4, None, 2, seed=9)
    (logits,) = OnnxGraph(tmp_path / "out" / QA_FILE, "classification", prefer_gpu=False)(frames=frames.numpy(), input_ids=ids.numpy(), attention_mask=mask.numpy())
    with torch.no_grad():
        ref = model(frames, ids, mask).logits.numpy()
    assert logits.shape == (4, 3) and np.abs(logits - ref).max() < 1e-4


def test_qa_frame_count_is_bounded_by_the_temporal_embedding(tmp_path):
    model_dir = _model_dir(tmp_path, "qa-multichoice")
    with pytest.raises(ExportError, match="40 frames exceed the QA model's 32"):
        export_onnx(model_dir, tmp_path / "out", ExportConfig(model="finetune", frames=40, height=64, width=96))


def test_fp16_export_keeps_float32_io_and_the_ranking(tmp_path):
    model_dir = _model_dir(tmp_path, "stage1")
    summary = export_onnx(model_dir, tmp_path / "out", ExportConfig(precision="fp16", **SIZE))
    parity = summary["parity"]
    assert parity["tolerance"] == 1e-2 and parity["same_ranking"] and max(parity["max_abs_diff"].values()) <= 1e-2
    import onnx

    graph = onnx.load(str(tmp_path / "out" / VIDEO_FILE))
    weights = [t for t in graph.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_metadata(tmp_path / "out" / TEXT_FILE)["precision"] == "fp16"
    fp32 = export_onnx(model_dir, tmp_path / "out32", ExportConfig(**SIZE))
    size16, size32 = (tmp_path / "out" / VIDEO_FILE).stat().st_size, (tmp_path / "out32" / VIDEO_FILE).stat().st_size
    assert size16 < 0.6 * size32, (size16, size32)
    assert fp32["parity"]["tolerance"] == 1e-4


def test_batched_graph_and_io_binding_match_one_plain_run(tmp_path):
    """``OnnxGraph`` in chunks of 2, with and without I/O binding (forced on CPU), equals one
    ``session.run`` over the whole batch; bad inputs are clear errors."""
    model_dir = _model_dir(tmp_path, "stage1")
    export_onnx(model_dir, tmp_path / "out", ExportConfig(**SIZE))
    graph = OnnxGraph(tmp_path / "out" / VIDEO_FILE, "video", prefer_gpu=False, max_batch=2)
    frames = np.random.default_rng(0).standard_normal((5, SIZE["frames"], 3, SIZE["height"], SIZE["width"])).astype(np.float32)
    whole = graph.session.run(None, {"frames": frames})
    for binding in (False, True):
        got = graph(frames=frames, io_binding=binding)
        assert [g.shape for g in got] == [w.shape for w in whole]
        assert all(np.abs(g - w).max() < 1e-5 for g, w in zip(got, whole))
    with pytest.raises(ValueError, match=r"missing \['frames'\], unexpected \['video'\]"):
        graph(video=frames)
    text = OnnxGraph(tmp_path / "out" / TEXT_FILE, "text", prefer_gpu=False)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        text(input_ids=np.zeros((2, 1, 32), np.int64), attention_mask=np.ones((3, 1, 32), np.int64))


def test_adaptive_pool_rewrite_equals_torch():
    from lfvila_cli.model.fusion import adaptive_max_pool

    gen = torch.Generator().manual_seed(0)
    for h, w, out in ((1, 2, (2, 3)), (3, 5, (2, 3)), (7, 4, (3, 3)), (2, 3, (2, 3))):
        x = torch.randn(4, 5, h, w, generator=gen)
        assert torch.equal(adaptive_max_pool(x, out), torch.nn.functional.adaptive_max_pool2d(x, out)), (h, w, out)


def test_parity_fails_on_non_finite_onnx_outputs(tmp_path, monkeypatch):
    """A NaN output compares False with any tolerance: it must fail the export, not pass it."""
    import lfvila_cli.export as export

    real = export.create_session

    class NanSession:
        def __init__(self, inner):
            self.inner = inner

        def run(self, names, feeds):
            return [np.full_like(out, np.nan) for out in self.inner.run(names, feeds)]

    monkeypatch.setattr(export, "create_session", lambda *a, **k: NanSession(real(*a, **k)))
    with pytest.raises(ExportError, match=r"max \|onnx - torch\| of \w+ is inf"):
        export_onnx(_model_dir(tmp_path, "stage1"), tmp_path / "out", ExportConfig(**SIZE))
