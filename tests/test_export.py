"""ONNX export of the encoders, the parity check and the session factory (lfvila_cli.export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lfvila_cli.errors import ConfigError, LfvilaError
from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.export import TEXT_FILE, VIDEO_FILE, ExportError, OnnxFileError, create_session, read_metadata
from lfvila_cli.pipeline.runner import run_stage
from lfvila_cli.pipeline.stage import resolve_config
from lfvila_cli.stages import get_stage, run_pipeline

SIZE = {"train_videos": 4, "val_videos": 1, "test_videos": 0, "max_clips": 4, "height": 64, "width": 96}
EXPORT = {"frames": 32, "height": 64, "width": 96}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("export")
    wd = Workdir(root / "wd")
    stages = [
        ("prepare", {"source": "example", "example": SIZE}),
        ("cache", {"frames_per_segment": 8, "height": 64, "width": 96}),
        ("pretrain1", {"train": {"micro_batch": 2, "max_steps": 2}, "val_every": 0}),
        ("export", EXPORT),
    ]
    (root / "p.yaml").write_text(yaml.safe_dump({"stages": [{"stage": s, "config": c} for s, c in stages]}))
    results = run_pipeline(wd, root / "p.yaml", progress=False, echo=lambda line: None)
    assert [r.status for r in results] == ["done"] * 4
    return wd, results[2].artifact, results[3].artifact


def test_export_writes_both_graphs_with_metadata_and_parity(exported):
    _, _, artifact = exported
    summary = json.loads((artifact.path / "export.json").read_text())
    parity = summary["parity"]
    assert parity["batch"] != parity["traced_batch"] and parity["same_ranking"]
    assert max(parity["max_abs_diff"].values()) <= 1e-4
    assert (artifact.path / "tokenizer" / "tokenizer_config.json").is_file()
    video, text = read_metadata(artifact.path / VIDEO_FILE), read_metadata(artifact.path / TEXT_FILE)
    assert video["graph"] == "video" and text["graph"] == "text"
    assert video["fixed"] == {"frames": 32, "height": 64, "width": 96}
    assert video["preprocessing"]["frames_per_clip"] == 8 and video["preprocessing"]["max_tokens"] == 32
    assert set(video["versions"]) == {"lfvila", "torch", "onnx", "onnxruntime"}
    import onnx

    model = onnx.load(str(artifact.path / VIDEO_FILE))
    assert model.opset_import[0].version >= 17 and not list((artifact.path).glob("*.data"))  # weights inside


def test_exported_graphs_match_pytorch_at_other_batch_sizes(exported):
    """Batch 1 and 5 (traced at 2, checked at 3 by export itself), and 6 sentence slots for text."""
    from lfvila_cli.model.pretrained import load_pretrained

    _, model_artifact, artifact = exported
    model = load_pretrained(model_artifact.path).eval()
    video = create_session(artifact.path / VIDEO_FILE, "video")
    text = create_session(artifact.path / TEXT_FILE, "text")
    gen = torch.Generator().manual_seed(7)
    for batch in (1, 5):
        frames = torch.randn(batch, 32, 3, 64, 96, generator=gen)
        got = video.run(None, {"frames": frames.numpy()})
        with torch.no_grad():
            ref = model.encode_video(frames)
        assert np.abs(got[0] - ref.global_embedding.numpy()).max() < 1e-4
        assert np.abs(got[1] - ref.clip_embeddings.numpy()).max() < 1e-4
    ids = torch.randint(5, 40, (5, 6, 32), generator=gen)
    mask = torch.ones_like(ids)
    mask[:, :, 12:] = 0
    mask[1, 4:] = 0
    ids = ids * mask
    got = text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        ref = model.encode_text(ids, mask)
    assert np.abs(got[0] - ref.paragraph_embedding.numpy()).max() < 1e-4


def test_corrupt_or_mismatched_files_are_one_line_errors(exported, tmp_path):
    _, _, artifact = exported
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((artifact.path / VIDEO_FILE).read_bytes()[:5000])
    with pytest.raises(OnnxFileError, match="broken.onnx: not a readable ONNX file"):
        create_session(broken, "video")
    with pytest.raises(OnnxFileError, match="holds the video graph, not the text graph"):
        create_session(artifact.path / VIDEO_FILE, "text")
    foreign = tmp_path / "foreign.onnx"
    import onnx

    model = onnx.load(str(artifact.path / TEXT_FILE))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(OnnxFileError, match="without lfvila metadata"):
        create_session(foreign)


def test_parity_failure_fails_the_stage_and_leaves_nothing(exported):
    wd, model_artifact, _ = exported
    stage = get_stage("export")
    cfg = resolve_config(stage, layers=[{**EXPORT, "tolerance": 1e-12}])
    with pytest.raises(ExportError, match=r"ONNX parity failed \(fp32\): max \|onnx - torch\| of \w+ is .* \(tolerance 1e-12\)"):
        run_stage(wd, stage, cfg, {"pretrain1": model_artifact}, progress=False, echo=lambda line: None)
    assert len(wd.artifacts("export")) == 1  # only the fixture's


def test_frame_count_must_be_whole_clips(exported):
    wd, model_artifact, _ = exported
    stage = get_stage("export")
    cfg = resolve_config(stage, layers=[{**EXPORT, "frames": 20}])
    with pytest.raises(LfvilaError, match="config key 'frames': 20 is not a whole number of 8-frame clips"):
        run_stage(wd, stage, cfg, {"pretrain1": model_artifact}, progress=False, echo=lambda line: None)


def test_export_cli(exported):
    from typer.testing import CliRunner

    from lfvila_cli.main import app

    wd, _, _ = exported
    args = ["export", "--onnx", "--workdir", str(wd.root), "--set", "frames=32", "--set", "height=64", "--set", "width=96"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and "export: up to date" in out.output, out.output
    bad = CliRunner().invoke(app, ["export", "--no-onnx", "--workdir", str(wd.root)])
    assert bad.exit_code == 2 and "ONNX is the only export format" in bad.output


def test_export_takes_the_frame_size_the_model_was_trained_on(exported, tmp_path):
    """frames, height and width left at 0 become what the model was trained on (4 clips × 8
    frames at 64×96 here): the same key as stating them, and a different one for another size.
    When the frame store the model was trained on is gone, a one-line error asks for them."""
    import json
    import shutil

    from lfvila_cli.stages.export import trained_frames

    wd, model_artifact, export_artifact = exported
    stage = get_stage("export")
    assert trained_frames(wd, model_artifact) == EXPORT
    lines = []
    same = run_stage(wd, stage, resolve_config(stage), {"pretrain1": model_artifact}, dry_run=True, echo=lines.append)
    assert same.status == "up to date" and same.key == export_artifact.key, lines
    other = run_stage(wd, stage, resolve_config(stage, overrides=["height=128"]), {"pretrain1": model_artifact}, dry_run=True, echo=lines.append)
    assert other.status == "would run"
    copy = Workdir(tmp_path / "wd")
    shutil.copytree(wd.root, copy.root)
    shutil.rmtree(copy.stage_dir("cache"))
    manifest = copy.resolve("pretrain1", model_artifact.key).path / "manifest.json"
    record = json.loads(manifest.read_text())
    record["input_paths"]["cache"] = str(tmp_path / "moved-away")  # nor where it was built
    manifest.write_text(json.dumps(record))
    model = copy.resolve("pretrain1", model_artifact.key)
    with pytest.raises(ConfigError, match=r"config keys 'frames', 'height', 'width': the frame store pretrain1/\w+ was trained on is gone"):
        run_stage(copy, stage, resolve_config(stage), {"pretrain1": model}, dry_run=True, echo=lines.append)


def test_onnx_only_example_ranks_like_pytorch(exported, tmp_path):
    """examples/onnx_inference/rank.py with torch and lfvila unimportable gives the ranking and
    per-sentence clips the PyTorch model gives."""
    import subprocess
    import sys
    from pathlib import Path

    from lfvila_cli.data.tokenizer import load_tokenizer
    from lfvila_cli.model.pretrained import load_pretrained

    _, model_artifact, artifact = exported
    gen = np.random.default_rng(3)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"v{i}.npy")
        np.save(paths[-1], gen.integers(0, 256, (32, 64, 96, 3), dtype=np.uint8))
    paragraph = ["the red circle grows.", "the red circle moves to the left.", "it spins."]
    script = Path(__file__).parents[1] / "examples" / "onnx_inference" / "rank.py"
    guard = "import sys; sys.modules.update(torch=None, lfvila_cli=None, transformers=None); import runpy; "
    guard += f"sys.argv = {[str(script), str(artifact.path), '--videos', *map(str, paths), '--paragraph', *paragraph]!r}; "
    guard += f"runpy.run_path({str(script)!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", guard], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.index("["):])[0]

    model = load_pretrained(model_artifact.path).eval()
    tokenizer = load_tokenizer(model_artifact.path / "tokenizer", local_files_only=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    frames = torch.stack([torch.from_numpy(np.load(p)).float() / 255 for p in paths])
    frames = ((frames - mean) / std).permute(0, 1, 4, 2, 3)
    tokens = tokenizer(paragraph, max_length=32, truncation=True, padding="max_length", return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        video = model.encode_video(frames)
        text = model.encode_text(tokens["input_ids"][None], tokens["attention_mask"][None])
    scores = (text.paragraph_embedding @ video.global_embedding.t())[0]
    order = torch.argsort(-scores, stable=True).tolist()
    assert [r["video"] for r in result["ranking"]] == [str(paths[j]) for j in order]
    assert np.allclose([r["score"] for r in result["ranking"]], scores[order].numpy(), atol=1e-4)
    clips = (text.sentence_embeddings[0] @ video.clip_embeddings[order[0]].t()).argmax(dim=1).tolist()
    assert [c["clip"] for c in result["sentence_clips"]] == clips


@pytest.fixture(scope="module")
def indexed(exported):
    """A chunks cache of the same corpus, indexed through ONNX Runtime and through PyTorch."""
    wd, model_artifact, export_artifact = exported
    corpus = wd.resolve("prepare")
    cache_stage = get_stage("cache")
    # Raw frames: the Python API example decodes the videos itself and must match the index exactly
    # (JPEG stores feed index and search in the quickstart test).
    chunks = resolve_config(cache_stage, layers=[{"frames_per_segment": 8, "height": 64, "width": 96, "segment_mode": "chunks", "num_chunks": 4, "codec": "raw"}])
    cache = run_stage(wd, cache_stage, chunks, {"prepare": corpus}, progress=False, echo=lambda line: None).artifact
    stage = get_stage("index")
    onnx_index = run_stage(wd, stage, resolve_config(stage, layers=[{"engine": "onnx", "batch": 2}]),
                           {"cache": cache, "export": export_artifact}, progress=False, echo=lambda line: None).artifact
    # fp32: the PyTorch index is the reference the ONNX one is held to (bf16: tests/test_precision.py)
    torch_index = run_stage(wd, stage, resolve_config(stage, layers=[{"engine": "torch", "batch": 3, "precision": "fp32"}]),
                            {"cache": cache, "pretrain1": model_artifact}, progress=False, echo=lambda line: None).artifact
    return wd, cache, onnx_index, torch_index


def test_onnx_and_torch_indexes_agree_and_search_matches_brute_force(exported, indexed):
    import zarr

    from lfvila_cli.data.framestore import FrameStore
    from lfvila_cli.search import query
    from lfvila_cli.model.pretrained import load_pretrained

    wd, cache, onnx_index, torch_index = indexed
    _, model_artifact, export_artifact = exported
    a, b = zarr.open_group(str(onnx_index.path / "features.zarr"), mode="r"), zarr.open_group(str(torch_index.path / "features.zarr"), mode="r")
    assert np.asarray(a["status"][:]).all() and np.abs(np.asarray(a["video"][:]) - np.asarray(b["video"][:])).max() < 1e-4
    # brute force in PyTorch: every video of the store against the paragraph
    model = load_pretrained(model_artifact.path).eval()
    store = FrameStore(str(cache.path / "frames.zarr"))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    sentences = ["the red circle grows.", "it moves to the left."]
    from lfvila_cli.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_artifact.path / "tokenizer", local_files_only=True)
    tokens = tokenizer(sentences, max_length=32, truncation=True, padding="max_length", return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        text = model.encode_text(tokens["input_ids"][None], tokens["attention_mask"][None]).paragraph_embedding[0]
        scores = []
        for sid in store.sample_ids:
            frames = torch.from_numpy(store.sample(sid)[0].reshape(1, -1, 64, 96, 3)).float() / 255
            frames = ((frames - mean) / std).permute(0, 1, 4, 2, 3)
            scores.append(float(model.encode_video(frames).global_embedding[0] @ text))
    expected = [store.sample_ids[i] for i in np.argsort(-np.asarray(scores), kind="stable")[:3]]
    for index, engine, source in ((onnx_index, "onnx", export_artifact), (torch_index, "torch", model_artifact)):
        found = query(index.path, source.path, engine, sentences, top_k=3)
        assert [r["id"] for r in found] == expected, engine
        assert np.allclose([r["score"] for r in found], sorted(scores, reverse=True)[:3], atol=1e-4)
        for r in found:
            assert [s["sentence"] for s in r["sentences"]] == sentences
            assert all(s["start"] <= s["end"] for s in r["sentences"])
        too_many = [f"sentence {i}." for i in range(model.config.text.max_sentences + 1)]
        with pytest.raises(LfvilaError, match=f"a paragraph of {len(too_many)} sentences; the model takes at most"):
            query(index.path, source.path, engine, too_many)


def test_index_resumes_only_the_missing_rows(indexed, tmp_path):
    import shutil

    import zarr

    from lfvila_cli.search import IndexConfig, build_index

    wd, cache, onnx_index, _ = indexed
    copy = tmp_path / "idx"
    shutil.copytree(onnx_index.path, copy)
    group = zarr.open_group(str(copy / "features.zarr"), mode="a")
    before = np.asarray(group["video"][:])
    group["status"][1:3] = 0  # as if killed before these rows were marked
    group["video"][1:3] = 0
    export_dir = wd.resolve("export").path
    summary = build_index(str(cache.path / "frames.zarr"), export_dir, IndexConfig(engine="onnx", batch=2), copy)
    assert summary["indexed_this_run"] == 2
    assert np.abs(np.asarray(group["video"][:]) - before).max() < 1e-6


def test_index_logs_progress_lines_off_a_terminal(indexed, tmp_path, monkeypatch, caplog):
    """Without a bar (no terminal) indexing logs videos done/total, videos/s and the time left every
    interval on the ``lfvila_cli.progress`` logger; a resumed index counts the rows it finds done."""
    import logging
    import re
    import shutil

    import zarr

    from lfvila_cli.search import IndexConfig, build_index

    wd, cache, onnx_index, _ = indexed
    copy = tmp_path / "idx"
    shutil.copytree(onnx_index.path, copy)
    group = zarr.open_group(str(copy / "features.zarr"), mode="a")
    n = group["status"].shape[0]
    group["status"][n - 3 :] = 0  # three rows left to index
    monkeypatch.setenv("LFVILA_PROGRESS_S", "0")
    with caplog.at_level(logging.INFO, logger="lfvila_cli.progress"):
        build_index(str(cache.path / "frames.zarr"), wd.resolve("export").path, IndexConfig(engine="onnx", batch=1), copy)
    lines = [r.getMessage() for r in caplog.records if r.name == "lfvila_cli.progress"]
    assert [re.sub(r"[\d.]+ videos/s, about \S+ left", "R", line) for line in lines] == [
        f"index: {done}/{n} videos ({100 * done / n:.0f}%), R" for done in (n - 2, n - 1, n)
    ], lines
    assert lines[-1].endswith("about 0m00s left")


def test_search_cli_table_and_json(indexed):
    from typer.testing import CliRunner

    from lfvila_cli.main import app

    wd, _, onnx_index, _ = indexed
    args = ["search", "--workdir", str(wd.root), "--index", onnx_index.key[:16], "the red circle grows.", "--top-k", "2"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0 and table.output.startswith("1. ") and "clip " in table.output, table.output
    as_json = CliRunner().invoke(app, args + ["--json"])
    assert as_json.exit_code == 0 and len(json.loads(as_json.output)) == 2
    bad = CliRunner().invoke(app, ["search", "--workdir", str(wd.root), "--index", onnx_index.key[:16], " "])
    assert bad.exit_code == 2 and "non-empty sentences" in bad.output


def test_encoders_index_and_search_take_a_device(exported, indexed):
    """``device`` picks where the encoders run; it is not part of the index key; CUDA asked for
    on a machine where it cannot run is a one-line error, never a silent CPU run."""
    from typer.testing import CliRunner

    from lfvila_cli.main import app
    from lfvila_cli.runtime import DeviceError, cuda_provider_runs
    from lfvila_cli.search import Encoder, query

    wd, cache, onnx_index, torch_index = indexed
    _, model_artifact, export_artifact = exported
    sentences = ["the red circle grows.", "it moves to the left."]
    onnx_cpu, torch_cpu = Encoder("onnx", export_artifact.path, device="cpu"), Encoder("torch", model_artifact.path, device="cpu", precision="fp32")
    assert onnx_cpu.device == torch_cpu.device == "cpu"
    assert np.abs(onnx_cpu.paragraph(sentences)[0] - torch_cpu.paragraph(sentences)[0]).max() < 1e-4
    stage = get_stage("index")
    again = run_stage(wd, stage, resolve_config(stage, layers=[{"engine": "onnx", "batch": 2, "device": "cpu"}]),
                      {"cache": cache, "export": export_artifact}, progress=False, echo=lambda line: None)
    assert again.status == "up to date" and again.key == onnx_index.key
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="^device 'cuda': CUDA is not available here"):
            query(torch_index.path, model_artifact.path, "torch", sentences, device="cuda")
    args = ["search", "--workdir", str(wd.root), "--index", onnx_index.key[:16], "the red circle grows."]
    if not cuda_provider_runs()[0]:
        refused = CliRunner().invoke(app, args + ["--device", "cuda"])
        assert refused.exit_code == 1 and refused.output.startswith("error: device 'cuda': ") and refused.output.count("\n") == 1, refused.output
    assert CliRunner().invoke(app, args + ["--device", "cpu"]).output.startswith("1. ")
    bad = CliRunner().invoke(app, args + ["--device", "gpu"])
    assert bad.exit_code == 2 and "expected auto, cpu, cuda or cuda:N" in bad.output
    bad_key = CliRunner().invoke(app, ["index", "--workdir", str(wd.root), "--device", "cuda:x", "--dry-run"])
    assert bad_key.exit_code == 2 and "config key 'device'" in bad_key.output, bad_key.output


def test_retrieval_model_exports_global_embeddings_and_searches_without_grounding(indexed, tmp_path):
    """A retrieval fine-tune has global projections only: its graphs output the video and
    paragraph embeddings, and its index ranks videos without per-sentence clips."""
    import shutil

    from lfvila_cli.config import to_dict
    from lfvila_cli.data.framestore import FrameStore
    from lfvila_cli.export import export_onnx
    from lfvila_cli.stages.export import ExportConfig
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.presets import get_preset
    from lfvila_cli.search import IndexConfig, build_index, query
    from lfvila_cli.model.pretrained import save_weights

    wd, cache, _, _ = indexed
    model_dir = tmp_path / "retrieval"
    model_dir.mkdir()
    config = get_preset("lfvila-tiny", "retrieval")
    (model_dir / "config.json").write_text(json.dumps(to_dict(config)))
    save_weights(build_model(config).state_dict(), model_dir / "model.safetensors")
    shutil.copytree(wd.resolve("pretrain1").path / "tokenizer", model_dir / "tokenizer")
    summary = export_onnx(model_dir, tmp_path / "export", ExportConfig(model="finetune", **EXPORT))
    assert summary["graphs"]["video"]["outputs"] == ["video"] and summary["graphs"]["text"]["outputs"] == ["paragraph"]
    assert summary["parity"]["same_ranking"]
    info = build_index(str(cache.path / "frames.zarr"), tmp_path / "export", IndexConfig(batch=4), tmp_path / "index")
    assert info["grounded"] is False and info["videos"] == len(FrameStore(str(cache.path / "frames.zarr")).sample_ids)
    found = query(tmp_path / "index", tmp_path / "export", "onnx", ["the red circle grows."], top_k=3)
    assert len(found) == 3 and all("sentences" not in r for r in found)
    assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)


def test_python_api_example_ranks_like_the_index(exported, indexed, tmp_path):
    """examples/python_api/rank_videos.py decodes the files as the chunks cache does and gives
    the same scores with both engines as the index's embeddings of the cached frames."""
    import subprocess
    import sys
    from pathlib import Path

    import zarr

    from lfvila_cli.search import Encoder

    wd, cache, onnx_index, _ = indexed
    _, model_artifact, export_artifact = exported
    corpus = wd.resolve("prepare").path
    samples = [json.loads(line) for line in (corpus / "samples.jsonl").read_text().splitlines()][:3]
    videos = [str(corpus / s["video"]) for s in samples]
    paragraph = ["the red circle grows.", "the red circle moves to the left."]
    script = Path(__file__).parents[1] / "examples" / "python_api" / "rank_videos.py"
    group = zarr.open_group(str(onnx_index.path / "features.zarr"), mode="r")
    rows = [list(group["sample_id"][:]).index(s["id"]) for s in samples]
    text = Encoder("onnx", export_artifact.path).paragraph(paragraph)[0]
    expected = np.asarray(group["video"][:])[rows] @ text
    for engine, ref in (("torch", model_artifact), ("onnx", export_artifact)):
        out = subprocess.run([sys.executable, str(script), "--workdir", str(wd.root), "--engine", engine, "--model", str(ref.path),
                              "--precision", "fp32", "--videos", *videos, "--paragraph", *paragraph], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)[0]
        got = {r["video"]: r["score"] for r in result["ranking"]}
        assert np.allclose([got[v] for v in videos], expected, atol=2e-4), (engine, got, expected)
        assert [r["video"] for r in result["ranking"]] == [videos[i] for i in np.argsort(-expected)]
        assert [s["sentence"] for s in result["sentence_clips"]] == paragraph


