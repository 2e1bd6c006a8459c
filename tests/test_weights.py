"""Weight import: the authors' released checkpoint layouts (fixture key lists), safe loading,
Swin-2D inflation (exact against transformers' SwinModel on repeated frames), BERT init."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lfvila_cli.errors import LfvilaError
from lfvila_cli.model.lfvila import build_model
from lfvila_cli.model.presets import BERT_TINY, get_preset
from lfvila_cli.model.video_encoder import VideoEncoder, VideoEncoderConfig
from lfvila_cli.model.weights import (
    OFFICIAL_EXCLUSIONS,
    WeightImportError,
    canonical_swin2d,
    export_official_state_dict,
    inflate_relative_position_table,
    inflate_swin2d,
    load_bert_weights,
    load_official_checkpoint,
    load_swin2d,
    read_state_dict,
)

# The authors' key lists (name<TAB>[shape]<TAB>dtype), written by instantiating their classes
# (copied from tests/fixtures/official-checkpoint-keys; its README says how they were made).
KEYS = Path(__file__).resolve().parent / "fixtures" / "official-checkpoint-keys"

RELEASES = [
    ("stage1_keys.tsv", "stage1", None),
    ("stage2_keys.tsv", "stage2", None),
    ("retrieval_keys.tsv", "retrieval", None),
    ("qa_multichoice_keys.tsv", "qa-multichoice", None),
    ("qa_classification_keys.tsv", "qa-classification", 2),
    ("qa_classification_actnetqa_keys.tsv", "qa-classification", 1654),
]
EXCLUSION_REASONS = {reason for _, reason in OFFICIAL_EXCLUSIONS}
# Parts the release's retrieval model carried but never used; our retrieval layout drops them.
RETRIEVAL_DROPPED = {"the model has no mlm_head (config key 'heads.mlm')", "the model has no vtm_head (config key 'heads.vtm')"}


def release_keys(name: str) -> dict[str, tuple[list[int], torch.dtype]]:
    out = {}
    for line in (KEYS / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        out[key] = ([int(d) for d in shape.strip("[]").split(",") if d], getattr(torch, dtype))
    return out


def meta_state(keys: dict, dtype: torch.dtype | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors with the release's names, shapes and dtypes, on the meta device (no memory)."""
    return {
        prefix + k: torch.empty(shape, dtype=dt if (dtype is None or not dt.is_floating_point) else dtype, device="meta")
        for k, (shape, dt) in keys.items()
    }


def base_model(variant: str, num_labels=None):
    return build_model(get_preset("lfvila-base", variant, num_labels=num_labels, text_model="random"), "meta")


# --------------------------------------------------------------------------- the authors' checkpoints


@pytest.mark.parametrize("name, variant, num_labels", RELEASES)
@pytest.mark.parametrize("prefix, dtype", [("", torch.float16), ("module.", torch.float32)])
def test_release_layout_imports_completely(name, variant, num_labels, prefix, dtype):
    keys = release_keys(name)
    model = base_model(variant, num_labels)
    assert model.config.video.global_pooling == "mean"
    report = load_official_checkpoint(model, meta_state(keys, dtype, prefix), strict=True)
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == sorted(model.state_dict())
    # the importer switches the video feature to the release's pooling, in the config it is saved with
    assert model.config.video.global_pooling == "release" and model.video_encoder.config is model.config.video
    allowed = EXCLUSION_REASONS | (RETRIEVAL_DROPPED if variant == "retrieval" else set())
    assert set(report.skipped.values()) <= allowed
    buffers = [k for k, (_, dt) in keys.items() if not dt.is_floating_point]
    assert len(buffers) == 26 and set(buffers) <= set(report.skipped)
    assert "text_encoder.cls.predictions.decoder.bias" in report.skipped or variant not in ("stage1", "stage2")
    assert any("rows 0..399 of 512" in note for note in report.notes)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # cast to the model's dtype


