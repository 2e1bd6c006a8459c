"""The pre-training data pipeline: tokenizer, 4-clip windows, augmentation, failures, sharding, resume."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from lfvila_cli.data import example
from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.corpus import Rejections, Sample, read_corpus, write_corpus
from lfvila_cli.data.example import ExampleConfig
from lfvila_cli.data.framestore import FAILED, PENDING, FrameStore
from lfvila_cli.data.loader import DistributedBatchSampler, PretrainDataset, crop_params, make_loader
from lfvila_cli.data.loader_config import IMAGENET_MEAN, IMAGENET_STD, LoaderConfig
from lfvila_cli.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_wordpiece_tokenizer
from lfvila_cli.errors import ConfigError, DataError

# lfvila-tiny sizes: 64×96 frames, 8 frames per clip; 4..7 clips per video.
EXAMPLE = ExampleConfig(
    seed=1, train_videos=6, val_videos=0, test_videos=0, min_clips=4, max_clips=7,
    clip_seconds=1.0, fps=8, height=64, width=96, qa_per_video=0,
)
K, H, W, C, L = 8, 64, 96, 4, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Corpus (the example's train videos + a 3-clip sample) → frame store + trained tokenizer."""
    out = tmp_path_factory.mktemp("loader")
    samples = list(example.read(EXAMPLE, out, Rejections()))
    first = samples[0]
    short = Sample("short", first.video, first.duration, first.segments[:3], "train")  # < 4 clips
    samples.append(short)
    write_corpus(out, samples, Rejections())
    store_url = str(out / "frames.zarr")
    summary = cache_frames(out / "samples.jsonl", CacheConfig(frames_per_segment=K, height=H, width=W, codec="raw"), store_url, progress=False)
    assert summary["failed"] == 0
    tokenizer = train_wordpiece_tokenizer([seg.text for s in samples for seg in s.segments], 500, out / "tokenizer")
    corpus = list(read_corpus(out / "samples.jsonl"))
    return {"dir": out, "store": store_url, "tokenizer": tokenizer, "samples": corpus}


def dataset(data, store=None, train=True, **cfg) -> PretrainDataset:
    cfg = LoaderConfig(max_tokens=cfg.pop("max_tokens", L), **cfg)
    return PretrainDataset(data["samples"], store or data["store"], data["tokenizer"], cfg, train=train, video_root=data["dir"])


def copy_store(data, tmp_path) -> tuple[str, zarr.Group]:
    url = str(tmp_path / "frames.zarr")
    shutil.copytree(data["store"], url)
    return url, zarr.open_group(url, mode="r+")


def assert_same(a: dict, b: dict) -> None:
    assert a["sample_id"] == b["sample_id"] and a["window_start"] == b["window_start"]
    for key in ("frames", "times", "input_ids", "attention_mask"):
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- tokenizer


def test_trained_tokenizer_round_trips_offline(data):
    out = data["dir"] / "tokenizer"
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= {p.name for p in out.iterdir()}
    for tok in (data["tokenizer"], load_tokenizer(out, local_files_only=True)):
        assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
        sentence = data["samples"][0].segments[0].text
        ids = tok(sentence)["input_ids"]
        assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # every word of the corpus is known
        assert tok.decode(ids, skip_special_tokens=True) == sentence.lower()
        assert tok("ZEBRA")["input_ids"][1:-1] != []  # unseen word: pieces or [UNK], never dropped
    # classic BERT loaders read vocab.txt alone (BertTokenizer(vocab_file=...) would give all [UNK])
    from transformers import BertTokenizer

    alone = data["dir"] / "vocab-only"
    alone.mkdir(exist_ok=True)
    shutil.copy(out / "vocab.txt", alone / "vocab.txt")
    assert BertTokenizer.from_pretrained(str(alone))("the red circle")["input_ids"] == data["tokenizer"]("the red circle")["input_ids"]


def test_missing_tokenizer_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "nothing-here")
    with pytest.raises(DataError, match="not in the local cache"):
        load_tokenizer("lfvila-test/no-such-model", local_files_only=True)


# ----------------------------------------------------------------------------- examples


def test_example_shapes_tokens_and_skipped_short_samples(data):
    ds = dataset(data)
    assert len(ds) == EXAMPLE.train_videos and dict(ds.skipped) == {"fewer than 4 segments": 1}
    item = ds[0]
    assert item["frames"].shape == (C * K, 3, H, W) and item["frames"].dtype == torch.float32
    assert item["times"].shape == (C * K,) and torch.all(item["times"][1:] > item["times"][:-1])
    ids, mask = item["input_ids"], item["attention_mask"]
    assert ids.shape == mask.shape == (C, L) and ids.dtype == torch.long
    sample = next(s for s in data["samples"] if s.id == item["sample_id"])
    for row in range(C):
        n = int(mask[row].sum())
        assert torch.equal(mask[row], (torch.arange(L) < n).long())
        assert ids[row, 0] == 2 and ids[row, n - 1] == 3 and (ids[row, 1 : n - 1] > 4).all()
        assert (ids[row, n:] == 0).all()
        text = sample.segments[item["window_start"] + row].text
        assert data["tokenizer"].decode(ids[row, :n], skip_special_tokens=True) == text.lower()
    # truncation keeps [SEP] last
    short = dataset(data, max_tokens=4)[0]
    assert short["input_ids"].shape == (C, 4) and (short["input_ids"][:, -1] == 3).all() and short["attention_mask"].all()


