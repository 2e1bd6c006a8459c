"""Pre-training stages 1 and 2 on a tiny example corpus, the finished-model files and the
validation metrics (lfvila_cli.train.pretrain, lfvila_cli.evaluation)."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.example import ExampleConfig
from lfvila_cli.data.loader import PretrainDataset
from lfvila_cli.data.loader_config import LoaderConfig
from lfvila_cli.data.prepare import PrepareConfig, prepare
from lfvila_cli.evaluation import (
    embed_dataset,
    evaluate_stage1,
    paragraph_to_video_retrieval,
    retrieval_ranks,
    temporal_order_accuracy,
)
from lfvila_cli.errors import ConfigError, LfvilaError
from lfvila_cli.train.config import TrainConfig
from lfvila_cli.model.pretrained import load_pretrained, load_weights, save_weights
from lfvila_cli.plots import plot_curves
from lfvila_cli.train.pretrain import PretrainConfig, run_pretrain

# The tiny preset's frames: 8 per clip at 64×96 (4 clips → 32 frames).
K, H, W = 8, 64, 96


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    w, h = struct.unpack(">II", data[16:24])
    assert zlib.crc32(data[12:29]) & 0xFFFFFFFF == struct.unpack(">I", data[29:33])[0]
    return w, h


# --------------------------------------------------------------------------- metrics


def _brute_force(video: torch.Tensor, text: torch.Tensor) -> dict:
    n = video.shape[0]
    ranks = []
    for i in range(n):
        own = float(text[i] @ video[i])
        ranks.append(1 + sum(1 for j in range(n) if j != i and float(text[i] @ video[j]) >= own))
    ranks = np.array(ranks)
    return {"R@1": float((ranks <= 1).mean()), "R@5": float((ranks <= 5).mean()), "R@10": float((ranks <= 10).mean()), "MedR": float(np.median(ranks))}


def test_retrieval_perfect_and_reversed():
    eye = torch.eye(12)
    assert paragraph_to_video_retrieval(eye, eye) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MedR": 1.0}
    # text i most similar to video 11-i... and least to its own: the true video always ranks last.
    n = 12
    video = torch.eye(n)
    text = 1.0 - torch.eye(n)  # every other video scores 1, the own one 0
    out = paragraph_to_video_retrieval(video, text)
    assert out["R@1"] == 0.0 and out["R@10"] == 0.0 and out["MedR"] == n
    # constant embeddings: pessimistic ties, never a perfect score
    const = torch.ones(5, 3)
    assert paragraph_to_video_retrieval(const, const)["MedR"] == 5


def test_retrieval_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for n in (3, 11, 24):
        video = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
        text = torch.nn.functional.normalize(video + 0.8 * torch.randn(n, 8, generator=g), dim=1)
        got = paragraph_to_video_retrieval(video, text)
        want = _brute_force(video, text)
        for k in want:
            assert got[k] == pytest.approx(want[k]), (n, k)
    with pytest.raises(ValueError):
        retrieval_ranks(torch.zeros(3, 4), torch.zeros(4, 4))


def test_temporal_order_accuracy_brute_force():
    g = torch.Generator().manual_seed(1)
    ids = ["a", "a-r", "b", "b-r", "c"]  # c has no twin in the set
    twins = {"a": "a-r", "a-r": "a", "b": "b-r", "b-r": "b", "c": "c-r"}
    video = torch.randn(5, 6, generator=g)
    text = torch.randn(5, 6, generator=g)
    sim = text @ video.t()
    want = np.mean([float(sim[0, 0] > sim[0, 1]), float(sim[1, 1] > sim[1, 0]), float(sim[2, 2] > sim[2, 3]), float(sim[3, 3] > sim[3, 2])])
    got = temporal_order_accuracy(video, text, ids, twins)
    assert got["pairs"] == 4 and got["accuracy"] == pytest.approx(want)
    assert temporal_order_accuracy(torch.eye(5), torch.eye(5), ids, twins)["accuracy"] == 1.0
    assert math.isnan(temporal_order_accuracy(video, text, ids, {})["accuracy"])


def test_loss_plot_has_one_panel_per_finite_series(tmp_path):
    plot_curves({"a": ([1, 2, 3], [3.0, float("nan"), 1.0]), "b": ([1], [0.5]), "c": ([1, 2], [float("nan")] * 2)},
                tmp_path / "p.png", width=200, panel_height=50)
    assert _png_size(tmp_path / "p.png") == (200, 2 * 50 + 50)  # "c" has no finite value: no panel
    plot_curves({}, tmp_path / "empty.png", width=200, panel_height=50)
    assert _png_size(tmp_path / "empty.png") == (200, 50 + 50)


def test_weights_with_shared_tensors_roundtrip(tmp_path):
    shared = torch.randn(3, 4)
    state = {"a.weight": shared, "b.weight": shared, "c": torch.arange(5)}
    aliases = save_weights(state, tmp_path / "w.safetensors")
    assert aliases == {"b.weight": "a.weight"}
    back = load_weights(tmp_path / "w.safetensors")
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The example corpus at tiny sizes (4-clip val videos, so each twin differs by order only),
    cached at the tiny preset's frame size."""
    root = tmp_path_factory.mktemp("pretrain")
    example = ExampleConfig(
        seed=0, train_videos=8, val_videos=3, test_videos=0, min_clips=4, max_clips=5,
        clip_seconds=1.0, fps=8, height=H, width=W, qa_per_video=0,
    )
    corpus_dir = root / "corpus"
    prepare(PrepareConfig(source="example", example=example), corpus_dir)
    store = str(root / "frames.zarr")
    summary = cache_frames(corpus_dir / "samples.jsonl", CacheConfig(frames_per_segment=K, height=H, width=W, workers=1), store, progress=False)
    assert summary["failed"] == 0
    return {"root": root, "corpus": corpus_dir / "samples.jsonl", "store": store}