@pytest.mark.parametrize("name, variant, num_labels", RELEASES)
def test_export_writes_exactly_the_release_layout(name, variant, num_labels):
    keys = release_keys(name)
    exported = export_official_state_dict(base_model(variant, num_labels))
    got = {k: (list(v.shape), v.dtype) for k, v in exported.items()}
    if variant == "retrieval":  # the release's unused MLM/VTM heads are not part of ours
        keys = {k: v for k, v in keys.items() if not k.startswith(("text_encoder.cls.", "text_encoder.seq_relationship."))}
    assert got == keys


def test_shape_mismatch_is_refused_in_one_line_naming_key_and_shapes():
    state = meta_state(release_keys("stage1_keys.tsv"))
    state["video_encoder.layers.2.blocks.3.attn.qkv.weight"] = torch.empty(1536, 256, device="meta")
    with pytest.raises(WeightImportError) as caught:
        load_official_checkpoint(base_model("stage1"), state)
    message = str(caught.value)
    assert "\n" not in message
    assert "'video_encoder.layers.2.blocks.3.attn.qkv.weight' has shape [1536, 256] in the checkpoint but [1536, 512]" in message


def test_renamed_key_mismatch_names_both_names():
    state = meta_state(release_keys("qa_classification_keys.tsv"))  # VIOLIN: 2 labels
    with pytest.raises(WeightImportError, match=re.escape(
        "'text_encoder.classifier.weight' (for 'classification_head.classifier.weight') has shape [2, 1024] "
        "in the checkpoint but [1654, 1024] in the model"
    )):
        load_official_checkpoint(base_model("qa-classification", 1654), state)


def test_qa_model_from_a_stage2_file_skips_pretraining_heads_and_misses_only_qa_heads():
    report = load_official_checkpoint(base_model("qa-multichoice"), meta_state(release_keys("stage2_keys.tsv")))
    assert report.unexpected == []
    assert report.missing == [
        "multiple_choice_head.classifier.bias", "multiple_choice_head.classifier.weight",
        "multiple_choice_head.span_classifier.bias", "multiple_choice_head.span_classifier.weight",
    ]
    skipped_parts = {k.split(".")[0] if not k.startswith("text_encoder.") else ".".join(k.split(".")[:2])
                     for k, why in report.skipped.items() if why not in EXCLUSION_REASONS}
    assert skipped_parts == {"text_encoder.cls", "text_encoder.seq_relationship", "video_local_proj",
                             "text_local_proj", "video_global_proj", "text_global_proj"}
    with pytest.raises(WeightImportError, match="incomplete import: 4 model keys missing"):
        report.check()


def test_stage1_model_from_a_stage2_file_skips_the_cross_modal_layers():
    report = load_official_checkpoint(base_model("stage1"), meta_state(release_keys("stage2_keys.tsv")))
    assert report.missing == [] and report.unexpected == []
    layer_reasons = {why for k, why in report.skipped.items() if ".encoder.layer." in k}
    assert layer_reasons == {"the model holds 12 entries of text_encoder.bert.encoder.layer (config key 'text.keep_layers')"}
    assert sum(".encoder.layer." in k for k in report.skipped) == 12 * 16
    assert "video_token_pos.s_pos_embed" in report.skipped


def test_unknown_keys_are_reported_as_unexpected():
    state = meta_state(release_keys("stage1_keys.tsv"))
    state["text_encoder.extra_head.weight"] = torch.empty(3, device="meta")
    state["logit_scale"] = torch.empty((), device="meta")
    report = load_official_checkpoint(base_model("stage1"), state)
    assert report.unexpected == ["logit_scale", "text_encoder.extra_head.weight"]
    with pytest.raises(WeightImportError, match="2 unexpected keys"):
        report.check()


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(1)
    source = build_model(get_preset("lfvila-tiny", "stage2"))
    torch.manual_seed(2)
    target = build_model(get_preset("lfvila-tiny", "stage2"))
    return source, target


