"""Stage 2 from cached video features (lfvila_cli.train.features, data.featurestore, the
``features`` stage): parity with the encoder path, resume, rank shards, content addressing and
one-line errors on a bad store."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.corpus import read_split
from lfvila_cli.data.example import ExampleConfig
from lfvila_cli.data.featurestore import FeatureStore
from lfvila_cli.data.loader import PretrainDataset, PretrainFeatureDataset, make_loader
from lfvila_cli.data.loader_config import LoaderConfig
from lfvila_cli.data.prepare import PrepareConfig, prepare
from lfvila_cli.data.tokenizer import load_tokenizer
from lfvila_cli.errors import ConfigError, DataError
from lfvila_cli.pipeline.plan import Planned
from lfvila_cli.train.config import FeaturesConfig, PretrainConfig, TrainConfig
from lfvila_cli.train import features as features_mod
from lfvila_cli.train.features import build_features
from lfvila_cli.train.pretrain import PretrainRecipe, run_pretrain, stage2_loss

K, H, W = 8, 64, 96
LOADER = LoaderConfig(max_tokens=16)  # flip 0.5, random crops: the views differ


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    example = ExampleConfig(
        seed=0, train_videos=6, val_videos=2, test_videos=0, min_clips=4, max_clips=5,
        clip_seconds=1.0, fps=8, height=H, width=W, qa_per_video=0,
    )
    prepare(PrepareConfig(source="example", example=example), root / "corpus")
    store = str(root / "frames.zarr")
    assert cache_frames(root / "corpus" / "samples.jsonl", CacheConfig(frames_per_segment=K, height=H, width=W, workers=1), store, progress=False)["failed"] == 0
    corpus = root / "corpus" / "samples.jsonl"
    stage1 = root / "stage1"
    run_pretrain(_cfg(1, 2), corpus, store, stage1, progress=False)
    return {"root": root, "corpus": corpus, "store": store, "stage1": stage1}


def _cfg(stage: int, steps: int, **kw) -> PretrainConfig:
    return PretrainConfig(
        stage=stage, loader=LOADER, val_every=0, val_batch=8,
        train=TrainConfig(lr=5e-4, micro_batch=4, epochs=50, max_steps=steps, precision="fp32", checkpoint_every=1000), **kw,
    )


def _features(data, out: Path, views: int = 2, **kw) -> dict:
    return build_features(data["corpus"], data["store"], data["stage1"], FeaturesConfig(views=views, loader=LOADER, batch=3), str(out), progress=False, **kw)


@pytest.fixture(scope="module")
def store2(data):
    url = data["root"] / "f2.zarr"
    summary = _features(data, url, views=2)
    return url, summary


def test_store_holds_every_view_in_bf16(store2, data):
    url, summary = store2
    assert summary["samples"] == {"train": 6, "val": 4} and summary["rows"] == {"train": 12, "val": 4}
    t, h, w, c = summary["token_shape"]
    assert t == 4 * K and summary["bytes_per_view"] == t * h * w * c * 2 and summary["bytes_per_sample"] == 2 * summary["bytes_per_view"]
    store = FeatureStore(url)
    a, start_a = store.read("train", 0, 0)
    b, start_b = store.read("train", 0, 1)
    assert a.dtype == torch.bfloat16 and tuple(a.shape) == (t, h, w, c)
    assert not torch.equal(a, b)  # another crop / flip / window: another view


def _stage2_model(data):
    recipe = PretrainRecipe(_cfg(2, 1), data["corpus"], data["store"], data["stage1"])
    recipe.tokenizer = load_tokenizer(data["stage1"] / "tokenizer")
    model = recipe.build_model(recipe.model_config(recipe.tokenizer))
    recipe.set_trainable(model)
    return model.train(), recipe.tokenizer


def test_cached_stage2_loss_equals_the_encoder_path_on_bf16_tokens(store2, data):
    """The parity test: view v of the store is the example of epoch v, and stage 2's losses from
    it equal the encoder path's with the encoder output rounded to bf16 (the same weights, the
    same MLM / VTM draws); views repeat after ``views`` epochs."""
    url, _ = store2
    model, tok = _stage2_model(data)
    objectives = model.config.objectives
    train = read_split(data["corpus"], "train")
    frames_ds = PretrainDataset(train, data["store"], tok, LOADER, train=True)
    feature_ds = PretrainFeatureDataset(train, data["store"], tok, LOADER, True, FeatureStore(url))
    rounding = model.video_encoder.register_forward_hook(
        lambda module, args, out: dataclasses.replace(out, tokens=out.tokens.to(torch.bfloat16).float())
    )
    try:
        for epoch in (0, 1):
            for step, (fb, cb) in enumerate(zip(make_loader(frames_ds, 3, epoch=epoch), make_loader(feature_ds, 3, epoch=epoch))):
                assert torch.equal(fb["input_ids"], cb["input_ids"]) and torch.equal(fb["window_start"], cb["window_start"])
                ref = stage2_loss(model, model, fb, step, objectives, tok)
                got = stage2_loss(model, model, cb, step, objectives, tok)
                for name in ("mlm", "vtm", "total"):
                    assert float(got[name]) == pytest.approx(float(ref[name]), rel=1e-4, abs=1e-6), (epoch, step, name)
    finally:
        rounding.remove()
    # fp32 (the reference as it trains): within bf16's rounding of the tokens
    fb, cb = next(iter(make_loader(frames_ds, 3, epoch=0))), next(iter(make_loader(feature_ds, 3, epoch=0)))
    assert float(stage2_loss(model, model, cb, 0, objectives, tok)["total"]) == pytest.approx(float(stage2_loss(model, model, fb, 0, objectives, tok)["total"]), rel=2e-2)
    assert torch.equal(feature_ds[(2, 0)]["video_tokens"], feature_ds[(0, 0)]["video_tokens"])  # epoch 2 reads view 0 again
    val_ds = PretrainFeatureDataset(read_split(data["corpus"], "val"), data["store"], tok, LOADER, False, FeatureStore(url))
    assert torch.equal(val_ds[(5, 1)]["video_tokens"], val_ds[(0, 1)]["video_tokens"])  # val: one unaugmented view


def test_run_pretrain_from_features_trains_like_the_encoder_path(store2, data):
    url, _ = store2
    runs = {}
    for name, features in (("frames", None), ("cached", str(url))):
        out = data["root"] / f"s2-{name}"
        summary = run_pretrain(_cfg(2, 2), data["corpus"], data["store"], out, init_from=data["stage1"], progress=False, features=features)
        runs[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line)["split"] == "train"]
        assert summary["steps"] == 2 and 0.0 <= summary["val"]["vtm_accuracy"] <= 1.0
    assert runs["cached"][0]["loss/total"] == pytest.approx(runs["frames"][0]["loss/total"], rel=2e-2)
    assert runs["cached"][1]["loss/total"] == pytest.approx(runs["frames"][1]["loss/total"], rel=2e-2)


def test_an_interrupted_build_resumes_to_the_same_store(store2, data, monkeypatch):
    url = data["root"] / "resumed.zarr"
    calls = {"n": 0}
    real = features_mod.tokens_to_bits

    def dies_on_the_third_batch(tokens):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(tokens)

    monkeypatch.setattr(features_mod, "tokens_to_bits", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _features(data, url)
    monkeypatch.setattr(features_mod, "tokens_to_bits", real)
    with pytest.raises(DataError, match="not written"):
        FeatureStore(url)
    summary = _features(data, url)
    assert summary["encoded_this_run"] == 16 - 6  # two batches of three were in before the kill
    ref, got = FeatureStore(store2[0]), FeatureStore(url)
    for split, rows in (("train", 6), ("val", 4)):
        for entry in range(rows):
            for view in range(ref.views_of(split)):
                assert torch.equal(got.read(split, entry, view)[0], ref.read(split, entry, view)[0])


def test_two_ranks_fill_disjoint_rows_of_one_store(store2, data):
    url = data["root"] / "ranks.zarr"
    errors = []

    def rank1():
        try:
            _features(data, url, rank=1, world_size=2)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=rank1)
    thread.start()
    summary = _features(data, url, rank=0, world_size=2)
    thread.join()
    assert not errors and summary["encoded_this_run"] == 8  # rank 0's half of 16 rows
    ref, got = FeatureStore(store2[0]), FeatureStore(url)
    for entry in range(6):
        for view in range(2):
            assert torch.equal(got.read("train", entry, view)[0], ref.read("train", entry, view)[0])


def test_a_missing_damaged_or_foreign_store_is_a_one_line_error(store2, data, tmp_path):
    import shutil

    with pytest.raises(DataError, match="no feature store here"):
        FeatureStore(tmp_path / "nothing.zarr")
    with pytest.raises(DataError, match="not an lfvila feature store"):
        FeatureStore(data["store"])  # a frame store
    broken = tmp_path / "broken.zarr"
    shutil.copytree(store2[0], broken)
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(DataError) as info:
        FeatureStore(broken)
    assert "\n" not in str(info.value)
    shutil.rmtree(broken)
    shutil.copytree(store2[0], broken)
    chunk = next((broken / "train" / "tokens").rglob("c/0/*/*/*/*"))
    chunk.write_bytes(chunk.read_bytes()[:100])  # a truncated row
    store = FeatureStore(broken)
    with pytest.raises(DataError, match="train row 0 is damaged") as info:
        store.read("train", 0, 0)
    assert "\n" not in str(info.value)
    tok = load_tokenizer(data["stage1"] / "tokenizer")
    other = dataclasses.replace(LOADER, flip_prob=0.0)
    with pytest.raises(DataError, match="config key 'loader.flip_prob'"):
        PretrainFeatureDataset(read_split(data["corpus"], "train"), data["store"], tok, other, True, store2[0])


def test_stage2_refuses_features_of_another_model(store2, data, tmp_path):
    other = tmp_path / "other-stage1"
    run_pretrain(_cfg(1, 1, **{}), data["corpus"], data["store"], other, progress=False)
    with pytest.raises(DataError, match="not made from the stage-1 model"):
        run_pretrain(_cfg(2, 1), data["corpus"], data["store"], tmp_path / "s2", init_from=other, progress=False, features=str(store2[0]))
    with pytest.raises(ConfigError, match="features"):
        PretrainConfig(stage=1, features=True)


# --------------------------------------------------------------------------- the stage


class _Artifact:
    def __init__(self, stage: str, key: str, config: dict | None = None):
        self.stage, self.key, self.config, self.manifest = stage, key, config or {}, {"key": key}


def test_the_key_follows_the_stage1_model_and_the_frame_store():
    from lfvila_cli.pipeline.artifacts import compute_key
    from lfvila_cli.stages import get_stage

    stage, cfg = get_stage("features"), FeaturesConfig(views=4)

    def key(cache: str, model: str, config=cfg) -> str:
        return compute_key(stage.key_payload(config, {"cache": _Artifact("cache", cache), "pretrain1": _Artifact("pretrain1", model)}))

    base = key("c1", "m1")
    assert key("c1", "m1") == base
    assert key("c2", "m1") != base and key("c1", "m2") != base
    assert key("c1", "m1", dataclasses.replace(cfg, views=2)) != base
    assert key("c1", "m1", dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, flip_prob=0.0))) != base
    # policy, and what shapes the text only: the same tokens
    assert key("c1", "m1", dataclasses.replace(cfg, batch=32, device="cpu")) == base
    assert key("c1", "m1", dataclasses.replace(cfg, loader=dataclasses.replace(cfg.loader, max_tokens=48))) == base


def test_pretrain2_takes_features_only_when_asked_and_checks_them():
    from lfvila_cli.config import to_dict
    from lfvila_cli.stages import get_stage
    from lfvila_cli.stages.pretrain import key_config

    stage = get_stage("pretrain2")
    off, on = PretrainConfig(stage=2), PretrainConfig(stage=2, features=True)
    assert stage.input_names(off) == ("cache", "pretrain1") and stage.input_names(on) == ("cache", "pretrain1", "features")
    assert "features" not in key_config(off) and key_config(on)["features"] is True  # keys made before the option stay valid

    cache, model = Planned("cache", {"segment_mode": "clips", "frames_per_segment": 8}, entry=1), Planned("pretrain1", {}, entry=2)
    loader = to_dict(on.loader)
    feats = Planned("features", {"loader": {**loader}}, inputs={"cache": cache, "pretrain1": model}, entry=3)
    stage.check(on, {"cache": cache, "pretrain1": model, "features": feats})  # matches: no error
    other_model = Planned("pretrain1", {}, entry=4)
    with pytest.raises(ConfigError, match="holds the video tokens of pretrain1"):
        stage.check(on, {"cache": cache, "pretrain1": other_model, "features": feats})
    flipped = Planned("features", {"loader": {**loader, "flip_prob": 0.0}}, inputs={"cache": cache, "pretrain1": model}, entry=3)
    with pytest.raises(ConfigError, match="config key 'loader.flip_prob'"):
        stage.check(on, {"cache": cache, "pretrain1": model, "features": flipped})