def _cfg(stage: int, steps: int, **train) -> PretrainConfig:
    return PretrainConfig(
        stage=stage,
        loader=LoaderConfig(max_tokens=16),
        train=TrainConfig(**{"lr": 5e-4, "micro_batch": 4, "epochs": 50, "max_steps": steps, "precision": "fp32", "checkpoint_every": 1000, **train}),
        val_every=2,
        val_batch=8,
    )


@pytest.fixture(scope="module")
def stage1(data):
    out = data["root"] / "stage1"
    summary = run_pretrain(_cfg(1, 4), data["corpus"], data["store"], out, progress=False)
    return out, summary


def test_stage1_writes_a_finished_model(stage1, data):
    out, summary = stage1
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    assert all(math.isfinite(v) for v in summary["final_losses"].values())
    assert set(summary["final_losses"]) == {"vpc", "mtc", "total"}
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss.png", "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt"):
        assert (out / name).is_file(), name
    w, h = _png_size(out / "loss.png")
    assert w > 100 and h > 100
    # no checkpoint selection in pre-training: the final weights, no best-so-far files
    assert not (out / "selection.json").exists() and not (out / "run" / "best.json").exists() and not (out / "run" / "best").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in val] == [2, 4]  # every val_every steps, the end included once
    assert 0.0 <= val[-1]["R@1"] <= 1.0 and val[-1]["num_videos"] == 6
    assert val[-1]["temporal_order_pairs"] == 6 and val[-1]["chance_R@1"] == pytest.approx(1 / 6)
    assert summary["val"]["step"] == 4 and "R@1" in summary["val_untrained"]


def test_stage1_model_reloads_with_identical_embeddings(stage1, data):
    out, _ = stage1
    from lfvila_cli.data.corpus import read_corpus
    from lfvila_cli.data.tokenizer import load_tokenizer

    model = load_pretrained(out)
    again = load_pretrained(out)
    tok = load_tokenizer(out / "tokenizer")
    val = [s for s in read_corpus(data["corpus"]) if s.split == "val"]
    ds = PretrainDataset(val, data["store"], tok, LoaderConfig(max_tokens=16), train=False)
    a, b = embed_dataset(model, ds, 8), embed_dataset(again, ds, 8)
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["text"], b["text"])
    metrics = evaluate_stage1(model, ds, 4)
    saved = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert metrics["R@1"] == pytest.approx(saved["R@1"]) and metrics["MedR"] == pytest.approx(saved["MedR"])


def test_stage2_from_stage1(stage1, data):
    s1_dir, _ = stage1
    out = data["root"] / "stage2"
    s1 = load_weights(s1_dir / "model.safetensors")
    summary = run_pretrain(_cfg(2, 3), data["corpus"], data["store"], out, init_from=s1_dir, progress=False)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert set(summary["final_losses"]) == {"mlm", "vtm", "total"}
    assert all(math.isfinite(v) for v in summary["final_losses"].values())
    assert summary["init_from"]["loaded"] == len(s1) and summary["init_from"]["fresh"] > 0
    assert 0.0 <= summary["val"]["vtm_accuracy"] <= 1.0 and 0.0 <= summary["val"]["mlm_accuracy"] <= 1.0
    s2 = load_weights(out / "model.safetensors")
    model = load_pretrained(out)
    assert model.config.fusion is not None
    trained = set(model.stage_parameter_names("stage2"))
    # every stage-1 tensor that stage 2 does not train (all of stage 1's own parts) is loaded and frozen:
    # equal to the stage-1 file after training
    frozen = [n for n in s1 if n not in trained]
    assert any(n.startswith("video_encoder.") for n in frozen) and any(n.startswith("projections.") for n in frozen)
    for name in frozen:
        assert torch.equal(s2[name], s1[name]), name
    # the heads (and BERT pooler) the stage-1 file carries, unused there, start stage 2 from there and train
    heads = [n for n in s1 if n in trained]
    assert heads and all(n.startswith(("mlm_head.", "vtm_head.", "text_encoder.bert.pooler.")) for n in heads)
    assert any(not torch.equal(s2[n], s1[n]) for n in heads)
    fresh = [n for n in trained if n not in s1]
    assert fresh and all(n in s2 for n in fresh)
    assert (out / "tokenizer" / "vocab.txt").read_text() == (s1_dir / "tokenizer" / "vocab.txt").read_text()
    _png_size(out / "loss.png")