def test_top_level_api_ranks_like_the_index(exported, indexed):
    """lfvila_cli.load on a pre-trained artifact: config.json names its class and the frames it was
    trained on, and the API's scores of the video files equal the index's of the cached frames."""
    import zarr

    import lfvila_cli

    wd, _, onnx_index, _ = indexed
    _, model_artifact, export_artifact = exported
    config = json.loads((model_artifact.path / "config.json").read_text())
    assert config["model_type"] == "lfvila" and config["architectures"] == ["LfvilaForPretrainingStage1"]
    assert {k: config["preprocessing"][k] for k in ("frames", "height", "width", "max_tokens")} == {"frames": 32, "height": 64, "width": 96, "max_tokens": 32}
    corpus = wd.resolve("prepare").path
    samples = [json.loads(line) for line in (corpus / "samples.jsonl").read_text().splitlines()][:3]
    paragraph = ["the red circle grows.", "the red circle moves to the left."]
    group = zarr.open_group(str(onnx_index.path / "features.zarr"), mode="r")
    rows = [list(group["sample_id"][:]).index(s["id"]) for s in samples]
    from lfvila_cli.search import Encoder

    expected = np.asarray(group["video"][:])[rows] @ Encoder("onnx", export_artifact.path).paragraph(paragraph)[0]
    result = lfvila_cli.load(model_artifact.path, device="cpu", precision="fp32").rank([paragraph], [corpus / s["video"] for s in samples])[0]
    got = {r["video"]: r["score"] for r in result["ranking"]}
    assert np.allclose([got[i] for i in range(3)], expected, atol=2e-4)
    assert [s["sentence"] for s in result["sentence_clips"]] == paragraph


