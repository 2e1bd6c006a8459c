"""Inference precision (lfvila_cli/model/precision.py): what auto resolves to, bf16 embeddings
and answers against the fp32 reference, and the keys of the stages that take a precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfvila_cli.errors import ConfigError
from lfvila_cli.model import precision as prec
from test_pretrained import inputs, tiny_model

CPU = torch.device("cpu")

# bf16 keeps 8 bits of mantissa: one product is good to ~0.4 %, and a unit embedding through the
# tiny model's layers stays within this cosine of its fp32 reference (measured: >= 0.999).
COSINE_FLOOR = 0.995


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(prec, "native_bf16", lambda device: native)
    assert prec.resolve_precision("auto", CPU) == expected
    assert prec.resolve_precision("bf16", CPU) == "bf16" and prec.resolve_precision("fp32", CPU) == "fp32"
    with prec.autocast("auto", CPU):
        assert torch.is_autocast_enabled("cpu") == native
    with prec.autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_a_wrong_precision_is_a_one_line_error_naming_the_key():
    from lfvila_cli.report import EvaluateConfig
    from lfvila_cli.search import IndexConfig
    from lfvila_cli.train.config import FinetuneConfig, PretrainConfig

    with pytest.raises(ConfigError, match="config key 'precision': expected auto, bf16 or fp32, got 'fp16'"):
        EvaluateConfig(precision="fp16")
    with pytest.raises(ConfigError, match="config key 'val_precision'"):
        PretrainConfig(val_precision="half")
    with pytest.raises(ConfigError, match="config key 'val_precision'"):
        FinetuneConfig(val_precision="")
    with pytest.raises(ConfigError, match="config key 'precision': bf16 is for engine torch"):
        IndexConfig(engine="onnx", precision="bf16")
    IndexConfig(engine="onnx", precision="auto")  # the default works with either engine


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.parametrize("variant", ["stage1", "qa-multichoice"])
def test_bf16_outputs_stay_close_to_the_fp32_reference(variant):
    """bf16 autocast against fp32 on the same weights: embeddings within COSINE_FLOOR and unit
    norm to float32 rounding; QA logits pick the same answer with answer probabilities within
    0.05 (random weights through 12 fused layers: logits drift by up to ~10 % of their range)."""
    model = tiny_model(variant)
    frames, ids, mask = inputs(model, seed=3)
    frames = torch.cat([frames, inputs(model, seed=4)[0]])
    ids, mask = ids.expand(2, *ids.shape[1:]), mask.expand(2, *mask.shape[1:])
    out = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), prec.autocast(precision, CPU):
            if variant == "stage1":
                video, text = model.encode_video(frames), model.encode_text(ids, mask)
                out[precision] = (video.global_embedding, video.clip_embeddings, text.paragraph_embedding)
            else:
                out[precision] = (model(frames, ids, mask).choice_logits,)
    if variant == "stage1":
        for ref, low in zip(out["fp32"], out["bf16"]):
            assert low.dtype == torch.float32  # the projection heads normalise in float32
            assert torch.allclose(low.norm(dim=-1), torch.ones(()), atol=1e-5)
            assert _cosines(ref, low).min() >= COSINE_FLOOR
            assert not torch.equal(ref, low)  # bf16 really ran
    else:
        ref, low = out["fp32"][0], out["bf16"][0].float()
        assert torch.equal(ref.argmax(-1), low.argmax(-1))
        assert (ref.softmax(-1) - low.softmax(-1)).abs().max() < 0.05


def test_evaluate_and_index_keys_leave_out_fp32():
    """fp32, what every evaluation and index ran at before the key existed, keeps their keys;
    auto and bf16 are keys of their own; ONNX indexes ignore the precision."""
    from lfvila_cli.report import EvaluateConfig
    from lfvila_cli.search import IndexConfig
    from lfvila_cli.stages import evaluate, index

    assert "precision" not in evaluate.STAGE.keyed_config(EvaluateConfig(precision="fp32"))
    assert evaluate.STAGE.keyed_config(EvaluateConfig())["precision"] == "auto"
    assert "precision" not in index.STAGE.keyed_config(IndexConfig(engine="torch", precision="fp32"))
    assert index.STAGE.keyed_config(IndexConfig(engine="torch", precision="bf16"))["precision"] == "bf16"
    assert "precision" not in index.STAGE.keyed_config(IndexConfig(engine="onnx"))


def test_validation_precision_is_keyed_only_where_it_changes_validation():
    from lfvila_cli.stages import finetune, pretrain
    from lfvila_cli.train.config import FinetuneConfig, PretrainConfig, TrainConfig

    fp32, bf16 = TrainConfig(precision="fp32"), TrainConfig(precision="bf16")
    for stage, config in ((pretrain.STAGE1, PretrainConfig), (finetune.STAGE, FinetuneConfig)):
        assert stage.keyed_config(config(train=fp32))["val_precision"] == "auto"
        assert "val_precision" not in stage.keyed_config(config(train=fp32, val_precision="fp32"))
        assert "val_precision" not in stage.keyed_config(config(train=bf16))  # bf16 weights validate in bf16 anyway


def test_the_api_and_the_search_encoder_take_a_precision(tmp_path):
    import lfvila_cli
    from helpers_video import synthetic_frames
    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer
    from lfvila_cli.model.pretrained import save_pretrained
    from lfvila_cli.search import Encoder
    from test_api import PRE

    model = tiny_model("stage1")
    save_pretrained(model, model.config, tmp_path, preprocessing=PRE)
    train_wordpiece_tokenizer(["the red circle grows", "it spins"], 60, tmp_path / "tokenizer")
    frames = np.stack([synthetic_frames(16, seed=s) for s in range(2)])
    videos = {}
    for precision in ("fp32", "bf16"):
        api = lfvila_cli.load(tmp_path, device="cpu", precision=precision)
        encoder = Encoder("torch", tmp_path, device="cpu", precision=precision)
        assert api.precision == encoder.precision == precision
        videos[precision] = api.encode_videos(list(frames)).video
        assert np.allclose(videos[precision], encoder.videos(frames)[0], atol=1e-5)
    assert not np.array_equal(videos["fp32"], videos["bf16"])
    assert (np.sum(videos["fp32"] * videos["bf16"], axis=1) >= COSINE_FLOOR).all()
