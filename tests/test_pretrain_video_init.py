"""Stage 1's video encoder from a Swin-2D checkpoint (docs/method.md §2; ``PretrainConfig.video_init``): the
weights the trainer starts from, the run summary, one-line refusals, resume, the stage key.

lfvila-tiny's video encoder (16 wide, 12 blocks as 2/2/2/2/2/2, merges after layers 0, 1, 4,
heads 1/2/4/4/4/8) is exactly a Swin 16 wide with depths 2/2/6/2 and heads 1/2/4/8 (its 6-block
third stage is our layers 2–4), so the tiny preset itself is the honest target: every tensor of
its video encoder, the clip head included, comes from that tiny Swin."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lfvila_cli.pipeline.artifacts import compute_key
from lfvila_cli.config import to_dict
from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.example import ExampleConfig
from lfvila_cli.data.loader_config import LoaderConfig
from lfvila_cli.data.prepare import PrepareConfig, prepare
from lfvila_cli.errors import ConfigError, LfvilaError
from lfvila_cli.model.lfvila import build_model
from lfvila_cli.model.presets import get_preset
from lfvila_cli.model.video_encoder import VideoEncoder, VideoEncoderConfig
from lfvila_cli.model.weights import load_swin2d
from lfvila_cli.pipeline.stage import resolve_config
from lfvila_cli.stages import STAGES
from lfvila_cli.train import engine
from lfvila_cli.train.config import TrainConfig
from lfvila_cli.model.pretrained import load_weights
from lfvila_cli.train.pretrain import PretrainConfig, init_video_encoder, run_pretrain

K, H, W = 8, 64, 96  # the tiny preset's frames
TINY_SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2, 6, 2], num_heads=[1, 2, 4, 8], window_size=2)
QKV = "layers.0.blocks.0.attn.qkv.weight"


def swin_state(**overrides) -> dict[str, torch.Tensor]:
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    model = SwinModel(SwinConfig(**{**TINY_SWIN, **overrides}))
    with torch.no_grad():  # bias tables start at zero: make them matter
        for name, param in model.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def swin_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("swin") / "swin_tiny.pth"
    torch.save(swin_state(), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_init")
    example = ExampleConfig(
        seed=0, train_videos=8, val_videos=0, test_videos=0, min_clips=4, max_clips=5,
        clip_seconds=1.0, fps=8, height=H, width=W, qa_per_video=0,
    )
    corpus_dir = root / "corpus"
    prepare(PrepareConfig(source="example", example=example), corpus_dir)
    store = str(root / "frames.zarr")
    summary = cache_frames(corpus_dir / "samples.jsonl", CacheConfig(frames_per_segment=K, height=H, width=W, workers=1), store, progress=False)
    assert summary["failed"] == 0
    return {"root": root, "corpus": corpus_dir / "samples.jsonl", "store": store}


def _cfg(steps: int, video_init: str = "", **train) -> PretrainConfig:
    return PretrainConfig(
        stage=1,
        loader=LoaderConfig(max_tokens=16),
        train=TrainConfig(**{"lr": 5e-4, "micro_batch": 4, "epochs": 50, "max_steps": steps, "precision": "fp32", "checkpoint_every": 1000, **train}),
        val_every=0,
        workers=0,
        video_init=video_init,
    )


def swin_initialised_encoder(path) -> dict[str, torch.Tensor]:
    """What ``load_swin2d`` gives a fresh tiny-preset video encoder (independent of run_pretrain)."""
    encoder = VideoEncoder(get_preset("lfvila-tiny", "stage1", text_model="random").video)
    report = load_swin2d(encoder, path)
    assert report.missing == [] and report.unexpected == []  # the tiny Swin fits the whole encoder
    return {k: v.clone() for k, v in encoder.state_dict().items()}


@pytest.fixture(scope="module")
def trained(data, swin_file, tmp_path_factory):
    """A 2-step stage-1 run with video_init, checkpointing every step; the video encoder's
    weights as the Trainer receives them are recorded (before any step)."""
    seen: list[dict] = []
    original = engine.Trainer.__init__

    def recording(self, model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.video_encoder.state_dict().items()})
        original(self, model, *args, **kwargs)

    out = tmp_path_factory.mktemp("run") / "s1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.Trainer, "__init__", recording)
        summary = run_pretrain(_cfg(2, str(swin_file), checkpoint_every=1, keep_last_k=3), data["corpus"], data["store"], out, progress=False)
    return out, summary, seen


def test_stage1_trains_from_the_swin_weights(trained, swin_file):
    """(a) The video encoder the trainer starts from is exactly what load_swin2d gives a fresh
    encoder (every tensor, e.g. the first block's qkv weight), not the random init."""
    _, summary, seen = trained
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    assert len(seen) == 1
    expected = swin_initialised_encoder(swin_file)
    assert set(seen[0]) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(seen[0][key], tensor), key
    torch.manual_seed(0)
    random = build_model(get_preset("lfvila-tiny", "stage1", text_model="random")).video_encoder.state_dict()
    assert not torch.equal(random[QKV], expected[QKV])


def test_summary_records_the_import(trained, swin_file):
    """(b) The run summary holds the import report: file, counts, transformations."""
    _, summary, _ = trained
    record = summary["video_init"]
    assert record["path"] == str(swin_file) and record["source"] == str(swin_file)
    assert record["loaded"] == 176 and record["missing"] == [] and record["skipped"] == {}
    assert record["summary"] == f"{swin_file}: loaded 176 tensors; 0 missing, 0 unexpected, 0 skipped"
    assert "patch_embed.proj.weight: [4, 4] kernel tile-inflated to [1, 8, 8]" in record["notes"]
    assert "clip_merge <- layers.2.downsample (also our layers.4.downsample)" in record["notes"]


def test_resume_with_video_init_ends_at_the_uninterrupted_weights(trained, data, swin_file):
    """A resumed run initialises from the file again, then its checkpoint loads over that: the
    weights end where the uninterrupted run's do."""
    import shutil

    out, _, _ = trained
    full = load_weights(out / "model.safetensors")
    resumed_dir = out.parent / "resumed"
    shutil.copytree(out, resumed_dir)
    shutil.rmtree(resumed_dir / "run" / "checkpoints" / "step_00000002")
    for name in ("model.safetensors", "config.json"):
        (resumed_dir / name).unlink()
    cfg = _cfg(2, str(swin_file), checkpoint_every=1, keep_last_k=3)
    cfg.tokenizer = str(out / "tokenizer")
    summary = run_pretrain(cfg, data["corpus"], data["store"], resumed_dir, progress=False, resume="auto")
    assert summary["steps"] == 2 and summary["steps_this_run"] == 1
    resumed = load_weights(resumed_dir / "model.safetensors")
    for name, tensor in full.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6, rtol=0), name
    assert not torch.equal(full["video_encoder." + QKV], swin_initialised_encoder(swin_file)[QKV])  # it trained


