"""The composed LF-VILA model and its presets: every preset builds, the tiny one trains each
stage on random inputs, configs round-trip, parameter counts match the authors' release."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfvila_cli.config import from_dict, to_dict
from lfvila_cli.errors import ConfigError, LfvilaError
from lfvila_cli.model.lfvila import (
    EmptySentenceSlotError,
    LfvilaConfig,
    LfvilaForClassification,
    LfvilaForMultipleChoice,
    LfvilaForPretrainingStage1,
    LfvilaForPretrainingStage2,
    LfvilaForRetrieval,
    LfvilaModel,
    build_model,
    count_parameters,
    materialise_meta,
    meta_tensor_names,
    model_class,
)
from lfvila_cli.model.presets import BERT_TINY, VARIANTS, get_preset, list_presets, release_parameter_count
from lfvila_cli.objectives import (
    class_balanced_span_loss,
    mask_tokens,
    pretrain_stage1_loss,
    pretrain_stage2_loss,
    video_text_matching_pairs,
)

CLS, SEP, MASK, VOCAB = 101, 102, 103, 30522
ALL_VARIANTS = [(v, 3 if v == "qa-classification" else None) for v in VARIANTS]


def variant_config(name: str, variant: str, num_labels=None) -> LfvilaConfig:
    return get_preset(name, variant, num_labels=num_labels, text_model="random")


@pytest.fixture(scope="module")
def tiny_stage2() -> LfvilaModel:
    torch.manual_seed(0)
    return build_model(variant_config("lfvila-tiny", "stage2"))


def frames(batch: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, t, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


def text(batch: int, sentences: int, length: int, seed: int = 2, *prefix: int):
    """Random ids [CLS] w… [SEP]; the last sentence of sample 0 is shorter (padding)."""
    g = torch.Generator().manual_seed(seed)
    shape = (*prefix, batch, sentences, length) if prefix else (batch, sentences, length)
    ids = torch.randint(1000, VOCAB, shape, generator=g)
    ids[..., 0], ids[..., -1] = CLS, SEP
    mask = torch.ones_like(ids)
    mask[..., 0, -1, length // 2:] = 0
    return ids * mask, mask


def grad_norm(module: nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(sum(g.pow(2).sum() for g in grads)) ** 0.5 if grads else 0.0


# --------------------------------------------------------------------------- presets and config


@pytest.mark.parametrize("name", ["lfvila-base", "lfvila-small", "lfvila-tiny"])
@pytest.mark.parametrize("variant, num_labels", ALL_VARIANTS)
def test_every_preset_variant_builds_with_the_parts_it_needs(name, variant, num_labels):
    model = build_model(variant_config(name, variant, num_labels), "meta")
    fused = variant in ("stage2", "qa-multichoice", "qa-classification")
    assert (model.fusion is not None) == fused
    assert model.text_encoder.num_layers == (model.text_encoder.bert.config.num_hidden_layers)
    text_layers = model.config.text.sentence_layers + model.config.text.paragraph_layers
    # Stage-1 / retrieval models hold the text layers only, like the authors' stage-1 file.
    assert model.text_encoder.num_layers == (model.text_encoder.bert.config.num_hidden_layers if fused else text_layers)
    assert (model.mlm_head is not None) == (model.vtm_head is not None) == (variant in ("stage1", "stage2"))
    assert (model.projections is not None) == (variant in ("stage1", "stage2", "retrieval"))
    if variant == "retrieval":
        assert model.projections.clip is None and model.projections.sentence is None
    assert (model.multiple_choice_head is not None) == (variant == "qa-multichoice")
    assert (model.classification_head is not None) == (variant == "qa-classification")
    if num_labels:
        assert model.classification_head.classifier.out_features == num_labels
    assert all(p.is_meta for p in model.parameters())


def test_lfvila_base_parameter_counts_against_the_release():
    """Ours = release − 112 × 1024 (the paragraph position table has 400 rows, theirs 512); the
    retrieval model also drops the MLM head and VTM head the release carried unused."""
    position_rows = (512 - 400) * 1024
    mlm_head = (1024 * 1024 + 1024) + 2 * 1024 + 30522 * 1024 + 30522
    vtm_head = 2 * 1024 + 2
    assert (position_rows, mlm_head, vtm_head) == (114_688, 32_336_698, 2_050)
    counts = {}
    for variant, labels in [(v, None) for v in VARIANTS if v != "qa-classification"] + [
        ("qa-classification", 2),
        ("qa-classification", 1654),
    ]:
        model = build_model(variant_config("lfvila-base", variant, labels), "meta")
        ours, theirs = count_parameters(model), release_parameter_count(variant, labels)
        expected_gap = position_rows + (mlm_head + vtm_head if variant == "retrieval" else 0)
        assert theirs - ours == expected_gap, (variant, labels, ours, theirs)
        counts[(variant, labels)] = ours
    assert counts[("stage1", None)] == 310_173_636
    assert counts[("stage2", None)] == 461_369_284
    assert counts[("retrieval", None)] == 275_735_688
    assert counts[("qa-multichoice", None)] == 424_835_211
    assert counts[("qa-classification", 1654)] == 426_527_486
    assert count_parameters(build_model(variant_config("lfvila-base", "stage1"), "meta").video_encoder) == 89_229_448


@pytest.mark.parametrize("name", ["lfvila-base", "lfvila-small", "lfvila-tiny"])
@pytest.mark.parametrize("variant, num_labels", ALL_VARIANTS)
def test_config_round_trips_through_json(name, variant, num_labels):
    config = get_preset(name, variant, num_labels=num_labels)
    data = json.loads(json.dumps(to_dict(config)))
    assert from_dict(LfvilaConfig, data) == config
    assert from_dict(LfvilaConfig, data) != get_preset(name, "stage2" if variant != "stage2" else "stage1")


def test_default_config_is_the_base_stage1_layout():
    assert LfvilaConfig() == get_preset("lfvila-base", "stage1")
    assert LfvilaConfig().text.model == "bert-large-uncased"


def test_unknown_preset_and_bad_variant_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="known presets: lfvila-base, lfvila-small, lfvila-tiny"):
        get_preset("lfvila-huge")
    assert list_presets() == ["lfvila-base", "lfvila-small", "lfvila-tiny"]
    with pytest.raises(ConfigError, match="unknown model variant 'pretrain'"):
        get_preset("lfvila-tiny", "pretrain")
    with pytest.raises(ConfigError, match="needs num_labels"):
        get_preset("lfvila-tiny", "qa-classification")
    with pytest.raises(ConfigError, match="num_labels applies"):
        get_preset("lfvila-tiny", "stage1", num_labels=2)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"fusion": None, "heads": {"multiple_choice": True, "projections": "none", "mlm": False, "vtm": False}}, "'fusion'"),
        ({"heads": {"multiple_choice": True, "num_labels": 2}}, "'heads.num_labels'"),
        ({"text": {"keep_layers": 2}}, "'text.keep_layers'"),
        ({"fusion": {"first_layer": 1}}, "'fusion.first_layer'"),
        ({"projections": {"video_dim": 64}}, "'projections.video_dim'"),
        ({"projections": {"clip_dim": 7}}, "'projections.clip_dim'"),
        ({"fusion": {"video_dim": 32}}, "'fusion.video_dim'"),
        ({"heads": {"projections": "some"}}, "'heads.projections'"),
    ],
)
def test_inconsistent_configs_name_the_key(change, key):
    data = to_dict(get_preset("lfvila-tiny", "stage2"))
    for section, value in change.items():
        if isinstance(value, dict):
            data[section].update(value)
        else:
            data[section] = value
    with pytest.raises(ConfigError, match=key):
        from_dict(LfvilaConfig, data)


def test_text_width_mismatch_is_caught_when_the_model_is_built():
    config = get_preset("lfvila-tiny", "stage1")
    config.text.bert_config = {**config.text.bert_config, "hidden_size": 48, "num_attention_heads": 2}
    with pytest.raises(ConfigError, match="'projections.text_dim'.*48"):
        build_model(config, "meta")


@pytest.mark.parametrize("variant, num_labels", ALL_VARIANTS)
def test_each_layout_builds_its_task_class(variant, num_labels):
    expected = {
        "stage1": LfvilaForPretrainingStage1,
        "stage2": LfvilaForPretrainingStage2,
        "retrieval": LfvilaForRetrieval,
        "qa-multichoice": LfvilaForMultipleChoice,
        "qa-classification": LfvilaForClassification,
    }[variant]
    config = variant_config("lfvila-tiny", variant, num_labels)
    assert model_class(variant) is model_class(config) is expected
    model = build_model(config, "meta")
    assert type(model) is expected and isinstance(model, LfvilaModel)
    with pytest.raises(ConfigError, match="unknown model variant 'pretrain'"):
        model_class("pretrain")


def test_building_on_meta_leaves_module_construction_alone_and_materialises_like_a_fresh_build():
    """``build_model(config, "meta")`` builds under ``torch.device("meta")`` (nothing global is
    patched); ``materialise_meta`` gives every tensor the init its module draws when built:
    non-persistent index buffers recomputed, LayerNorms 1 / 0, BERT's normal(initializer_range),
    the video encoder's truncated normal, the fusion embeddings' N(0, 1), the heads' N(0, 0.02),
    zero MLM bias."""
    config = variant_config("lfvila-tiny", "stage2")
    model = build_model(config, "meta")
    assert not nn.Linear(2, 3).weight.is_meta
    assert "text_encoder.bert.embeddings.position_ids" not in model.state_dict()  # non-persistent
    done = materialise_meta(model)
    assert meta_tensor_names(model) == []
    assert sorted(done) == sorted(model.state_dict())
    torch.manual_seed(0)
    fresh = build_model(config)
    for name, buffer in fresh.named_buffers():
        torch.testing.assert_close(model.get_buffer(name), buffer, rtol=0, atol=0, msg=name)
    model.requires_grad_(False)
    std = BERT_TINY["initializer_range"]
    word = model.text_encoder.bert.embeddings.word_embeddings.weight
    assert abs(float(word.std()) - std) < 0.1 * std
    assert torch.equal(model.video_encoder.norm.weight, torch.ones_like(model.video_encoder.norm.weight))
    table = model.video_encoder.layers[0].blocks[0].attn.relative_position_bias_table
    assert 0.01 < float(table.std()) < 0.03
    qkv = model.video_encoder.layers[0].blocks[0].attn.qkv
    assert abs(float(qkv.weight.std()) - 0.02) < 0.002 and torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    spatial = model.fusion.video_tokens.spatial_embedding
    assert 0.8 < float(spatial.std()) < 1.2
    assert torch.equal(model.mlm_head.bias, torch.zeros_like(model.mlm_head.bias))
    assert abs(float(model.vtm_head.classifier.weight.std()) - 0.02) < 0.01


# --------------------------------------------------------------------------- tiny model, every stage


def test_tiny_stage1_forward_backward_is_fast_and_finite():
    torch.manual_seed(0)
    model = build_model(variant_config("lfvila-tiny", "stage1"))
    model.set_trainable("stage1")
    video, (ids, mask) = frames(2, 16), text(2, 2, 16)
    generator = torch.Generator().manual_seed(0)
    model(video, ids, mask)  # warm-up: first calls build caches
    out = model(video, ids, mask)
    losses = pretrain_stage1_loss(
        out.video_embedding, out.paragraph_embedding, out.sentence_embeddings, out.clip_embeddings, generator
    )
    losses["total"].backward()
    assert out.video_embedding.shape == out.paragraph_embedding.shape == (2, 32)
    assert out.clip_embeddings.shape == out.sentence_embeddings.shape == (2, 2, 32)
    torch.testing.assert_close(out.clip_embeddings.norm(dim=-1), torch.ones(2, 2))
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["total"].detach()) > 0
    assert grad_norm(model.video_encoder) > 0 and grad_norm(model.projections) > 0
    assert grad_norm(model.text_encoder.bert.encoder.layer[0]) > 0
    # Carried (release layout) but not trained in stage 1.
    assert grad_norm(model.mlm_head) == 0 and not any(p.requires_grad for p in model.mlm_head.parameters())


def test_tiny_stage2_trains_only_the_cross_modal_part(tiny_stage2):
    model = tiny_stage2
    trainable = model.set_trainable("stage2")
    assert 0 < trainable < count_parameters(model)
    video, (ids, mask) = frames(4, 16), text(4, 2, 16)
    generator = torch.Generator().manual_seed(0)
    pairs = video_text_matching_pairs(4, generator)
    masked = mask_tokens(ids, (ids == CLS) | (ids == SEP), VOCAB, MASK, generator=generator, attention_mask=mask)
    model.zero_grad()
    out = model(video, masked.input_ids, mask, video_index=pairs.video_index)
    assert out.mlm_logits.shape == (4, 2 * 16, VOCAB) and out.vtm_logits.shape == (4, 2)
    assert out.fusion.sequence.shape == (4, 1 + 2 * 16 + 16 * 6, BERT_TINY["hidden_size"])
    losses = pretrain_stage2_loss(out.mlm_logits, masked.labels.flatten(1), out.vtm_logits, pairs.labels)
    losses["total"].backward()
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["mlm"].detach()) > 0
    assert grad_norm(model.fusion) > 0 and grad_norm(model.mlm_head) > 0 and grad_norm(model.vtm_head) > 0
    assert grad_norm(model.text_encoder.bert.encoder.layer[3]) > 0  # a cross-modal layer
    assert grad_norm(model.video_encoder) == 0 and grad_norm(model.text_encoder.bert.encoder.layer[0]) == 0
    model.set_trainable("finetune")


@torch.no_grad()
def test_stage2_video_index_pairs_text_b_with_video_of_sample_index_b(tiny_stage2):
    model = tiny_stage2.eval()
    video, (ids, mask) = frames(3, 8, seed=5), text(3, 1, 12, seed=6)
    index = torch.tensor([2, 0, 1])
    shuffled = model(video, ids, mask, video_index=index)
    reference = model(video[index], ids, mask)
    torch.testing.assert_close(shuffled.fusion.sequence, reference.fusion.sequence, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled.vtm_logits, reference.vtm_logits, rtol=1e-5, atol=1e-5)
    matched = model(video, ids, mask)
    assert not torch.allclose(matched.fusion.sequence, reference.fusion.sequence, atol=1e-2)
    model.train()


def test_tiny_multiple_choice_qa_forward_backward():
    torch.manual_seed(0)
    model = build_model(variant_config("lfvila-tiny", "qa-multichoice"))
    ids, mask = text(4, 3, 16, 7, 2)  # (B=2, K=4, M=3, L=16)
    video = frames(2, 16)
    out = model(video, ids, mask)
    assert out.choice_logits.shape == (2, 4) and out.span_logits.shape == (2, 16, 2)
    span_labels = torch.zeros(2, 16, dtype=torch.long)
    span_labels[:, 4:9] = 1
    loss = F.cross_entropy(out.choice_logits, torch.tensor([1, 3])) + class_balanced_span_loss(out.span_logits, span_labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert grad_norm(model.video_encoder) > 0 and grad_norm(model.multiple_choice_head) > 0


@torch.no_grad()
def test_fresh_heads_start_at_bert_init_over_the_tiny_wide_bert():
    """lfvila-tiny's random BERT initialises its own layers at 0.15; heads at that width started
    How2QA with span logits of sd ~1.7 (span loss 2.4) and fine-tuning flattened every frame's
    state to get rid of them. Heads start at 0.02: the first span loss is near ln 2."""
    torch.manual_seed(0)
    model = build_model(variant_config("lfvila-tiny", "qa-multichoice")).eval()
    assert model.text_encoder.bert.config.initializer_range == BERT_TINY["initializer_range"] == 0.15
    for weight in (model.multiple_choice_head.span_classifier.weight, model.multiple_choice_head.classifier.weight):
        assert 0.015 < float(weight.std()) < 0.025
    ids, mask = text(4, 3, 16, 7, 2)
    out = model(frames(2, 16), ids, mask)
    span_labels = torch.zeros(2, 16, dtype=torch.long)
    span_labels[:, 4:9] = 1
    assert float(class_balanced_span_loss(out.span_logits, span_labels)) < 0.75
    stage2 = build_model(variant_config("lfvila-tiny", "stage2"))
    assert 0.015 < float(stage2.vtm_head.classifier.weight.std()) < 0.025
    assert 0.015 < float(stage2.mlm_head.transform.dense.weight.std()) < 0.025


@torch.no_grad()
def test_multiple_choice_candidates_share_the_video_and_score_independently():
    torch.manual_seed(0)
    model = build_model(variant_config("lfvila-tiny", "qa-multichoice")).eval()
    ids, mask = text(3, 2, 10, 8, 1)  # B=1, K=3
    video = frames(1, 8)
    together = model(video, ids, mask).choice_logits
    alone = torch.cat([model(video, ids[:, k : k + 1], mask[:, k : k + 1]).choice_logits for k in range(3)], 1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_tiny_classification_qa_forward_backward():
    torch.manual_seed(0)
    model = build_model(variant_config("lfvila-tiny", "qa-classification", 5))
    ids, mask = text(2, 4, 16)
    out = model(frames(2, 32), ids, mask)
    assert out.logits.shape == (2, 5)
    loss = F.cross_entropy(out.logits, torch.tensor([0, 4]))
    loss.backward()
    assert torch.isfinite(loss) and grad_norm(model.classification_head) > 0 and grad_norm(model.video_encoder) > 0


@torch.no_grad()
def test_retrieval_encoders_give_unit_global_embeddings_only():
    torch.manual_seed(0)
    model = build_model(variant_config("lfvila-tiny", "retrieval")).eval()
    video = model.encode_video(frames(2, 16))
    paragraph = model.encode_text(*text(2, 2, 16))
    assert video.clip_embeddings is None and paragraph.sentence_embeddings is None
    torch.testing.assert_close(video.global_embedding.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(paragraph.paragraph_embedding.norm(dim=-1), torch.ones(2))
    with pytest.raises(ConfigError, match="'heads.num_labels'"):
        LfvilaForClassification.forward(model, frames(1, 8), *text(1, 1, 8))
    with pytest.raises(ConfigError, match="'fusion'"):
        model.fuse(torch.zeros(1, 8, 2, 3, 128), *text(1, 1, 8))


def test_stage1_needs_one_sentence_per_clip():
    model = build_model(variant_config("lfvila-tiny", "stage1"))
    with pytest.raises(ValueError, match="16 frames make 2 clips.*3 sentence slots"):
        model(frames(1, 16), *text(1, 3, 8))


def test_stage1_refuses_empty_sentence_slots_naming_how_many_samples():
    model = build_model(variant_config("lfvila-tiny", "stage1"))
    ids, mask = text(3, 2, 8)
    ids[1, 1], mask[1, 1] = 0, 0  # sample 1: its second slot is empty
    ids[2, 0], mask[2, 0] = 0, 0  # sample 2: its first slot is empty
    with pytest.raises(EmptySentenceSlotError, match="2 of 3 samples have empty sentence slots") as caught:
        model(frames(3, 16), ids, mask)
    assert isinstance(caught.value, (LfvilaError)) and isinstance(caught.value, ValueError)


def test_stage2_keeps_the_frozen_stage1_parts_in_eval_mode():
    config = variant_config("lfvila-tiny", "stage2")
    config.video.drop_path_rate = 0.3
    config.text.bert_config = {**config.text.bert_config, "hidden_dropout_prob": 0.1}
    torch.manual_seed(0)
    model = build_model(config)
    model.set_trainable("stage2")
    model.train()
    video = frames(4, 16)
    first, second = model.video_encoder(video), model.video_encoder(video)
    torch.testing.assert_close(first.tokens, second.tokens, rtol=0, atol=0)  # no stochastic depth
    bert = model.text_encoder.bert
    frozen = [bert.embeddings, bert.encoder.layer[0], bert.encoder.layer[1], model.text_encoder.paragraph_embedding]
    assert all(not m.training for part in frozen for m in part.modules())
    assert any(isinstance(m, nn.Dropout) for m in bert.encoder.layer[0].modules())
    trainable = [bert.encoder.layer[2], bert.encoder.layer[3], model.fusion, model.mlm_head, model.vtm_head]
    assert all(m.training for part in trainable for m in part.modules())
    assert model.training
    model.eval()
    assert not any(m.training for m in model.modules())
    model.set_trainable("finetune")
    model.train()
    assert all(m.training for m in model.modules())


def test_stage_parameter_split_follows_the_spec(tiny_stage2):
    stage1 = set(tiny_stage2.stage_parameter_names("stage1"))
    stage2 = set(tiny_stage2.stage_parameter_names("stage2"))
    assert not stage1 & stage2
    assert {n.split(".")[0] for n in stage2} == {"text_encoder", "fusion", "mlm_head", "vtm_head"}
    assert all(n.startswith(("text_encoder.bert.encoder.layer.2.", "text_encoder.bert.encoder.layer.3.", "text_encoder.bert.pooler."))
               for n in stage2 if n.startswith("text_encoder."))
    assert "text_encoder.paragraph_embedding.position_embeddings.weight" in stage1
    assert "text_encoder.bert.encoder.layer.1.output.dense.weight" in stage1  # paragraph level
    names = {n for n, _ in tiny_stage2.named_parameters()}
    assert names == stage1 | stage2  # every parameter is trained in one of the two stages