def test_index_embeds_shared_frames_once(exported, tmp_path):
    """Samples sharing their frames (two questions of one video) are indexed once, under the first id."""
    from lfvila_cli.data.cache import CacheConfig, cache_frames
    from lfvila_cli.search import IndexConfig, build_index

    wd, _, export_artifact = exported
    corpus = wd.resolve("prepare").path
    records = [json.loads(line) for line in (corpus / "samples.jsonl").read_text().splitlines()][:3]
    for r in records:
        r["video"] = str(corpus / r["video"])
    records.append({**records[0], "id": records[0]["id"] + "-q2"})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = CacheConfig(frames_per_segment=8, height=64, width=96, segment_mode="chunks", num_chunks=4)
    assert cache_frames(tmp_path / "c" / "samples.jsonl", cfg, str(tmp_path / "frames.zarr"), progress=False)["rows"] == 12
    info = build_index(str(tmp_path / "frames.zarr"), export_artifact.path, IndexConfig(batch=2), tmp_path / "index")
    assert info["videos"] == 3 and info["shared"] == 1 and info["skipped"] == 0


def test_damaged_model_files_are_refused_not_used(indexed, tmp_path):
    """4 KB of an exported encoder's weights overwritten (same size): `status` calls the export
    stale and `search` refuses it in one line; NaN embeddings in an index are refused too."""
    import shutil

    import zarr
    from typer.testing import CliRunner

    from lfvila_cli.errors import DataError
    from lfvila_cli.main import app
    from lfvila_cli.search import query

    wd, _, onnx_index, _ = indexed
    shutil.copytree(wd.root, tmp_path / "wd")
    copy = Workdir(tmp_path / "wd")
    index = copy.resolve("index", onnx_index.key)
    export = copy.input_of(index, "export")
    assert export.manifest["files"]["text_encoder.onnx"]["size"] == (export.path / "text_encoder.onnx").stat().st_size
    weights = export.path / "text_encoder.onnx"
    original = weights.read_bytes()
    middle = len(original) // 2
    weights.write_bytes(original[:middle] + b"\xff" * 4096 + original[middle + 4096 :])
    args = ["search", "--workdir", str(copy.root), "--index", index.key[:16], "the red circle grows."]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert "text_encoder.onnx changed after it was written" in refused.output
    status = CliRunner().invoke(app, ["status", "--workdir", str(copy.root)]).output
    assert f"{export.key[:16]}" in status and "stale: text_encoder.onnx changed" in status
    weights.write_bytes(original)
    assert CliRunner().invoke(app, args).exit_code == 0
    group = zarr.open_group(str(index.path / "features.zarr"), mode="r+")
    video = np.asarray(group["video"][:])
    video[1] = np.nan
    group["video"][:] = video
    with pytest.raises(DataError, match="1 of .* scores are not finite"):
        query(index.path, export.path, "onnx", ["the red circle grows."])