def test_examples_are_a_pure_function_of_seed_epoch_index(data):
    a, b = dataset(data), dataset(data)
    for i in range(len(a)):
        assert_same(a[(2, i)], b[(2, i)])
        b.set_epoch(2)
        assert_same(a[(2, i)], b[i])
    # another epoch (or seed) draws another window or crop for some example
    assert any(not torch.equal(a[(0, i)]["frames"], a[(1, i)]["frames"]) for i in range(len(a)))
    other = dataset(data, seed=1)
    assert any(not torch.equal(a[(0, i)]["frames"], other[(0, i)]["frames"]) for i in range(len(a)))
    # eval: no augmentation, one window whatever the epoch
    ev = dataset(data, train=False)
    assert_same(ev[(0, 3)], ev[(5, 3)])


def test_dataloader_workers_give_the_same_batches(data):
    ds = dataset(data)
    serial = list(make_loader(ds, batch_size=2, epoch=3, num_workers=0))
    parallel = list(make_loader(ds, batch_size=2, epoch=3, num_workers=2))
    assert len(serial) == len(parallel) == len(ds) // 2
    for s, p in zip(serial, parallel):
        assert s["sample_ids"] == p["sample_ids"]
        for key in ("frames", "times", "input_ids", "attention_mask", "window_start", "index"):
            assert torch.equal(s[key], p[key]), key
    batch = serial[0]
    assert batch["frames"].shape == (2, C * K, 3, H, W) and batch["input_ids"].shape == batch["attention_mask"].shape == (2, C, L)
    for j, index in enumerate(batch["index"].tolist()):  # a batch holds exactly the dataset's examples
        assert torch.equal(batch["frames"][j], ds[(3, index)]["frames"])


def test_every_window_start_is_reachable(data):
    ds = dataset(data)
    longest = max(range(len(ds)), key=lambda i: len(ds.valid_starts(i)))
    m = len(next(s for s in data["samples"] if s.id == ds.sample_id(longest)).segments)
    assert m >= 6  # the example's seed gives a long video: the test can tell M−3 from M−4 starts
    assert ds.valid_starts(longest).tolist() == list(range(m - C + 1))
    seen = {ds[(epoch, longest)]["window_start"] for epoch in range(60)}
    assert seen == set(range(m - C + 1))


def test_store_and_decode_give_the_same_examples(data):
    store, decode = dataset(data), dataset(data, source="decode")
    for i in range(len(store)):
        assert_same(store[(4, i)], decode[(4, i)])


# ----------------------------------------------------------------------------- augmentation