def test_tiny_round_trip_through_a_release_file_restores_every_value(tiny_pair, tmp_path):
    source, target = tiny_pair
    exported = export_official_state_dict(source, dtype=torch.float16)
    # The two MLM bias names share one tensor, as in the release.
    assert exported["text_encoder.cls.predictions.bias"] is exported["text_encoder.cls.predictions.decoder.bias"]
    path = tmp_path / "pytorch_model.bin"
    torch.save(exported, path)
    report = load_official_checkpoint(target, path, strict=True)
    assert report.source == str(path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value.half().float(), rtol=0, atol=0, msg=key)
    # The 400 paragraph rows came back; the padding rows were BERT's (never read).
    positions = exported["sent_embedding.position_embeddings.weight"]
    bert = source.text_encoder.bert.embeddings.position_embeddings.weight
    assert positions.shape[0] == bert.shape[0] == 512
    torch.testing.assert_close(positions[256:].float(), bert[256:].detach().half().float())


def test_fp32_safetensors_and_wrapped_checkpoints_load(tiny_pair, tmp_path):
    from safetensors.torch import save_file

    source, _ = tiny_pair
    exported = export_official_state_dict(source, dtype=None)
    exported.pop("text_encoder.cls.predictions.decoder.bias")  # safetensors refuses shared storage
    save_file({k: v.contiguous() for k, v in exported.items()}, str(tmp_path / "model.safetensors"))
    torch.save({"module": {"module." + k: v for k, v in exported.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    for path in (tmp_path, tmp_path / "wrapped.pt"):
        torch.manual_seed(3)
        target = build_model(get_preset("lfvila-tiny", "stage2"))
        load_official_checkpoint(target, path, strict=True)
        for key, value in source.state_dict().items():
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0, msg=key)


def tiny_inputs(batch: int = 2):
    g = torch.Generator().manual_seed(5)
    video = torch.randn(batch, 16, 3, 64, 96, generator=g)
    ids = torch.randint(1000, 30522, (batch, 2, 8), generator=g)
    ids[..., 0], ids[..., -1] = 101, 102
    mask = torch.ones_like(ids)
    mask[0, 1, 5:] = 0
    return video, ids * mask, mask


def test_a_model_built_on_meta_loads_its_own_export_exactly(tiny_pair):
    source, _ = tiny_pair
    source.eval()
    exported = {k: v.clone() for k, v in export_official_state_dict(source, dtype=None).items()}
    target = build_model(get_preset("lfvila-tiny", "stage2"), "meta")
    # Non-persistent index buffers (no state dict restores them) are recomputed after the load.
    assert target.text_encoder.bert.embeddings.position_ids.is_meta
    report = load_official_checkpoint(target, exported, strict=True)
    assert report.missing == [] and report.unexpected == []
    tensors = [*target.named_parameters(), *target.named_buffers()]
    assert [n for n, t in tensors if t.is_meta] == []
    assert not any("fresh initialisation" in note for note in report.notes)  # index buffers are not weights
    # The importer takes the file for the authors' weights and pools as they did; these are ours
    # in their layout, so they are compared under our pooling.
    assert target.config.video.global_pooling == "release"
    target.config.video.global_pooling = source.config.video.global_pooling
    for name, buffer in source.named_buffers():
        torch.testing.assert_close(target.get_buffer(name), buffer, rtol=0, atol=0, msg=name)
    target.eval()
    video, ids, mask = tiny_inputs()
    with torch.no_grad():
        want_text, got_text = source.encode_text(ids, mask), target.encode_text(ids, mask)
        want_video, got_video = source.encode_video(video), target.encode_video(video)
        want_fused = source(video, ids, mask)
        got_fused = target(video, ids, mask)
    assert torch.isfinite(got_text.features.token_states).all()
    for want, got in [
        (want_text.paragraph_embedding, got_text.paragraph_embedding),
        (want_text.sentence_embeddings, got_text.sentence_embeddings),
        (want_text.features.token_states, got_text.features.token_states),
        (want_video.global_embedding, got_video.global_embedding),
        (want_video.clip_embeddings, got_video.clip_embeddings),
        (want_fused.mlm_logits, got_fused.mlm_logits),
        (want_fused.vtm_logits, got_fused.vtm_logits),
    ]:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_qa_model_built_on_meta_from_a_stage2_file_initialises_the_missing_heads(tiny_pair):
    source, _ = tiny_pair
    exported = {k: v.clone() for k, v in export_official_state_dict(source, dtype=None).items()}
    torch.manual_seed(0)
    target = build_model(get_preset("lfvila-tiny", "qa-multichoice"), "meta")
    report = load_official_checkpoint(target, exported)
    head = target.multiple_choice_head
    assert report.missing == sorted(f"multiple_choice_head.{n}" for n, _ in head.named_parameters())
    assert any("fresh initialisation" in note for note in report.notes)
    assert not any(t.is_meta for t in [*target.parameters(), *target.buffers()])
    # The head's fresh initialisation: BERT's rule (normal(0, initializer_range) weights, zero biases).
    weight = head.classifier.weight
    init_std = target.text_encoder.bert.config.initializer_range
    assert torch.isfinite(weight).all() and weight.std() > 0 and weight.abs().max() < 5 * init_std
    assert torch.equal(head.classifier.bias, torch.zeros_like(head.classifier.bias))
    # The loaded parts are the source's.
    torch.testing.assert_close(target.video_encoder.norm.weight, source.video_encoder.norm.weight, rtol=0, atol=0)
    video, ids, mask = tiny_inputs()
    with torch.no_grad():
        out = target.eval()(video, ids[:, None].expand(-1, 3, -1, -1), mask[:, None].expand(-1, 3, -1, -1))
    assert torch.isfinite(out.choice_logits).all() and torch.isfinite(out.span_logits).all()


def test_a_module_with_no_initialisation_rule_left_on_meta_is_refused(tiny_pair, monkeypatch):
    from lfvila_cli.model import lfvila

    source, _ = tiny_pair
    exported = {k: v.clone() for k, v in export_official_state_dict(source, dtype=None).items()}
    exported.pop("text_encoder.classifier.weight", None)
    target = build_model(get_preset("lfvila-tiny", "qa-multichoice"), "meta")
    monkeypatch.setattr(lfvila, "materialise_meta", lambda model, device="cpu": [])
    with pytest.raises(WeightImportError, match="still on the meta device.*multiple_choice_head"):
        load_official_checkpoint(target, exported)


def release_clip_head_state():
    """A release-layout file with the clip head (local_feat_proj, norm_local)."""
    torch.manual_seed(4)
    intra = build_model(get_preset("lfvila-tiny", "stage1"))
    return export_official_state_dict(intra, dtype=None)


def test_final_clip_features_skip_the_release_clip_head_with_the_reason():
    state = release_clip_head_state()
    assert any(k.startswith("video_encoder.local_feat_proj.") for k in state)
    config = get_preset("lfvila-tiny", "stage1")
    config.video.clip_features = "final"
    config.projections.clip_dim = config.video.clip_feature_dim
    model = build_model(config)
    report = load_official_checkpoint(model, state, strict=True)
    assert report.unexpected == []
    clip_head = {k: why for k, why in report.skipped.items() if k.startswith(("video_encoder.local_feat_proj.", "video_encoder.norm_local."))}
    assert sorted(clip_head) == sorted(k for k in state if k.startswith(("video_encoder.local_feat_proj.", "video_encoder.norm_local.")))
    assert {why for why in clip_head.values()} == {
        "the release never used its clip head: its forward reset local_feat each layer "
        "(video.clip_features: final reads the final-layer features, as the release did)"
    }


def test_intra_clip_features_load_the_release_clip_head_with_a_note_that_it_was_never_trained():
    state = release_clip_head_state()
    model = build_model(get_preset("lfvila-tiny", "stage1"))
    report = load_official_checkpoint(model, state, strict=True)
    assert "video_encoder.clip_merge.reduction.weight" in report.loaded
    notes = [n for n in report.notes if "local_feat_proj" in n]
    assert len(notes) == 1 and "never trained" in notes[0] and "clip_features: final" in notes[0]


class Payload:
    """Unpickling this would create a file; weights_only loading must refuse before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_arbitrary_objects_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.bin"
    with path.open("wb") as f:
        pickle.dump({"video_encoder.norm.weight": torch.ones(2), "payload": Payload(marker)}, f, protocol=2)
    with pytest.raises(WeightImportError, match="evil.bin: refused: the file holds objects other than tensors"):
        read_state_dict(path)
    assert not marker.exists()
    torch.save({"weight": torch.ones(1), "payload": Payload(marker)}, tmp_path / "evil2.pt")
    with pytest.raises(WeightImportError, match="refused"):
        read_state_dict(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(WeightImportError, match="no such checkpoint file"):
        read_state_dict(tmp_path / "absent.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightImportError, match="junk.bin: "):
        read_state_dict(tmp_path / "junk.bin")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(WeightImportError, match="holds no state dict"):
        read_state_dict(tmp_path / "meta.pt")
    assert issubclass(WeightImportError, LfvilaError)


# --------------------------------------------------------------------------- Swin-2D inflation

SWIN = dict(image_size=32, patch_size=4, embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=2,
            drop_path_rate=0.0)
# Our encoder shaped like that Swin: same blocks, widths, heads and merges; spatial window 2×2;
# 2 frames per clip, temporal windows 2, 2 and a global top layer over 4 frames.
VIDEO = dict(patch_size=[1, 8, 8], embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 4], temporal_windows=[2, 2, 4],
             spatial_window=[2, 2], merge_after=[0, 1], frames_per_clip=2, clip_feature_layer=1, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def swin():
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    model = SwinModel(SwinConfig(**SWIN)).eval()
    with torch.no_grad():  # bias tables start at zero: make them matter
        for name, param in model.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_()
    return model


def original_release_layout(hf_state: dict) -> dict:
    """transformers' SwinModel names -> the original Swin release's (qkv packed), written out
    independently of the importer's rules."""
    out, qkv = {}, {}
    for key, value in hf_state.items():
        name = key.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.")
        name = name.replace("embeddings.norm.", "patch_embed.norm.").replace("encoder.layers.", "layers.")
        name = name.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
        name = name.replace("attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table")
        name = name.replace("attention.o_proj", "attn.proj")
        name = re.sub(r"^layernorm\.", "norm.", name)
        found = re.match(r"(.*)\.attention\.([qkv])_proj\.(weight|bias)$", name)
        if found:
            qkv.setdefault(f"{found[1]}.attn.qkv.{found[3]}", {})[found[2]] = value
            continue
        out[name] = value
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    # The original release also stores these buffers; they must be skipped.
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 4, 4)
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    out["head.weight"], out["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    return {"model": out}


def tile_patches(image: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 2H, 2W): every patch×patch patch tiled 2×2 into its 2patch×2patch patch."""
    B, C, H, W = image.shape
    p = image.reshape(B, C, H // patch, patch, W // patch, patch)
    p = p.repeat(1, 1, 1, 2, 1, 2)  # (B, C, H/p, 2p, W/p, 2p): the tile along each patch axis
    return p.reshape(B, C, 2 * H, 2 * W)


@pytest.mark.parametrize("mode", ["tile", "nearest"])
@torch.no_grad()
def test_inflated_encoder_reproduces_2d_swin_on_repeated_frames(swin, mode):
    """With T equal frames every window holds Wt copies of each spatial token, and the inflated
    bias does not depend on the time offset, so softmax splits each key's weight evenly over its
    copies: exactly 2-D window attention. The patch kernel matches when each 8×8 patch is its
    4×4 patch tiled ("tile") or each pixel repeated 2×2 ("nearest", a 2× nearest upsampling).
    Maps here stay multiples of the window (no padding, which the two treat differently).
    (A bias term depending on the time offset alone would cancel in the softmax too; the exact
    repetition is checked on the table itself below.)"""
    encoder = VideoEncoder(VideoEncoderConfig(**VIDEO)).eval()
    report = load_swin2d(encoder, swin.state_dict(), patch_inflation=mode)
    assert report.unexpected == [] and report.skipped == {}
    assert report.missing == ["clip_merge.norm.bias", "clip_merge.norm.weight", "clip_merge.reduction.weight",
                              "clip_norm.bias", "clip_norm.weight"]  # no Swin merge has the clip head's width
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    frame = tile_patches(image) if mode == "tile" else F.interpolate(image, scale_factor=2, mode="nearest")
    video = frame[:, None].expand(2, 4, 3, 64, 64)
    expected = swin(pixel_values=image).last_hidden_state.reshape(2, 2, 2, 32)  # (B, h, w, C)
    tokens = encoder(video).tokens  # (B, T, h, w, C)
    for t in range(4):
        torch.testing.assert_close(tokens[:, t], expected, rtol=1e-5, atol=1e-5)
    # The other kernel inflation does not reproduce it on this input.
    other = tile_patches(image) if mode == "nearest" else F.interpolate(image, scale_factor=2, mode="nearest")
    assert not torch.allclose(encoder(other[:, None].expand(2, 4, 3, 64, 64)).tokens[:, 0], expected, atol=1e-3)


def test_both_swin_layouts_inflate_identically(swin):
    config = VideoEncoderConfig(**VIDEO)
    from_hf, _ = inflate_swin2d(swin.state_dict(), config)
    state, _ = read_state_dict(original_release_layout(swin.state_dict()))
    from_original, report = inflate_swin2d(state, config)
    assert set(from_hf) == set(from_original) and len(from_hf) == 90
    for key in from_hf:
        torch.testing.assert_close(from_hf[key][1], from_original[key][1], rtol=0, atol=0)
    assert set(report.skipped) == {"layers.0.blocks.1.attn_mask", "layers.0.blocks.0.attn.relative_position_index",
                                   "head.weight", "head.bias"}
    # transformers' on-disk (4.x) names, as in the hub's Swin checkpoints.
    on_disk = {}
    for key, value in swin.state_dict().items():
        key = re.sub(r"attention\.([qkv])_proj", lambda m: "attention.self." + {"q": "query", "k": "key", "v": "value"}[m[1]], key)
        key = key.replace("attention.o_proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense")
        key = key.replace("mlp.fc2", "output.dense")
        key = key.replace("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table")
        on_disk["swin." + key] = value
    canonical_disk, _ = canonical_swin2d(on_disk)
    canonical_hf, _ = canonical_swin2d(swin.state_dict())
    assert canonical_disk.keys() == canonical_hf.keys()


def test_swin_b_inflates_into_the_whole_base_encoder_on_meta():
    """Swin-B (22k, 384 px, window 12): 24 blocks -> our 24, 3 merges -> after layers 0, 1, 4."""
    from transformers import SwinConfig, SwinModel

    with torch.device("meta"):
        swin_b = SwinModel(SwinConfig(image_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12))
        encoder = VideoEncoder(VideoEncoderConfig())
    report = load_swin2d(encoder, swin_b.state_dict())
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == sorted(encoder.state_dict())
    assert "clip_merge <- layers.2.downsample (also our layers.4.downsample)" in report.notes
    assert any("23x23 resized (bicubic) to 5x9, repeated for 63 time offsets" in n for n in report.notes)
    assert encoder.layers[5].blocks[1].attn.relative_position_bias_table.shape == (63 * 5 * 9, 32)
    assert encoder.patch_embed.proj.weight.shape == (128, 3, 1, 8, 8)


def test_relative_position_table_is_resized_bicubically_and_repeated_in_time():
    table = torch.randn(23 * 23, 3)
    out = inflate_relative_position_table(table, (4, 3, 5))
    assert out.shape == (7 * 5 * 9, 3)
    plane = F.interpolate(table.t().reshape(1, 3, 23, 23), size=(5, 9), mode="bicubic", align_corners=False)
    plane = plane.reshape(3, 45).t()
    for t in range(7):
        torch.testing.assert_close(out[t * 45 : (t + 1) * 45], plane)
    constant = inflate_relative_position_table(torch.full((9, 2), 0.5), (2, 3, 5))
    torch.testing.assert_close(constant, torch.full((3 * 45, 2), 0.5))


def test_swin_with_a_different_block_count_is_refused(swin):
    config = VideoEncoderConfig(**{**VIDEO, "depths": [2, 2, 4], "temporal_windows": [2, 2, 4]})
    with pytest.raises(WeightImportError, match=r"6 Swin blocks but the video encoder has 8 \(config key 'video.depths'"):
        inflate_swin2d(swin.state_dict(), config)


# --------------------------------------------------------------------------- BERT


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(5)
    bert = BertForPreTraining(BertConfig(**BERT_TINY))
    path = tmp_path_factory.mktemp("bert")
    bert.save_pretrained(path)
    return path, {k: v.clone() for k, v in bert.state_dict().items()}


def test_bert_weights_load_into_text_layers_paragraph_positions_and_mlm_head(tiny_bert_dir):
    path, state = tiny_bert_dir
    torch.manual_seed(6)
    model = build_model(get_preset("lfvila-tiny", "stage1"))  # keeps 2 of the 4 layers
    report = load_bert_weights(model, path)
    assert report.unexpected == []
    assert {k for k in report.missing if k.startswith(("text_encoder.", "mlm_head."))} == {
        "text_encoder.paragraph_embedding.sentence_embeddings.weight",  # not in BERT: fresh
        "text_encoder.paragraph_embedding.norm.weight",
        "text_encoder.paragraph_embedding.norm.bias",
    }
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith("bert.") and ".layer.2." not in key and ".layer.3." not in key and "position_ids" not in key:
            torch.testing.assert_close(own["text_encoder." + key], value, rtol=0, atol=0, msg=key)
    assert {why for k, why in report.skipped.items() if ".layer." in k} == {
        "the model holds 2 entries of text_encoder.bert.encoder.layer (config key 'text.keep_layers')"
    }
    rows = model.text_encoder.paragraph_embedding.position_embeddings.weight
    torch.testing.assert_close(rows, state["bert.embeddings.position_embeddings.weight"][: rows.shape[0]], rtol=0, atol=0)
    torch.testing.assert_close(own["mlm_head.transform.dense.weight"], state["cls.predictions.transform.dense.weight"])
    torch.testing.assert_close(own["mlm_head.decoder.weight"], state["bert.embeddings.word_embeddings.weight"])
    assert any("cls.seq_relationship" in k for k in report.skipped)  # NSP labels are not VTM's


def test_text_model_from_a_directory_initialises_paragraph_positions_by_construction(tiny_bert_dir):
    path, state = tiny_bert_dir
    model = build_model(get_preset("lfvila-tiny", "stage2", text_model=str(path)))
    torch.testing.assert_close(
        model.text_encoder.bert.encoder.layer[3].output.dense.weight, state["bert.encoder.layer.3.output.dense.weight"]
    )
    rows = model.text_encoder.paragraph_embedding.position_embeddings.weight
    assert rows.shape[0] == 8 * 32
    torch.testing.assert_close(rows, state["bert.embeddings.position_embeddings.weight"][:256], rtol=0, atol=0)
