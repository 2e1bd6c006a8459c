"""Text encoder (sentence / paragraph levels), cross-modal encoder and heads on a tiny random BERT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfvila_cli.errors import ConfigError
from lfvila_cli.model.fusion import CrossModalConfig, CrossModalEncoder, VideoTokenEmbedding
from lfvila_cli.model.heads import (
    ClassificationHead,
    ContrastiveProjections,
    MaskedLanguageModelingHead,
    MultipleChoiceHead,
    ProjectionConfig,
    VideoTextMatchingHead,
)
from lfvila_cli.model.text_encoder import HierarchicalTextEncoder, TextEncoderConfig
from lfvila_cli.objectives import class_balanced_span_loss

HIDDEN = 32
VOCAB = 100
TINY_BERT = dict(
    hidden_size=HIDDEN,
    num_attention_heads=4,
    num_hidden_layers=6,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=64,
)
SENTENCE_LAYERS, PARAGRAPH_LAYERS, FUSION_FIRST = 2, 2, 4


def tiny_text_config(**changes) -> TextEncoderConfig:
    fields = dict(
        bert_config=TINY_BERT,
        sentence_layers=SENTENCE_LAYERS,
        paragraph_layers=PARAGRAPH_LAYERS,
        max_sentences=4,
        max_tokens=12,
    )
    fields.update(changes)
    return TextEncoderConfig(**fields)


@pytest.fixture(scope="module")
def encoder() -> HierarchicalTextEncoder:
    torch.manual_seed(0)
    return HierarchicalTextEncoder(tiny_text_config()).eval()


def make_text(batch: int, sentences: int, length: int, lengths: list[list[int]], seed: int = 1):
    """Random ids with [CLS]=1 first; tokens past each sentence's length are padding (id 0, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, sentences, length), generator=g)
    ids[..., 0] = 1
    mask = torch.zeros(batch, sentences, length, dtype=torch.long)
    for b in range(batch):
        for m in range(sentences):
            mask[b, m, : lengths[b][m]] = 1
    return ids * mask, mask


# --------------------------------------------------------------------------- text encoder