def test_int8_parity_fails_on_permuted_or_perturbed_embeddings():
    """int8_parity passes small rounding, and fails in one line a permuted ranking (top-1
    agreement) or embeddings turned away from the reference (1 − cos above the tolerance)."""
    from lfvila_cli.export import INT8_BATCH, int8_parity

    rng = np.random.default_rng(0)

    def unit(*shape):
        x = rng.standard_normal(shape)
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    video = unit(INT8_BATCH, 32)
    paragraph = (video + 0.05 * unit(INT8_BATCH, 32)).astype(np.float32)  # each paragraph closest to its own video
    ref = {"video": {"video": video, "clips": unit(INT8_BATCH, 4, 32)}, "text": {"paragraph": paragraph, "sentences": unit(INT8_BATCH, 3, 32)}}
    ref["text"]["sentences"][0, -1] = 0  # an empty slot, zero in both
    rounded = {g: {n: v + 1e-4 * rng.standard_normal(v.shape).astype(np.float32) * (v != 0) for n, v in outs.items()} for g, outs in ref.items()}
    figures = int8_parity(rounded, ref, 1e-2)
    assert figures["top1_agreeing"] == INT8_BATCH and max(figures["cosine_deviation"].values()) < 1e-4

    permuted = {**rounded, "video": {**rounded["video"], "video": rounded["video"]["video"][::-1].copy()}}
    with pytest.raises(ExportError, match=r"^int8 parity against the fp32 graphs failed: max 1 − cos of video is .*, and text→video top-1 agreement is 0/16 \(at least 75% needed\)$"):
        int8_parity(permuted, ref, 1e-2)
    turned = {**rounded, "text": {**rounded["text"], "sentences": ref["text"]["sentences"] + 0.3 * unit(INT8_BATCH, 3, 32)}}
    with pytest.raises(ExportError, match=r"^int8 parity against the fp32 graphs failed: max 1 − cos of sentences is \S+ \(tolerance 1e-02\)$"):
        int8_parity(turned, ref, 1e-2)
    nan = {**rounded, "video": {**rounded["video"], "clips": np.full_like(ref["video"]["clips"], np.nan)}}
    with pytest.raises(ExportError, match="max 1 − cos of clips is inf"):
        int8_parity(nan, ref, 1e-2)