def test_one_crop_and_flip_shared_by_all_frames(data, tmp_path):
    url, group = copy_store(data, tmp_path)
    # Every frame of every row the same image whose brightness rises left to right: any
    # per-frame crop would make frames differ; a flip makes it fall.
    ramp = np.broadcast_to(np.linspace(0, 255, W).astype(np.uint8)[None, :, None], (H, W, 3))
    group["frames"][:] = np.broadcast_to(ramp, group["frames"].shape)
    ds, ev = dataset(data, store=url), dataset(data, store=url, train=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    reference = (torch.from_numpy(ramp.copy()).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(ev[0]["frames"], reference.expand(C * K, 3, H, W), atol=1e-6)  # eval: untouched
    flips, crops = set(), set()
    for epoch in range(12):
        frames = ds[(epoch, 0)]["frames"]
        assert (frames == frames[:1]).all()  # one crop and one flip for all frames of the example
        slope = frames[0, 0, H // 2, -1] - frames[0, 0, H // 2, 0]
        flips.add(bool(slope < 0))
        crops.add(round(float(frames[0, 0, H // 2, 0]), 4))
    assert flips == {True, False}  # both flip outcomes occur across epochs
    assert len(crops) > 2  # and the crop box moves


def test_uint8_augment_matches_the_float_reference():
    from lfvila_cli.data.loader import augment, augment_reference

    g = torch.Generator().manual_seed(0)
    # Smooth content plus noise: the uint8 path rounds each output pixel, nothing more.
    video = (torch.rand(8, 3, H, W, generator=g) * 60 + torch.linspace(0, 190, W)).to(torch.uint8)
    video = video.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last, as the store gives it
    rng = np.random.default_rng(1)
    for flip in (False, True):
        for _ in range(10):
            box = crop_params(rng, H, W, (0.8, 1.0), (3 / 4, 4 / 3))
            fast = augment(video, box, flip, (H, W))
            ref = augment_reference(video, box, flip, (H, W))
            assert fast.dtype == torch.uint8 and fast.shape == ref.shape == (8, 3, H, W)
            assert (fast.float() - ref).abs().max() <= 1.0, box  # within one grey level
    assert torch.equal(augment(video, (0, 0, H, W), False, (H, W)), video)  # full box: untouched


def test_crop_params_stay_inside_the_frame_with_the_requested_area():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_params(rng, H, W, (0.8, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        assert 0.75 <= h * w / (H * W) <= 1.0 + 1e-9


# ----------------------------------------------------------------------------- failures


def test_failed_rows_exclude_windows_and_samples_and_are_never_replaced(data, tmp_path):
    url, group = copy_store(data, tmp_path)
    store = FrameStore(data["store"])
    train = [s for s in data["samples"] if s.id != "short"]
    long = next(s for s in train if len(s.segments) >= 6)
    four = next(s for s in train if len(s.segments) == 4)
    group["status"][store.rows(long.id)[1]] = FAILED  # windows 0 and 1 touch segment 1
    group["status"][store.rows(four.id)[2]] = FAILED  # its only window is gone
    ds = dataset(data, store=url)
    assert len(ds) == EXAMPLE.train_videos - 1
    assert dict(ds.skipped) == {"fewer than 4 segments": 1, "no window without failed rows": 1}
    assert ds.excluded_windows == 2
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert four.id not in ids
    i = ids.index(long.id)
    assert ds.valid_starts(i).tolist() == list(range(2, len(long.segments) - C + 1))
    assert {ds[(e, i)]["window_start"] for e in range(30)} == set(range(2, len(long.segments) - C + 1))
    for batch in make_loader(ds, batch_size=2, epoch=0, num_workers=2, drop_last=False):
        assert four.id not in batch["sample_ids"]  # nothing stands in for the skipped sample
    # pending rows count as unusable as well
    group["status"][store.rows(long.id)[-1]] = PENDING
    assert dataset(data, store=url).excluded_windows == 3


def test_a_store_of_another_shape_is_an_error(data):
    with pytest.raises(DataError, match="frames_per_clip"):
        dataset(data, frames_per_clip=K + 1)
    with pytest.raises(ConfigError, match="crop_scale"):
        LoaderConfig(crop_scale=[0.9, 0.5])
    with pytest.raises(ConfigError, match="source"):
        LoaderConfig(source="disk")


# ----------------------------------------------------------------------------- sharding, resume


def test_distributed_sampler_is_disjoint_covering_and_seeded():
    for n, drop_last in ((11, True), (11, False), (12, True)):
        ranks = [DistributedBatchSampler(n, 2, rank=r, world_size=2, epoch=5, drop_last=drop_last) for r in range(2)]
        parts = [r.rank_indices().tolist() for r in ranks]
        if drop_last:
            assert not set(parts[0]) & set(parts[1]) and len(parts[0]) == len(parts[1]) == n // 2
            assert len(set(parts[0]) | set(parts[1])) == n - n % 2
        else:
            assert set(parts[0]) | set(parts[1]) == set(range(n)) and len(parts[0]) == len(parts[1])
        batches = [b for r in ranks for b in r]
        assert all(epoch == 5 for b in batches for epoch, _ in b)
    again = DistributedBatchSampler(12, 3, epoch=5).rank_indices()
    assert np.array_equal(again, DistributedBatchSampler(12, 3, epoch=5).rank_indices())
    assert not np.array_equal(again, DistributedBatchSampler(12, 3, epoch=6).rank_indices())
    assert sorted(again.tolist()) == list(range(12))


def test_ranks_see_disjoint_examples_through_the_loader(data):
    ds = dataset(data)
    seen = [
        [sid for b in make_loader(ds, batch_size=1, rank=r, world_size=2, epoch=1) for sid in b["sample_ids"]]
        for r in range(2)
    ]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == len(ds)


def test_resume_yields_exactly_the_remaining_batches_without_loading_the_skipped(data, monkeypatch):
    ds = dataset(data)
    full = list(make_loader(ds, batch_size=2, epoch=7, drop_last=False))
    loaded = []
    original = PretrainDataset.get
    monkeypatch.setattr(PretrainDataset, "get", lambda self, index, epoch: loaded.append(index) or original(self, index, epoch))
    loader = make_loader(ds, batch_size=2, epoch=7, drop_last=False, start_index=1)
    assert len(loader) == len(full) - 1
    rest = list(loader)
    assert len(loaded) == sum(len(b["sample_ids"]) for b in full[1:])
    for a, b in zip(full[1:], rest, strict=True):
        assert a["sample_ids"] == b["sample_ids"] and torch.equal(a["frames"], b["frames"])


def test_trained_tokenizer_is_identical_across_processes(tmp_path):
    """The same texts give the same vocabulary ids in separate processes (hash order varies)."""
    import subprocess
    import sys

    code = (
        "import sys; from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer;"
        "texts = ['the red circle moves to the left.', 'the blue square grows.', 'a green triangle spins slowly.'] * 3;"
        "train_wordpiece_tokenizer(texts, 500, sys.argv[1])"
    )
    vocabs = []
    for i in range(3):
        out = tmp_path / f"tok{i}"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env={**__import__("os").environ, "PYTHONHASHSEED": str(i)})
        vocabs.append((out / "vocab.txt").read_text())
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert vocabs[0].splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