@torch.no_grad()
def test_sentence_level_keeps_sentences_independent_but_paragraph_sees_them(encoder):
    ids, mask = make_text(2, 3, 8, [[8, 6, 5], [7, 8, 4]])
    before = encoder(ids, mask)
    changed = ids.clone()
    changed[0, 1, 1:6] = torch.arange(10, 15)  # sentence 2 of sample 0
    after = encoder(changed, mask)

    states_before = encoder.encode_sentences(ids[0], mask[0])  # (M, L, H)
    states_after = encoder.encode_sentences(changed[0], mask[0])
    torch.testing.assert_close(states_after[[0, 2]], states_before[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(states_after[1], states_before[1], atol=1e-4)

    torch.testing.assert_close(after.sentence_features[0, [0, 2]], before.sentence_features[0, [0, 2]], rtol=0, atol=0)
    assert not torch.allclose(after.sentence_features[0, 1], before.sentence_features[0, 1], atol=1e-4)
    # The paragraph level mixes sentences: sample 0's paragraph feature moves, sample 1's does not.
    assert not torch.allclose(after.paragraph_feature[0], before.paragraph_feature[0], atol=1e-4)
    torch.testing.assert_close(after.paragraph_feature[1], before.paragraph_feature[1])


@torch.no_grad()
def test_padding_tokens_and_empty_sentence_slots_change_nothing(encoder):
    lengths = [[8, 6, 5], [7, 3, 0]]  # sample 1 has only two sentences
    ids, mask = make_text(2, 3, 8, lengths)
    out = encoder(ids, mask)
    assert out.sentence_mask.tolist() == [[True, True, True], [True, True, False]]
    assert out.token_states.shape == (2, 1 + 3 * 8, HIDDEN)
    assert out.token_mask.shape == (2, 1 + 3 * 8)

    # Pad every sentence to 12 tokens and add a fourth, empty slot; fill all padding with junk ids.
    padded_ids = torch.randint(5, VOCAB, (2, 4, 12), generator=torch.Generator().manual_seed(7))
    padded_mask = torch.zeros(2, 4, 12, dtype=torch.long)
    padded_ids[:, :3, :8] = torch.where(mask.bool(), ids, padded_ids[:, :3, :8])
    padded_mask[:, :3, :8] = mask
    padded = encoder(padded_ids, padded_mask)

    torch.testing.assert_close(padded.paragraph_feature, out.paragraph_feature, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.sentence_features[:, :3], out.sentence_features, atol=1e-5, rtol=1e-5)
    assert padded.sentence_features[:, 3].abs().max() == 0  # empty slots are zeroed
    assert padded.sentence_features[1, 2].abs().max() == 0
    # Real token states agree position by position (summary token first, then sentence by sentence).
    real_states = out.token_states[:, 1:].reshape(2, 3, 8, HIDDEN)
    padded_states = padded.token_states[:, 1:].reshape(2, 4, 12, HIDDEN)[:, :3, :8]
    keep = mask.bool()
    torch.testing.assert_close(padded_states[keep], real_states[keep], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded.token_states).all()


def test_loads_from_local_path_offline_and_split_is_faithful(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    reference = BertModel(BertConfig(**TINY_BERT)).eval()
    reference.save_pretrained(tmp_path)
    encoder = HierarchicalTextEncoder(
        tiny_text_config(model=str(tmp_path), bert_config=None, local_files_only=True)
    ).eval()
    assert torch.equal(
        encoder.bert.encoder.layer[5].output.dense.weight, reference.encoder.layer[5].output.dense.weight
    )
    # The paragraph position table starts as a copy of BERT's.
    rows = encoder.paragraph_embedding.position_embeddings.num_embeddings
    assert rows == 4 * 12
    assert torch.equal(
        encoder.paragraph_embedding.position_embeddings.weight, reference.embeddings.position_embeddings.weight[:rows]
    )

    ids, mask = make_text(3, 1, 10, [[10], [6], [3]])
    ids, mask = ids[:, 0], mask[:, 0]  # three single sentences
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        ours = encoder.encode_sentences(ids, mask)
        full = encoder(ids[:, None], mask[:, None])
    torch.testing.assert_close(ours, expected[SENTENCE_LAYERS], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.sentence_features[:, 0], expected[SENTENCE_LAYERS][:, 0], atol=1e-5, rtol=1e-5)
    # and it is not the output of some other layer
    assert not torch.allclose(ours, expected[SENTENCE_LAYERS + 1], atol=1e-3)


@torch.no_grad()
def test_sdpa_and_eager_attention_agree():
    ids, mask = make_text(2, 3, 8, [[8, 6, 5], [7, 3, 0]])
    outputs = []
    for implementation in ("sdpa", "eager"):
        torch.manual_seed(0)
        outputs.append(HierarchicalTextEncoder(tiny_text_config(attn_implementation=implementation)).eval()(ids, mask))
    sdpa, eager = outputs
    torch.testing.assert_close(sdpa.token_states, eager.token_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa.sentence_features, eager.sentence_features, atol=1e-5, rtol=1e-5)


def test_missing_local_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'model'"):
        HierarchicalTextEncoder(tiny_text_config(model=str(tmp_path / "nope"), bert_config=None, local_files_only=True))


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="'model'"):
        TextEncoderConfig()
    with pytest.raises(ConfigError, match="'keep_layers'"):
        tiny_text_config(keep_layers=3)
    with pytest.raises(ConfigError, match="'sentence_layers'"):
        HierarchicalTextEncoder(tiny_text_config(sentence_layers=4, paragraph_layers=4))
    with pytest.raises(ConfigError, match="'first_layer'"):
        CrossModalConfig(first_layer=0)


def test_keep_layers_and_parameter_names_match_the_authors_layout():
    torch.manual_seed(0)
    encoder = HierarchicalTextEncoder(tiny_text_config(keep_layers=4))
    assert encoder.num_layers == 4
    names = {f"text_encoder.{k}" for k in encoder.state_dict()}
    # Names from tests/fixtures/official-checkpoint-keys/stage1_keys.tsv (the authors' text side).
    layer = "text_encoder.bert.encoder.layer.3."
    authors = [
        "text_encoder.bert.embeddings.word_embeddings.weight",
        "text_encoder.bert.embeddings.position_embeddings.weight",
        "text_encoder.bert.embeddings.token_type_embeddings.weight",
        "text_encoder.bert.embeddings.LayerNorm.weight",
        "text_encoder.bert.pooler.dense.weight",
        *(layer + f"attention.self.{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")),
        layer + "attention.output.dense.weight",
        layer + "attention.output.LayerNorm.bias",
        layer + "intermediate.dense.weight",
        layer + "output.dense.weight",
        layer + "output.LayerNorm.weight",
    ]
    assert set(authors) <= names
    assert not any(".layer.4." in n for n in names)


def test_paragraph_positions_tile_bert_table_when_longer():
    torch.manual_seed(0)
    encoder = HierarchicalTextEncoder(tiny_text_config(max_tokens=20))  # 4 x 20 = 80 > 64 rows
    table = encoder.paragraph_embedding.position_embeddings.weight
    bert_table = encoder.bert.embeddings.position_embeddings.weight
    assert table.shape == (80, HIDDEN)
    assert torch.equal(table[:64], bert_table)
    assert torch.equal(table[64:], bert_table[:16])


# --------------------------------------------------------------------------- fusion


@pytest.fixture(scope="module")
def fusion(encoder) -> CrossModalEncoder:
    torch.manual_seed(1)
    return CrossModalEncoder(CrossModalConfig(first_layer=FUSION_FIRST, video_dim=48, max_frames=8), encoder.bert).eval()


def video_map(batch=2, frames=4, height=3, width=5, channels=48, seed=5):
    return torch.randn(batch, frames, height, width, channels, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_fusion_shapes_and_video_token_count(encoder, fusion):
    ids, mask = make_text(2, 3, 8, [[8, 6, 5], [7, 3, 0]])
    text = encoder(ids, mask)
    out = fusion(text.token_states, text.token_mask, video_map())
    assert out.text_length == 1 + 3 * 8
    assert out.video_length == 4 * 6  # T · (2×3)
    assert out.sequence.shape == (2, 25 + 24, HIDDEN)
    assert out.pooled.shape == (2, HIDDEN)
    assert out.attention_mask.shape == (2, 49) and out.attention_mask[:, 25:].all()
    assert out.text_states.shape == (2, 25, HIDDEN) and out.video_states.shape == (2, 24, HIDDEN)
    assert out.frame_states.shape == (2, 4, HIDDEN)
    torch.testing.assert_close(out.frame_states[:, 1], out.video_states[:, 6:12].mean(dim=1))
    # Single stream: text tokens see the video.
    other = fusion(text.token_states, text.token_mask, video_map(seed=6))
    assert not torch.allclose(other.text_states, out.text_states, atol=1e-4)
    assert not torch.allclose(other.pooled, out.pooled, atol=1e-5)


@torch.no_grad()
def test_fusion_joint_mask_hides_padded_text_tokens(encoder, fusion):
    ids, mask = make_text(2, 3, 8, [[8, 6, 5], [7, 3, 0]])
    text = encoder(ids, mask)
    video = video_map()
    out = fusion(text.token_states, text.token_mask, video)
    junk = text.token_states.clone()
    pad = ~text.token_mask
    junk[pad] = 100.0 * torch.randn(int(pad.sum()), HIDDEN)
    noisy = fusion(junk, text.token_mask, video)
    real = out.attention_mask
    torch.testing.assert_close(noisy.sequence[real], out.sequence[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(noisy.pooled, out.pooled, atol=1e-5, rtol=1e-5)
    # The same junk on a *real* token does change the output.
    junk = text.token_states.clone()
    junk[0, 3] = 100.0
    assert not torch.allclose(fusion(junk, text.token_mask, video).pooled, out.pooled, atol=1e-4)


def test_fusion_shares_bert_layers_without_owning_them(encoder, fusion):
    assert not any(name.startswith(("bert", "layer")) for name in fusion.state_dict())
    assert set(fusion.state_dict()) == {
        "video_tokens.spatial_embedding",
        "video_tokens.temporal_embedding",
        "video_tokens.norm.weight",
        "video_tokens.norm.bias",
        "video_tokens.input_proj.weight",
        "video_tokens.input_proj.bias",
    }
    assert fusion.video_tokens.spatial_embedding.shape == (1, 1, 6, HIDDEN)
    assert fusion.video_tokens.temporal_embedding.shape == (1, 8, 1, HIDDEN)
    text = torch.randn(1, 5, HIDDEN)
    text_mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        before = fusion(text, text_mask, video_map(batch=1)).pooled
        weight = encoder.bert.encoder.layer[FUSION_FIRST].output.dense.weight
        saved = weight.clone()
        weight.add_(torch.randn_like(weight))  # (a constant shift would vanish in LayerNorm)
        after = fusion(text, text_mask, video_map(batch=1)).pooled
        weight.copy_(saved)
    assert not torch.allclose(before, after, atol=1e-5)
    with pytest.raises(ConfigError, match="'first_layer'"):
        CrossModalEncoder(CrossModalConfig(first_layer=6), encoder.bert)


def test_video_pooling_matches_the_authors_maxpool_and_adaptive():
    grid = torch.randn(2, 3, 3, 5, 8)  # (B, T, h, w, C), the paper's 3×5 map
    flat = grid.permute(0, 1, 4, 2, 3).reshape(6, 8, 3, 5)
    authors = nn.MaxPool2d((2, 3), stride=(1, 1))(flat)  # (6, 8, 2, 3)
    expected = authors.reshape(2, 3, 8, 6).transpose(2, 3)
    torch.testing.assert_close(VideoTokenEmbedding(8, 8, pooling="window").pool(grid), expected)
    adaptive = F.adaptive_max_pool2d(flat, (2, 3)).reshape(2, 3, 8, 6).transpose(2, 3)
    torch.testing.assert_close(VideoTokenEmbedding(8, 8, pooling="adaptive").pool(grid), adaptive)
    assert not torch.equal(expected, adaptive)  # the two really differ on a 3×5 map
    # A map smaller than the grid still gives 6 tokens per frame.
    assert VideoTokenEmbedding(8, 8).pool(torch.randn(1, 2, 1, 2, 8)).shape == (1, 2, 6, 8)


@torch.no_grad()
def test_fresh_video_tokens_tell_frames_apart_by_position():
    """The same content in every frame: only the temporal embedding tells the frames apart. It
    starts at the scale of the LayerNorm'd video features, so positions are a large part of each
    fresh token (at the release's 0.02 the frames' tokens differed by about 2%)."""
    torch.manual_seed(0)
    embed = VideoTokenEmbedding(64, 64)
    frame = F.layer_norm(torch.randn(1, 1, 3, 5, 64), (64,))  # one frame of unit-scale features
    tokens = embed(frame.expand(1, 16, 3, 5, 64))  # (1, 16, 6, 64): a still video
    across_frames = tokens.std(dim=1).mean() / tokens.std()
    assert across_frames > 0.5, float(across_frames)
    assert 0.8 < float(embed.temporal_embedding.std()) < 1.2 and 0.8 < float(embed.spatial_embedding.std()) < 1.2


# --------------------------------------------------------------------------- heads


def test_projections_are_unit_norm_with_their_own_input_widths():
    heads = ContrastiveProjections(ProjectionConfig(embed_dim=16, video_dim=40, clip_dim=24, text_dim=HIDDEN))
    outputs = [
        heads.video(torch.randn(3, 40)),
        heads.paragraph(torch.randn(3, HIDDEN)),
        heads.clip(torch.randn(3, 4, 24)),
        heads.sentence(torch.randn(3, 4, HIDDEN)),
    ]
    for out in outputs:
        assert out.shape[-1] == 16
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(out.shape[:-1]))
    assert {"video.linear.weight", "paragraph.linear.weight", "clip.linear.weight", "sentence.linear.weight"} <= set(
        heads.state_dict()
    )


def test_vtm_multiple_choice_and_classification_shapes():
    pooled = torch.randn(2 * 4, HIDDEN)
    assert VideoTextMatchingHead(HIDDEN)(pooled[:2]).shape == (2, 2)
    assert ClassificationHead(HIDDEN, 2)(pooled[:3]).shape == (3, 2)
    assert ClassificationHead(HIDDEN, 1654)(pooled[:3]).shape == (3, 1654)

    head = MultipleChoiceHead(HIDDEN).eval()
    frames = torch.randn(2 * 4, 6, HIDDEN)
    out = head(pooled, num_choices=4, frame_states=frames)
    assert out.choice_logits.shape == (2, 4)
    assert out.span_logits.shape == (2, 6, 2)
    torch.testing.assert_close(out.choice_logits[1, 2], head.classifier(pooled[1 * 4 + 2])[0])
    per_choice = head.span_classifier(frames).view(2, 4, 6, 2)
    torch.testing.assert_close(out.span_logits, per_choice.max(dim=1).values)
    assert head(pooled, num_choices=4).span_logits is None
    with pytest.raises(ValueError):
        head(pooled[:7], num_choices=4)


def test_mlm_head_tied_and_untied():
    embedding = nn.Embedding(VOCAB, HIDDEN)
    hidden = torch.randn(2, 5, HIDDEN)
    untied = MaskedLanguageModelingHead(HIDDEN, VOCAB)
    assert untied(hidden).shape == (2, 5, VOCAB)
    assert {"transform.dense.weight", "transform.LayerNorm.weight", "decoder.weight", "bias"} <= set(untied.state_dict())
    tied = MaskedLanguageModelingHead(HIDDEN, VOCAB, tied_embedding=embedding)
    assert "decoder.weight" not in tied.state_dict()
    assert tied.decoder_weight is embedding.weight
    logits = tied(hidden)
    torch.testing.assert_close(logits, tied.transform(hidden) @ embedding.weight.T + tied.bias)
    logits.sum().backward()
    assert embedding.weight.grad is not None


def test_span_loss_is_class_balanced():
    # One frame inside the span, seven outside: each class carries half of the loss.
    labels = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 0]])
    logits = torch.zeros(1, 8, 2, requires_grad=True)
    loss = class_balanced_span_loss(logits, labels)
    torch.testing.assert_close(loss, torch.tensor(torch.log(torch.tensor(2.0)).item()))
    loss.backward()
    grad_mass = logits.grad.abs().sum(dim=-1)[0]  # per frame
    inside, outside = grad_mass[labels[0] == 1].sum(), grad_mass[labels[0] == 0].sum()
    torch.testing.assert_close(inside, outside)  # an unweighted mean would give 1 : 7

    # Different losses per class: 0.5·mean(inside) + 0.5·mean(outside).
    logits = torch.randn(1, 8, 2)
    ce = F.cross_entropy(logits[0], labels[0], reduction="none")
    expected = 0.5 * ce[labels[0] == 1].mean() + 0.5 * ce[labels[0] == 0].mean()
    torch.testing.assert_close(class_balanced_span_loss(logits, labels), expected)

    # Equals the authors' weighting (T·0.5/N_class per frame, mean over all frames) on a batch,
    # and masked frames are ignored.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 2, generator=g)
    labels = torch.zeros(3, 8, dtype=torch.long)
    labels[0, 2:5] = 1
    labels[1, 0] = 1
    labels[2, 1:8] = 1
    n1 = labels.sum(1, keepdim=True).float()
    weights = torch.where(labels == 1, 8 * 0.5 / n1, 8 * 0.5 / (8 - n1).clamp(min=1))
    authors = (F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none") * weights.flatten()).mean()
    torch.testing.assert_close(class_balanced_span_loss(logits, labels), authors)
    frame_mask = torch.ones(3, 8, dtype=torch.bool)
    frame_mask[:, 6:] = False
    changed = logits.clone()
    changed[:, 6:] = 50.0
    torch.testing.assert_close(
        class_balanced_span_loss(changed, labels, frame_mask), class_balanced_span_loss(logits, labels, frame_mask)
    )