@pytest.fixture(scope="module")
def exported_int8(exported):
    wd, model_artifact, _ = exported
    stage = get_stage("export")
    cfg = resolve_config(stage, layers=[{**EXPORT, "precision": "int8"}])
    return run_stage(wd, stage, cfg, {"pretrain1": model_artifact}, progress=False, echo=lambda line: None).artifact


def test_int8_export_quantizes_the_encoders_into_their_own_artifact(exported, exported_int8):
    """precision=int8: another artifact than fp32's, the same file names with int8 MatMul weights
    (the patch embedding's Conv and the attention's activation products in fp32), no fp32 graphs
    left beside them, and the int8 check's figures in export.json; the CLI's --int8 is the same key."""
    import onnx
    from typer.testing import CliRunner

    from lfvila_cli.main import app

    wd, _, fp32 = exported
    assert exported_int8.key != fp32.key
    summary = json.loads((exported_int8.path / "export.json").read_text())
    assert summary["precision"] == "int8" and summary["parity"]["same_ranking"] and summary["parity"]["tolerance"] == 1e-4
    int8 = summary["int8"]
    assert int8["batch"] == 16 and int8["top1_agreeing"] >= 12 and max(int8["cosine_deviation"].values()) <= int8["tolerance"] == 1e-2
    assert sorted(p.name for p in exported_int8.path.iterdir()) == sorted(p.name for p in fp32.path.iterdir())  # no .fp32 folder
    for file in (VIDEO_FILE, TEXT_FILE):
        assert read_metadata(exported_int8.path / file)["precision"] == "int8"
        graph = onnx.load(str(exported_int8.path / file))
        weights = {w.name for w in graph.graph.initializer}
        ops = [n.op_type for n in graph.graph.node]
        assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
        assert not any(n.op_type == "MatMul" and n.input[1] in weights for n in graph.graph.node)  # every weight MatMul quantized
        assert "ConvInteger" not in ops and ("Conv" in ops) == (file == VIDEO_FILE)
        assert (exported_int8.path / file).stat().st_size < (fp32.path / file).stat().st_size
    args = ["export", "--onnx", "--int8", "--workdir", str(wd.root), "--set", "frames=32", "--set", "height=64", "--set", "width=96"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and "export: up to date" in out.output and "top-1 agreement" in out.output, out.output
    both = CliRunner().invoke(app, args + ["--fp16"])
    assert both.exit_code == 2 and "--fp16 and --int8: one precision per export" in both.output


def test_int8_parity_failure_fails_the_stage_and_leaves_nothing(exported, exported_int8):
    wd, model_artifact, _ = exported
    stage = get_stage("export")
    before = len(wd.artifacts("export"))
    cfg = resolve_config(stage, layers=[{**EXPORT, "precision": "int8", "tolerance": 1e-9}])
    with pytest.raises(ExportError, match=r"^int8 parity against the fp32 graphs failed: max 1 − cos of \w+ is \S+ \(tolerance 1e-09\)$"):
        run_stage(wd, stage, cfg, {"pretrain1": model_artifact}, progress=False, echo=lambda line: None)
    assert len(wd.artifacts("export")) == before and not wd.partials()


def test_index_and_search_read_an_int8_export(exported_int8, indexed):
    """The index stage and search take the int8 files as they take fp32 ones: embeddings within
    the int8 tolerance of the fp32 index, and the same search results' shape."""
    import zarr
    from typer.testing import CliRunner

    from lfvila_cli.main import app
    from lfvila_cli.search import Encoder, query

    wd, cache, onnx_index, _ = indexed
    stage = get_stage("index")
    index = run_stage(wd, stage, resolve_config(stage, layers=[{"engine": "onnx", "batch": 4}]),
                      {"cache": cache, "export": exported_int8}, progress=False, echo=lambda line: None).artifact
    assert index.key != onnx_index.key
    a, b = zarr.open_group(str(index.path / "features.zarr"), mode="r"), zarr.open_group(str(onnx_index.path / "features.zarr"), mode="r")
    for name in ("video", "clips"):
        got, ref = np.asarray(a[name][:]), np.asarray(b[name][:])
        assert got.shape == ref.shape and (1 - (got * ref).sum(-1)).max() <= 1e-2, name  # unit vectors: 1 − cos
    sentences = ["the red circle grows.", "it moves to the left."]
    found = query(index.path, exported_int8.path, "onnx", sentences, top_k=3)
    assert len(found) == 3 and all(len(r["sentences"]) == 2 for r in found)
    scores = np.asarray(a["video"][:]) @ Encoder("onnx", exported_int8.path, device="cpu").paragraph(sentences)[0]
    assert [r["id"] for r in found] == [list(a["sample_id"][:])[i] for i in np.argsort(-scores, kind="stable")[:3]]
    out = CliRunner().invoke(app, ["search", "--workdir", str(wd.root), "--index", index.key[:16], *sentences, "--top-k", "2"])
    assert out.exit_code == 0 and out.output.startswith("1. "), out.output