def test_stage2_needs_a_stage1_artifact(data, tmp_path):
    with pytest.raises(ConfigError):
        run_pretrain(_cfg(2, 1), data["corpus"], data["store"], tmp_path / "x", progress=False)
    with pytest.raises(LfvilaError):
        run_pretrain(_cfg(2, 1), data["corpus"], data["store"], tmp_path / "y", init_from=tmp_path, progress=False)


def test_stage1_resume_continues_to_the_same_weights(stage1, data, tmp_path):
    """A run killed after its step-2 checkpoint and resumed ("auto") ends with the weights of
    the uninterrupted run: data order, loss draws and optimizer state all come back."""
    import shutil

    cfg = _cfg(1, 4, checkpoint_every=2, keep_last_k=2)
    cfg.val_every = 0
    cfg.tokenizer = str(stage1[0] / "tokenizer")  # the same ids as the fixture's run (compared below)
    out = tmp_path / "s1"
    run_pretrain(cfg, data["corpus"], data["store"], out, progress=False)
    full = load_weights(out / "model.safetensors")
    shutil.rmtree(out / "run" / "checkpoints" / "step_00000004")  # as if killed before the last save
    for name in ("model.safetensors", "config.json"):
        (out / name).unlink()
    summary = run_pretrain(cfg, data["corpus"], data["store"], out, progress=False, resume="auto")
    assert summary["steps"] == 4 and summary["steps_this_run"] == 2
    resumed = load_weights(out / "model.safetensors")
    for name, tensor in full.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6, rtol=0), name
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # the uninterrupted 4-step run with validation gives the same weights too (validation draws nothing)
    ref = load_weights(stage1[0] / "model.safetensors")
    assert all(torch.allclose(ref[n], full[n], atol=1e-6, rtol=0) for n in full)


