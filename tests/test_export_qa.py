"""ONNX export of the QA models (not in int8), fp16 export, and the batched ONNX Runtime graph (I/O binding)."""

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
    graph = OnnxGraph(tmp_path / "out" / QA_FILE, "multiple_choice", device="cpu", max_batch=4)
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
    (logits,) = OnnxGraph(tmp_path / "out" / QA_FILE, "classification", device="cpu")(frames=frames.numpy(), input_ids=ids.numpy(), attention_mask=mask.numpy())
    with torch.no_grad():
        ref = model(frames, ids, mask).logits.numpy()
    assert logits.shape == (4, 3) and np.abs(logits - ref).max() < 1e-4


def test_qa_frame_count_is_bounded_by_the_temporal_embedding(tmp_path):
    model_dir = _model_dir(tmp_path, "qa-multichoice")
    with pytest.raises(ExportError, match="40 frames exceed the QA model's 32"):
        export_onnx(model_dir, tmp_path / "out", ExportConfig(model="finetune", frames=40, height=64, width=96))


def test_int8_is_refused_for_a_qa_model_before_anything_is_written(tmp_path):
    model_dir = _model_dir(tmp_path, "qa-multichoice", task="how2qa")
    with pytest.raises(ExportError, match="^config key 'precision': int8 quantizes the encoders of a contrastive model; export a QA model in fp32 or fp16$"):
        export_onnx(model_dir, tmp_path / "out", ExportConfig(model="finetune", precision="int8", **SIZE))
    assert not (tmp_path / "out").exists()


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
    graph = OnnxGraph(tmp_path / "out" / VIDEO_FILE, "video", device="cpu", max_batch=2)
    frames = np.random.default_rng(0).standard_normal((5, SIZE["frames"], 3, SIZE["height"], SIZE["width"])).astype(np.float32)
    whole = graph.session.run(None, {"frames": frames})
    for binding in (False, True):
        got = graph(frames=frames, io_binding=binding)
        assert [g.shape for g in got] == [w.shape for w in whole]
        assert all(np.abs(g - w).max() < 1e-5 for g, w in zip(got, whole))
    with pytest.raises(ValueError, match=r"missing \['frames'\], unexpected \['video'\]"):
        graph(video=frames)
    text = OnnxGraph(tmp_path / "out" / TEXT_FILE, "text", device="cpu")
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


# ------------------------------------------------ the device: which provider, and when to warn


def _tiny_graph(path):
    """A one-node graph (y = x + x) with the lfvila metadata of a video encoder."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["frames", "frames"], ["video"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {"lfvila.graph": json.dumps("video")})
    onnx.save(model, str(path))
    return path


class _Session:
    """A real CPU session that reports the providers a test wants (CUDA started, or fell back)."""

    def __init__(self, session, providers):
        self._session, self._providers = session, providers

    def get_providers(self):
        return self._providers

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture
def fake_ort(monkeypatch):
    """ONNX Runtime as on a machine with onnxruntime-gpu: CUDA listed; ``state["cuda_runs"]``
    says whether a session asked for CUDA gets it. Records the providers each session was asked for."""
    import onnxruntime as ort

    from lfvila_cli import runtime

    state = {"cuda_runs": False, "asked": [], "gpu": False}
    real = runtime._quiet_session

    def session(model, providers):
        state["asked"].append(providers)
        cuda = providers[0][0] == runtime.CUDA and state["cuda_runs"]
        return _Session(real(model, [runtime.CPU]), [runtime.CUDA, runtime.CPU] if cuda else [runtime.CPU])

    monkeypatch.setattr(runtime, "_quiet_session", session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(runtime, "gpu_present", lambda: state["gpu"])
    monkeypatch.setattr(runtime, "_warned_fallback", False)
    return state


def _levels(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "lfvila_cli.runtime"]


def test_auto_falls_back_to_the_cpu_quietly_without_a_gpu(tmp_path, fake_ort, caplog):
    """onnxruntime-gpu on a CPU-only machine: CUDA is tried, the CPU runs, and nothing above INFO
    is logged however many sessions (every `lfvila search` used to warn)."""
    path = _tiny_graph(tmp_path / "g.onnx")
    with caplog.at_level("INFO", logger="lfvila_cli.runtime"):
        graphs = [OnnxGraph(path, "video") for _ in range(2)]
    assert all(g.device == "cpu" for g in graphs)
    assert fake_ort["asked"][0][0] == ("CUDAExecutionProvider", {"device_id": "0"})
    assert [level for level, _ in _levels(caplog)] == ["INFO", "INFO"] and "no usable GPU" in _levels(caplog)[0][1]
    (out,) = graphs[0](frames=np.ones((3, 2), np.float32))
    assert np.array_equal(out, np.full((3, 2), 2.0, np.float32))


def test_auto_warns_once_when_a_gpu_is_present_but_cuda_does_not_run(tmp_path, fake_ort, caplog):
    fake_ort["gpu"] = True
    path = _tiny_graph(tmp_path / "g.onnx")
    with caplog.at_level("INFO", logger="lfvila_cli.runtime"):
        OnnxGraph(path, "video")
        OnnxGraph(path, "video")
    levels = _levels(caplog)
    assert [level for level, _ in levels] == ["WARNING", "INFO"], levels
    assert "a GPU is present but the CUDA provider cannot start" in levels[0][1] and "lfvila env" in levels[0][1]


def test_cuda_asked_for_is_required_and_cpu_never_tries_it(tmp_path, fake_ort, caplog):
    from lfvila_cli.errors import ConfigError
    from lfvila_cli.runtime import DeviceError

    path = _tiny_graph(tmp_path / "g.onnx")
    with pytest.raises(DeviceError, match=r"^device 'cuda': ONNX Runtime's CUDA provider \(built for CUDA .*\) cannot start: no NVIDIA GPU") as err:
        OnnxGraph(path, "video", device="cuda")
    assert "\n" not in str(err.value)
    with caplog.at_level("INFO", logger="lfvila_cli.runtime"):
        assert OnnxGraph(path, "video", device="cpu").device == "cpu"
    assert fake_ort["asked"][-1] == ["CPUExecutionProvider"] and [lv for lv, _ in _levels(caplog)] == ["INFO"]
    fake_ort["cuda_runs"] = True
    graph = OnnxGraph(path, "video", device="cuda:1")
    assert (graph.device, graph.device_id) == ("cuda", 1) and fake_ort["asked"][-1][0] == ("CUDAExecutionProvider", {"device_id": "1"})
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
            OnnxGraph(path, "video", device=bad)


def test_cuda_without_the_gpu_package_is_a_one_line_error(tmp_path, monkeypatch):
    import onnxruntime as ort

    from lfvila_cli.runtime import DeviceError

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceError, match="has no CUDA provider \\(install onnxruntime-gpu"):
        OnnxGraph(_tiny_graph(tmp_path / "g.onnx"), "video", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_on_this_machine_is_refused_not_run_on_the_cpu(tmp_path):
    """No fakes: onnxruntime-gpu lists CUDA here, and a session asked for it would run on the CPU."""
    from lfvila_cli.runtime import DeviceError, cuda_provider_runs

    runs, detail = cuda_provider_runs()
    assert not runs and ("fell back to CPUExecutionProvider" in detail or "no CUDA provider" in detail)
    with pytest.raises(DeviceError, match="^device 'cuda'"):
        OnnxGraph(_tiny_graph(tmp_path / "g.onnx"), "video", device="cuda")
