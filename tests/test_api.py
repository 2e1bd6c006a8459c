"""The top-level Python API (lfvila_cli.load): lazy imports, encoding, ranking and answering on
tiny models and synthetic videos, the device argument."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lfvila_cli
from helpers_video import make_video, synthetic_frames
from lfvila_cli.errors import ConfigError, DataError, LfvilaError
from test_pretrained import REVISION, fake_hub_cache, tiny_model

ROOT = Path(__file__).resolve().parents[1]
PRE = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "max_tokens": 32, "frames": 16, "height": 64, "width": 96}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Model directories as training writes them: stage 1, retrieval, multiple choice, classification."""
    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer
    from lfvila_cli.model.pretrained import save_pretrained

    root = tmp_path_factory.mktemp("api")
    texts = ["the red circle grows", "the blue square moves to the left", "what does the square do", "it spins", "it grows"]
    out = {}
    for variant, task, labels in (("stage1", None, None), ("retrieval", "activitynet", None), ("qa-multichoice", "how2qa", None),
                                  ("qa-classification", "anet-qa", ["grows", "spins", "left"])):
        model = tiny_model(variant)
        path = root / variant
        path.mkdir()
        save_pretrained(model, model.config, path, task=task, labels=labels, preprocessing=PRE)
        train_wordpiece_tokenizer(texts, 60, path / "tokenizer")
        out[variant] = path
    return out