def test_init_draws_no_random_numbers_and_allows_only_a_missing_clip_head(swin_file):
    """Every rank loading the same file gets the same weights, and the training RNG stream is the
    one a random-init run has. A Swin whose merges are narrower than the clip head (the
    test_weights encoder shape) leaves only clip_merge/clip_norm missing, which is allowed."""
    model = build_model(get_preset("lfvila-tiny", "stage1", text_model="random"))
    state = torch.get_rng_state()
    init_video_encoder(model, str(swin_file))
    assert torch.equal(torch.get_rng_state(), state)

    small = dict(image_size=32, patch_size=4, embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=2)
    video = VideoEncoderConfig(patch_size=[1, 8, 8], embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 4], temporal_windows=[2, 2, 4],
                               spatial_window=[2, 2], merge_after=[0, 1], frames_per_clip=2, clip_feature_layer=1, drop_path_rate=0.0)
    record = init_video_encoder(SimpleNamespace(video_encoder=VideoEncoder(video)), swin_state(**small))
    assert record["missing"] == ["clip_merge.norm.bias", "clip_merge.norm.weight", "clip_merge.reduction.weight",
                                 "clip_norm.bias", "clip_norm.weight"]


def test_a_checkpoint_of_another_architecture_is_a_one_line_error_naming_the_file(data, tmp_path):
    """(c) Another width, a missing block tensor, a non-Swin file: each stops the run before
    training with one line naming the key and the file."""
    wide = tmp_path / "swin_wide.pth"
    torch.save(swin_state(embed_dim=8), wide)
    with pytest.raises(LfvilaError) as caught:
        run_pretrain(_cfg(1, str(wide)), data["corpus"], data["store"], tmp_path / "wide", progress=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"config key 'video_init': {wide}: ")
    assert message.endswith("'patch_embed.proj.weight' has shape [8, 3, 1, 8, 8] in the checkpoint but [16, 3, 1, 8, 8] in the model")
    assert not (tmp_path / "wide" / "model.safetensors").exists()

    state = swin_state()
    del state["encoder.layers.1.blocks.0.layernorm_before.weight"]
    holed = tmp_path / "swin_holed.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(holed))
    with pytest.raises(LfvilaError, match=r"^config key 'video_init': .*swin_holed\.safetensors: incomplete import: 1 model keys missing "
                                          r"\(layers\.1\.blocks\.0\.norm1\.weight\)$"):
        init_video_encoder(build_model(get_preset("lfvila-tiny", "stage1", text_model="random")), str(holed))

    bert = tmp_path / "bert.bin"
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(10, 4)}, bert)
    with pytest.raises(LfvilaError, match=rf"^config key 'video_init': {bert}: 0 Swin blocks but the video encoder has 12"):
        init_video_encoder(build_model(get_preset("lfvila-tiny", "stage1", text_model="random")), str(bert))
    with pytest.raises(LfvilaError, match=r"^config key 'video_init': .*nowhere\.pth: no such checkpoint file$"):
        run_pretrain(_cfg(1, str(tmp_path / "nowhere.pth")), data["corpus"], data["store"], tmp_path / "none", progress=False)