def test_stage2_mlm_accuracy_scores_masked_tokens_of_matched_pairs():
    """A model that predicts the original tokens scores 1.0; one that echoes its (masked) input
    scores what masking left unchanged (10% kept), far below 1."""
    from types import SimpleNamespace

    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer
    from lfvila_cli.objectives import ObjectiveConfig
    from lfvila_cli.train.pretrain import stage2_loss

    import tempfile

    tok = train_wordpiece_tokenizer(["the red circle moves left", "a blue square grows"] * 4, 200, tempfile.mkdtemp())
    b, m, length = 8, 2, 12
    enc = tok(["the red circle moves left", "a blue square grows"] * (b * m // 2), padding="max_length", max_length=length, return_tensors="pt")
    batch = {"frames": torch.zeros(b, 2, 3, 4, 4), "input_ids": enc["input_ids"].reshape(b, m, length), "attention_mask": enc["attention_mask"].reshape(b, m, length)}
    vocab = len(tok)
    param = torch.nn.Parameter(torch.zeros(1))
    model = SimpleNamespace(parameters=lambda: iter([param]))

    def answering(tokens):
        def call(frames, ids, mask, video_index=None, mlm_positions=None):
            logits = torch.nn.functional.one_hot(tokens.reshape(b, m * length), vocab).float() + 0 * param
            if mlm_positions is not None:  # as the model: only the scored tokens' rows
                logits = logits[mlm_positions]
            return SimpleNamespace(mlm_logits=logits, vtm_logits=torch.zeros(b, 2) + 0 * param, mlm_positions=mlm_positions)
        return call

    def echo(frames, ids, mask, video_index=None, mlm_positions=None):
        return answering(ids)(frames, ids, mask, mlm_positions=mlm_positions)

    cfg = ObjectiveConfig(mlm_probability=0.5)
    for every in (False, True):  # the head scoring the MLM tokens only, and every token (the reference)
        right = stage2_loss(answering(batch["input_ids"]), model, batch, 7, cfg, tok, with_accuracy=True, score_every_token=every)
        assert right["mlm_count"] > 0 and right["mlm_correct"] == right["mlm_count"]
        echoed = stage2_loss(echo, model, batch, 7, cfg, tok, with_accuracy=True, score_every_token=every)
        assert echoed["mlm_count"] == right["mlm_count"] and echoed["mlm_correct"] < 0.5 * echoed["mlm_count"]


def test_stage2_scoring_only_the_mlm_tokens_matches_scoring_every_token():
    """The MLM head scoring only the masked tokens of matched pairs gives the loss, the MLM
    accuracy and every gradient of the reference that scores every text token."""
    from types import SimpleNamespace

    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.presets import get_preset
    from lfvila_cli.objectives import ObjectiveConfig
    from lfvila_cli.train.pretrain import stage2_loss

    import tempfile

    sentences = ["the red circle moves left", "a blue square grows", "two green dots meet", "the yellow bar fades"]
    tok = train_wordpiece_tokenizer(sentences * 4, 200, tempfile.mkdtemp())
    b, m, length = 4, 4, 12
    enc = tok(sentences * b, padding="max_length", max_length=length, return_tensors="pt")
    video = torch.randn(b, 32, 3, H, W, generator=torch.Generator().manual_seed(0))
    batch = {"frames": video, "input_ids": enc["input_ids"].reshape(b, m, length), "attention_mask": enc["attention_mask"].reshape(b, m, length)}
    torch.manual_seed(0)
    model = build_model(get_preset("lfvila-tiny", "stage2", text_model="random")).train()
    model.set_trainable("stage2")
    cfg = ObjectiveConfig(mlm_probability=0.3)
    runs = []
    for every in (True, False):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout draws in both runs
        terms = stage2_loss(model, model, batch, 3, cfg, tok, with_accuracy=True, score_every_token=every)
        terms["total"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs.append(SimpleNamespace(terms=terms, grads=grads))
    reference, lean = runs
    assert 0 < float(lean.terms["mlm_count"]) < b * m * length / 4  # few tokens scored
    for key in ("mlm", "vtm", "total"):
        torch.testing.assert_close(lean.terms[key], reference.terms[key], msg=key)
    for key in ("mlm_correct", "mlm_count", "vtm_correct"):
        assert float(lean.terms[key]) == float(reference.terms[key]), key
    assert lean.grads.keys() == reference.grads.keys() and any(n.startswith("mlm_head.") for n in lean.grads)
    for name in reference.grads:
        torch.testing.assert_close(lean.grads[name], reference.grads[name], msg=name)
    assert reference.grads["mlm_head.decoder.weight"].abs().sum() > 0


def test_objectives_from_the_config_reach_the_loss_and_the_saved_model(data, tmp_path):
    cfg = _cfg(1, 2)
    cfg.objectives.mtc_weight = 0.0
    cfg.workers = 0
    summary = run_pretrain(cfg, data["corpus"], data["store"], tmp_path / "nomtc", progress=False)
    assert summary["final_losses"]["total"] == pytest.approx(summary["final_losses"]["vpc"])
    assert summary["final_losses"]["mtc"] == 0.0  # weighted by 0: not computed
    saved = json.loads((tmp_path / "nomtc" / "config.json").read_text())
    assert saved["objectives"]["mtc_weight"] == 0.0


def test_pretrain_key_leaves_out_the_loader_workers():
    from lfvila_cli.stages.pretrain import key_config

    one, two = _cfg(1, 2), _cfg(1, 2)
    two.workers = 3
    assert key_config(one) == key_config(two) and "workers" not in key_config(one)
    two.objectives.mtc_weight = 0.0
    assert key_config(one) != key_config(two)


def test_chunked_ranks_equal_the_full_matrix_reference_with_ties():
    from lfvila_cli.evaluation import ranks_chunked, rank_metrics, retrieval_metrics

    g = torch.Generator().manual_seed(3)
    video = torch.randn(37, 6, generator=g, dtype=torch.float64)
    text = video + 0.9 * torch.randn(37, 6, generator=g, dtype=torch.float64)
    video[5] = video[9]  # exact ties: pessimistic in both paths
    text[20] = text[21]
    want = retrieval_ranks(video, text)
    for chunk in (1, 4, 37, 100):
        assert torch.equal(ranks_chunked(text, video, chunk), want), chunk
    # video→text is the same ranking with the roles swapped
    assert torch.equal(ranks_chunked(video, text, 5), retrieval_ranks(text, video))
    both = retrieval_metrics(video.float(), text.float(), chunk=8)
    assert both["text_to_video"]["R@1"] == pytest.approx(float((want == 1).double().mean()))
    assert both["text_to_video"]["MnR"] == pytest.approx(float(want.double().mean()))
    assert set(both["video_to_text"]) == {"R@1", "R@5", "R@10", "R@50", "MedR", "MnR"}
    assert rank_metrics(torch.tensor([1, 2, 3, 50]), ks=(1, 50)) == {"R@1": 0.25, "R@50": 1.0, "MedR": 2.5, "MnR": 14.0}
    with pytest.raises(ValueError):
        ranks_chunked(text, video[:-1])