def test_import_is_lazy_and_the_api_names_resolve():
    code = (
        "import sys, lfvila_cli;"
        "assert 'torch' not in sys.modules and 'lfvila_cli.api' not in sys.modules;"
        "f = lfvila_cli.load; assert f.__module__ == 'lfvila_cli.api' and lfvila_cli.load_model and lfvila_cli.Lfvila;"
        "print(sorted(m for m in ('torch', 'transformers', 'zarr', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lfvila_cli.nothing  # noqa: B018


def test_encodings_match_the_search_encoder(dirs):
    from lfvila_cli.search import Encoder

    api = lfvila_cli.load(dirs["stage1"], device="cpu")
    assert api.device.type == "cpu" and not api.model.training
    frames = np.stack([synthetic_frames(16, seed=s) for s in range(3)])
    videos = api.encode_videos(list(frames), batch=2)
    encoder = Encoder("torch", dirs["stage1"])
    video, clips = encoder.videos(frames)
    assert videos.video.shape == (3, 32) and videos.clips.shape == (3, 2, 32) and videos.times is None
    assert np.allclose(videos.video, video, atol=1e-5) and np.allclose(videos.clips, clips, atol=1e-5)
    paragraphs = [["the red circle grows", "it spins"], ["the blue square moves to the left"]]
    texts = api.encode_paragraphs(paragraphs)  # the second padded with an empty slot: the same embedding
    assert texts.sentence_mask.tolist() == [[True, True], [True, False]]
    for i, p in enumerate(paragraphs):
        paragraph, sentences = encoder.paragraph(p)
        assert np.allclose(texts.paragraph[i], paragraph, atol=1e-5)
        assert np.allclose(texts.sentences[i, : len(p)], sentences, atol=1e-5)


def test_rank_files_and_the_clip_of_each_sentence(dirs, tmp_path):
    from lfvila_cli.data.video import decode_chunks

    files = [make_video(tmp_path / f"v{i}.mp4", num_frames=24, seed=i) for i in range(3)]
    api = lfvila_cli.load(str(dirs["stage1"]), device="cpu")
    encoded = api.encode_videos(files)  # 2 clips × 8 frames at 64×96: the preprocessing in config.json
    frames, times = decode_chunks(str(files[1]), 2, 8, 64, 96)
    assert np.allclose(encoded.video[1], api.encode_videos([frames.reshape(16, 64, 96, 3)]).video[0], atol=1e-6)
    assert np.array_equal(encoded.times[1], times)
    paragraphs = [["the red circle grows", "it spins"], ["it grows"]]
    results = api.rank(paragraphs, files)
    scores = api.encode_paragraphs(paragraphs).paragraph @ encoded.video.T
    for p, result in enumerate(results):
        assert [r["video"] for r in result["ranking"]] == list(np.argsort(-scores[p], kind="stable"))
        assert np.allclose([r["score"] for r in result["ranking"]], np.sort(scores[p])[::-1], atol=1e-5)
        assert [s["sentence"] for s in result["sentence_clips"]] == paragraphs[p]
        top = result["ranking"][0]["video"]
        assert all(s["start"] == times_[s["clip"], 0] for s in result["sentence_clips"] for times_ in [encoded.times[top]])
    assert api.rank(paragraphs, encoded) == results  # encodings are reused as they are
    retrieval = lfvila_cli.load(dirs["retrieval"], device="cpu")
    assert retrieval.task == "activitynet" and "sentence_clips" not in retrieval.rank([["it grows"]], files)[0]


def test_answer_multiple_choice_and_classification(dirs, tmp_path):
    video = make_video(tmp_path / "v.mp4", num_frames=24)
    mc = lfvila_cli.load(dirs["qa-multichoice"], device="cpu")
    candidates = ["it spins", "it grows", "the red circle grows", "it moves to the left"]
    out = mc.answer(video, "what does the square do", candidates, subtitles=["the blue square moves"])
    assert len(out["scores"]) == 4 and abs(sum(out["scores"]) - 1) < 1e-5
    assert out["candidate"] == candidates[out["answer"]] and out["answer"] == int(np.argmax(out["scores"]))
    # each candidate is scored on its own: reversing them reverses the scores
    back = mc.answer(video, "what does the square do", candidates[::-1], subtitles=["the blue square moves"])
    assert np.allclose(back["scores"], out["scores"][::-1], atol=1e-5) and back["candidate"] == out["candidate"]

    cls = lfvila_cli.load(dirs["qa-classification"], device="cpu")
    frames = synthetic_frames(16)
    out = cls.answer(frames, "what does the square do")
    assert cls.labels == ["grows", "spins", "left"] and out["label"] == cls.labels[out["answer"]] and len(out["scores"]) == 3
    with pytest.raises(ConfigError, match="takes no candidates"):
        cls.answer(frames, "what does the square do", ["a", "b"])
    with pytest.raises(ConfigError, match="needs the candidate answers"):
        mc.answer(frames, "what does the square do")
    with pytest.raises(LfvilaError, match="has no video embeddings"):
        cls.encode_videos([frames])
    with pytest.raises(LfvilaError, match="does not answer questions"):
        lfvila_cli.load(dirs["stage1"], device="cpu").answer(frames, "what?", ["a"])


def test_bad_inputs_are_one_line_errors(dirs):
    api = lfvila_cli.load(dirs["stage1"], device="cpu")
    with pytest.raises(ConfigError, match="each a non-empty list of sentences"):
        api.encode_paragraphs(["the red circle grows"])
    with pytest.raises(ConfigError, match="at most 8"):
        api.encode_paragraphs([["a"] * 9])
    with pytest.raises(ConfigError, match="multiple of 8"):
        api.encode_videos([synthetic_frames(12)])
    with pytest.raises(DataError, match="^/nonexistent/video.mp4: file not found$"):
        api.encode_videos(["/nonexistent/video.mp4"])


def test_device_argument(dirs):
    assert lfvila_cli.load(dirs["retrieval"], device="cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(LfvilaError, match=r"^device 'cuda': CUDA is not available here") as err:
            lfvila_cli.load(dirs["retrieval"], device="cuda")
        assert "\n" not in str(err.value)
        assert lfvila_cli.load(dirs["retrieval"]).device.type == "cpu"  # auto


def test_old_directory_without_preprocessing_asks_for_the_frames(tmp_path):
    """A model directory written before config.json recorded the preprocessing: normalisation
    from its stage config (ImageNet when it has none), frames and size from the caller."""
    import shutil

    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.pretrained import read_config, save_weights
    from test_pretrained import OLD_DIR

    shutil.copytree(OLD_DIR, tmp_path / "old")
    save_weights(build_model(read_config(tmp_path / "old")).state_dict(), tmp_path / "old" / "model.safetensors")
    api = lfvila_cli.load(tmp_path / "old", device="cpu")
    assert api.preprocessing["image_mean"] == PRE["image_mean"] and api.max_tokens == 32
    video = make_video(tmp_path / "v.mp4", num_frames=24)
    with pytest.raises(ConfigError, match="give clips, height and width"):
        api.encode_videos([video])
    assert api.encode_videos([video], clips=2, height=64, width=96).video.shape == (1, 32)


def test_hub_id_in_a_fresh_process(dirs, tmp_path):
    """HF_HUB_CACHE as a user sets it, HF_HUB_OFFLINE=1: the id resolves from the cache."""
    import os

    fake_hub_cache(tmp_path / "cache", "lfvila-test/tiny", dirs["stage1"])
    code = (
        "import json, lfvila_cli, numpy as np, sys;"
        "sys.path.insert(0, 'tests'); from helpers_video import synthetic_frames;"
        f"m = lfvila_cli.load('lfvila-test/tiny', device='cpu', revision='{REVISION}');"
        "print(json.dumps(m.encode_videos([synthetic_frames(16)]).video[0].tolist()))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    local = lfvila_cli.load(dirs["stage1"], device="cpu").encode_videos([synthetic_frames(16)]).video[0]
    assert np.allclose(json.loads(out.stdout), local, atol=1e-6)