def _key(stage_name: str, overrides=()) -> tuple[str, dict]:
    stage = STAGES[stage_name]
    config = resolve_config(stage, overrides=list(overrides))
    payload = stage.key_payload(config, {})
    return compute_key(payload), payload


def test_the_stage_key_follows_the_checkpoint_bytes_and_is_unchanged_when_unset(swin_file, tmp_path):
    """(d) Unset: the payload is exactly the one made before the key existed (no video_init in the
    config, no fingerprints). Set: the file's digest keys the stage, so one changed byte under
    the same path changes the key; a directory is keyed by the file read from it."""
    key_unset, payload = _key("pretrain1")
    config = resolve_config(STAGES["pretrain1"])
    # keyed only when set, as video_init: features; val_precision only when it changes validation
    # (fp32 training, not validated in fp32), which the commands' fp32 default does
    before = {k: v for k, v in to_dict(config).items() if k not in ("workers", "video_init", "features")}
    before["train"] = {k: v for k, v in before["train"].items() if k != "tensorboard"}  # keyed only when set, as video_init
    before["objectives"] = {k: v for k, v in before["objectives"].items() if k != "vtm_order_negatives"}  # likewise
    assert payload == {"stage": "pretrain1", "version": 2, "config": before, "inputs": {}, "fingerprints": {}}
    assert _key("pretrain1", ["video_init="])[0] == key_unset
    fp32, payload_fp32 = _key("pretrain1", ["val_precision=fp32"])
    assert fp32 != key_unset and "val_precision" not in payload_fp32["config"]  # the key made before val_precision existed

    path = tmp_path / "swin.pth"
    path.write_bytes(swin_file.read_bytes())
    key_a, payload_a = _key("pretrain1", [f"video_init={path}"])
    assert key_a != key_unset and set(payload_a["fingerprints"]) == {"video_init"}
    assert _key("pretrain1", [f"video_init={path}"])[0] == key_a  # stable
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    key_b, _ = _key("pretrain1", [f"video_init={path}"])
    assert key_b != key_a

    folder = tmp_path / "hf"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(swin_state(), str(folder / "model.safetensors"))
    _, payload_dir = _key("pretrain1", [f"video_init={folder}"])
    from lfvila_cli.pipeline.artifacts import file_digest

    assert payload_dir["fingerprints"] == {"video_init": file_digest(str(folder / "model.safetensors"))}
    assert _key("pretrain2")[1]["fingerprints"] == {}  # stage 2 keys as before


def test_video_init_with_stage_2_is_a_config_error(data, tmp_path, swin_file):
    """(e) Stage 2 starts from the stage-1 model: video_init there is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=r"^config key 'video_init': applies to stage 1 only") as caught:
        PretrainConfig(stage=2, video_init=str(swin_file))
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^config key 'video_init': applies to stage 1 only"):
        resolve_config(STAGES["pretrain2"], overrides=[f"video_init={swin_file}"])
    cfg = copy.deepcopy(_cfg(1))
    cfg.stage, cfg.video_init = 2, str(swin_file)  # edited after validation: run_pretrain checks again
    with pytest.raises(ConfigError, match=r"^config key 'video_init': applies to stage 1 only"):
        run_pretrain(cfg, data["corpus"], data["store"], tmp_path / "s2", init_from=tmp_path, progress=False)
