"""LF-VILA objectives against slow references written from docs/method.md §4 (single process).

The 2-rank parity tests (all-gathered loss vs single-process loss) are in
``test_objectives_distributed.py``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lfvila_cli.config import resolve
from lfvila_cli.errors import ConfigError
from lfvila_cli.objectives import (
    IGNORE_INDEX,
    NO_TARGET,
    ObjectiveConfig,
    TemporalContrastivePlan,
    all_gather_with_grad,
    mask_tokens,
    mlm_loss,
    pretrain_stage1_loss,
    pretrain_stage2_loss,
    sample_temporal_contrastive_plan,
    temporal_contrastive_loss,
    video_paragraph_contrastive_loss,
    video_text_matching_pairs,
    vtm_loss,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def cross_entropy(logits: list[float], target: int) -> float:
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(z - top) for z in logits)))


# --------------------------------------------------------------------------- config


def test_config_defaults_match_spec():
    cfg = ObjectiveConfig()
    assert (cfg.vpc_weight, cfg.mtc_weight, cfg.mlm_weight, cfg.vtm_weight) == (1.0, 0.25, 1.0, 10.0)
    assert cfg.temperature == 0.05
    assert (cfg.mtc_num_key, cfg.mtc_num_value, cfg.mtc_num_other_neg) == (2, 2, 3)
    assert cfg.mlm_probability == 0.15


@pytest.mark.parametrize(
    "override, key",
    [
        ("temperature=0", "temperature"),
        ("mtc_num_key=0", "mtc_num_key"),
        ("mtc_num_other_neg=-1", "mtc_num_other_neg"),
        ("mlm_probability=1.5", "mlm_probability"),
        ("vtm_weight=-1", "vtm_weight"),
    ],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve(ObjectiveConfig, overrides=[override])


def test_all_gather_is_identity_without_distributed():
    x = torch.randn(3, 4)
    assert all_gather_with_grad(x) is x


# --------------------------------------------------------------------------- VPC


def vpc_reference(video, paragraph, temperature):
    """Symmetric InfoNCE, directions summed, each direction averaged over rows: explicit loops."""
    n = len(video)
    total = 0.0
    for queries, keys in ((video, paragraph), (paragraph, video)):
        for i in range(n):
            logits = [dot(queries[i], keys[j]) / temperature for j in range(n)]
            total += cross_entropy(logits, i) / n
    return total


def test_vpc_matches_brute_force_reference():
    video, paragraph = unit(6, 8, seed=1), unit(6, 8, seed=2)
    loss = video_paragraph_contrastive_loss(video, paragraph, 0.05)
    assert loss.item() == pytest.approx(vpc_reference(video, paragraph, 0.05), rel=1e-10)


def test_vpc_is_symmetric_and_prefers_alignment():
    video, paragraph = unit(8, 16, seed=3), unit(8, 16, seed=4)
    assert video_paragraph_contrastive_loss(video, paragraph).item() == pytest.approx(
        video_paragraph_contrastive_loss(paragraph, video).item(), rel=1e-12
    )
    aligned = video_paragraph_contrastive_loss(video, video.clone()).item()
    shuffled = video_paragraph_contrastive_loss(video, video[torch.roll(torch.arange(8), 1)]).item()
    assert aligned < 0.1 < shuffled


def test_vpc_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="video and paragraph"):
        video_paragraph_contrastive_loss(torch.randn(4, 8), torch.randn(3, 8))


# --------------------------------------------------------------------------- MTC


def mtc_reference(sentences, clips, plans, temperature):
    """MTC straight from docs/method.md §4, in plain loops over the given draws.

    Targets are recomputed here from the positions (nearest value; a tie skips the row), not
    read from the plan.
    """
    total = 0.0
    for (keys, values), plan in zip(((sentences, clips), (clips, sentences)), plans):
        losses = []
        for b in range(len(keys)):
            value_pos = plan.value_pos[b].tolist()
            others = list(zip(plan.other_video[b].tolist(), plan.other_pos[b].tolist()))
            for k in plan.key_pos[b].tolist():
                distance = [abs(k - v) for v in value_pos]
                if distance.count(min(distance)) > 1:
                    continue
                target = distance.index(min(distance))
                candidates = [values[b][v] for v in value_pos] + [values[o][p] for o, p in others]
                logits = [dot(keys[b][k], c) / temperature for c in candidates]
                losses.append(cross_entropy(logits, target))
        total += sum(losses) / len(losses) if losses else 0.0
    return total


def test_mtc_plan_follows_the_spec():
    cfg = ObjectiveConfig()
    plan = sample_temporal_contrastive_plan(64, 4, cfg, torch.Generator().manual_seed(0))
    assert plan.key_pos.shape == (64, 2) and plan.value_pos.shape == (64, 2)
    assert plan.other_video.shape == plan.other_pos.shape == (64, 3)
    for b in range(64):
        keys, values = plan.key_pos[b].tolist(), plan.value_pos[b].tolist()
        assert len(set(keys)) == 2 and len(set(values)) == 2
        assert all(0 <= p < 4 for p in keys + values + plan.other_pos[b].tolist())
        others = plan.other_video[b].tolist()
        assert b not in others and len(set(others)) == 3  # all extra negatives from other videos
        for i, k in enumerate(keys):
            d = [abs(k - v) for v in values]
            expected = NO_TARGET if d[0] == d[1] else d.index(min(d))
            assert plan.target[b, i].item() == expected
    assert (plan.target == NO_TARGET).any() and (plan.target != NO_TARGET).any()


def test_mtc_small_batch_never_uses_own_video():
    cfg = ObjectiveConfig()
    plan = sample_temporal_contrastive_plan(3, 4, cfg, torch.Generator().manual_seed(1))  # 2 others < 3 negatives
    own = torch.arange(3)[:, None]
    assert plan.other_video.shape == (3, 3) and not (plan.other_video == own).any()
    single = sample_temporal_contrastive_plan(1, 4, cfg, torch.Generator().manual_seed(1))
    assert single.other_video.shape == (1, 0)


def test_mtc_matches_brute_force_reference():
    sentences, clips = unit(5, 4, 8, seed=5), unit(5, 4, 8, seed=6)
    out = temporal_contrastive_loss(sentences, clips, torch.Generator().manual_seed(7))
    assert out.loss.item() == pytest.approx(mtc_reference(sentences, clips, out.plans, 0.05), rel=1e-10)
    assert out.loss.item() == pytest.approx((out.sentence_to_clip + out.clip_to_sentence).item())
    # the draws are the documented ones: two plans from the same generator, sentence→clip first
    g = torch.Generator().manual_seed(7)
    expected = [sample_temporal_contrastive_plan(5, 4, ObjectiveConfig(), g) for _ in range(2)]
    for got, want in zip(out.plans, expected):
        for name in ("key_pos", "value_pos", "target", "other_video", "other_pos"):
            assert torch.equal(getattr(got, name), getattr(want, name))
    assert out.num_rows + out.num_ties == 2 * 5 * 2


def test_mtc_is_reproducible_with_a_seeded_generator():
    sentences, clips = unit(6, 4, 8, seed=8), unit(6, 4, 8, seed=9)
    a = temporal_contrastive_loss(sentences, clips, torch.Generator().manual_seed(3)).loss
    b = temporal_contrastive_loss(sentences, clips, torch.Generator().manual_seed(3)).loss
    c = temporal_contrastive_loss(sentences, clips, torch.Generator().manual_seed(4)).loss
    assert a.item() == b.item() and a.item() != c.item()


def manual_plan(key_pos, value_pos, other_video, other_pos):
    key_pos, value_pos = torch.tensor(key_pos), torch.tensor(value_pos)
    distance = (key_pos[:, :, None] - value_pos[:, None, :]).abs()
    tie = (distance == distance.min(2, keepdim=True).values).sum(2) > 1
    target = distance.argmin(2).masked_fill(tie, NO_TARGET)
    return TemporalContrastivePlan(key_pos, value_pos, target, torch.tensor(other_video), torch.tensor(other_pos))


def test_mtc_ignores_tied_rows():
    sentences = unit(2, 4, 8, seed=10).requires_grad_()
    clips = unit(2, 4, 8, seed=11).requires_grad_()
    # sample 0: key 1 is midway between values 0 and 2 (tie), key 3 -> value 2;
    # sample 1: key 2 is midway between values 1 and 3 (tie), key 0 -> value 1
    plan = manual_plan([[1, 3], [2, 0]], [[0, 2], [1, 3]], [[1], [0]], [[3], [0]])
    assert plan.target.tolist() == [[NO_TARGET, 1], [NO_TARGET, 0]]
    out = temporal_contrastive_loss(sentences, clips, None, plans=(plan, plan))
    assert out.num_rows == 4 and out.num_ties == 4
    s, c = sentences.detach(), clips.detach()
    row0 = cross_entropy([dot(s[0, 3], c[0, 0]) / 0.05, dot(s[0, 3], c[0, 2]) / 0.05, dot(s[0, 3], c[1, 3]) / 0.05], 1)
    row1 = cross_entropy([dot(s[1, 0], c[1, 1]) / 0.05, dot(s[1, 0], c[1, 3]) / 0.05, dot(s[1, 0], c[0, 0]) / 0.05], 0)
    assert out.sentence_to_clip.item() == pytest.approx((row0 + row1) / 2, rel=1e-10)
    out.loss.backward()
    # tied keys (sentence 1 of sample 0, sentence 2 of sample 1) are used nowhere else: no gradient
    assert sentences.grad[0, 1].abs().max() == 0 and sentences.grad[1, 2].abs().max() == 0
    assert sentences.grad[0, 3].abs().max() > 0


def test_mtc_all_ties_gives_zero_with_a_graph():
    # With two distinct keys one of them always has a nearest value; one key can be all ties.
    cfg = ObjectiveConfig(mtc_num_key=1)
    sentences = unit(2, 4, 8, seed=12).requires_grad_()
    clips = unit(2, 4, 8, seed=13).requires_grad_()
    plan = manual_plan([[1], [2]], [[0, 2], [1, 3]], [[1], [0]], [[0], [0]])
    out = temporal_contrastive_loss(sentences, clips, None, cfg, plans=(plan, plan))
    assert out.loss.item() == 0.0 and out.loss.requires_grad and out.num_rows == 0
    out.loss.backward()
    assert sentences.grad is not None and sentences.grad.abs().max() == 0


def temporal_features(num_videos, num_clips, step=0.5):
    """Sentence i and clip j of a video at angles i·step, j·step in the video's own plane, so
    sim(s_i, c_j) = cos((i−j)·step) falls with |i−j|; other videos are orthogonal."""
    angles = torch.arange(num_clips, dtype=torch.float64) * step
    feats = torch.zeros(num_videos, num_clips, 2 * num_videos, dtype=torch.float64)
    for b in range(num_videos):
        feats[b, :, 2 * b] = torch.cos(angles)
        feats[b, :, 2 * b + 1] = torch.sin(angles)
    return feats


def test_mtc_prefers_temporal_order():
    sentences = temporal_features(8, 4)
    clips = sentences.clone()
    ordered = temporal_contrastive_loss(sentences, clips, torch.Generator().manual_seed(0))
    reversed_ = temporal_contrastive_loss(sentences, clips.flip(1), torch.Generator().manual_seed(0))
    assert ordered.loss.item() < reversed_.loss.item()
    assert ordered.accuracy.item() == 1.0 and reversed_.accuracy.item() < 0.5


# --------------------------------------------------------------------------- MLM


def test_mask_tokens_statistics():
    n, length, vocab, mask_id = 512, 64, 1000, 3
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (n, length), generator=g)
    lengths = torch.randint(8, length + 1, (n,), generator=g)
    attention = torch.arange(length)[None, :] < lengths[:, None]
    ids[:, 0] = 1  # [CLS]
    ids[torch.arange(n), lengths - 1] = 2  # [SEP]
    ids[~attention] = 0  # [PAD]
    special = (ids == 0) | (ids == 1) | (ids == 2)
    eligible = ~special & attention

    out, labels = mask_tokens(ids, special, vocab, mask_id, 0.15, torch.Generator().manual_seed(1), attention)
    selected = labels != IGNORE_INDEX
    assert not (selected & ~eligible).any()
    assert torch.equal(out[~eligible], ids[~eligible])  # specials and padding untouched
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(out[~selected], ids[~selected])
    frac = selected.sum().item() / eligible.sum().item()
    assert frac == pytest.approx(0.15, abs=0.01)
    picked = selected.sum().item()
    masked = (out[selected] == mask_id).sum().item() / picked
    kept = (out[selected] == ids[selected]).sum().item() / picked
    changed = 1 - masked - kept  # random tokens (a random draw equal to the original counts as kept)
    assert masked == pytest.approx(0.8, abs=0.025)
    assert kept == pytest.approx(0.1, abs=0.02) and changed == pytest.approx(0.1, abs=0.02)
    # reproducible from the generator; the input is not modified
    again = mask_tokens(ids, special, vocab, mask_id, 0.15, torch.Generator().manual_seed(1), attention)
    assert torch.equal(again.input_ids, out) and not (ids == mask_id).any()


def test_mlm_loss():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 4] = 7, 2
    expected = (F.cross_entropy(logits[0, 1], torch.tensor(7)) + F.cross_entropy(logits[1, 4], torch.tensor(2))) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    empty = mlm_loss(logits, torch.full((2, 5), IGNORE_INDEX))
    assert empty.item() == 0.0 and empty.requires_grad


# --------------------------------------------------------------------------- VTM


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 8, 17, 48])
def test_vtm_pairs_half_mismatched_never_with_itself(batch_size):
    for seed in range(20):
        video_index, labels = video_text_matching_pairs(batch_size, torch.Generator().manual_seed(seed))
        own = torch.arange(batch_size)
        assert (labels == 0).sum().item() == batch_size // 2
        assert torch.equal(labels == 1, video_index == own)  # mismatched never with its own video
        if batch_size // 2 >= 2:
            assert sorted(video_index.tolist()) == own.tolist()  # each video used once


def test_vtm_loss():
    logits = torch.tensor([[0.0, 3.0], [2.0, -1.0]])
    labels = torch.tensor([1, 0])
    assert vtm_loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())


# --------------------------------------------------------------------------- stages


def test_stage1_weights_terms():
    cfg = ObjectiveConfig(vpc_weight=2.0, mtc_weight=0.5)
    video, paragraph = unit(4, 8, seed=20), unit(4, 8, seed=21)
    sentences, clips = unit(4, 4, 8, seed=22), unit(4, 4, 8, seed=23)
    terms = pretrain_stage1_loss(video, paragraph, sentences, clips, torch.Generator().manual_seed(0), cfg)
    vpc = video_paragraph_contrastive_loss(video, paragraph, cfg.temperature)
    mtc = temporal_contrastive_loss(sentences, clips, torch.Generator().manual_seed(0), cfg).loss
    assert terms["vpc"].item() == pytest.approx(2.0 * vpc.item())
    assert terms["mtc"].item() == pytest.approx(0.5 * mtc.item())
    assert terms["total"].item() == pytest.approx(terms["vpc"].item() + terms["mtc"].item())


def test_stage2_counts_mlm_on_matched_pairs_only():
    g = torch.Generator().manual_seed(0)
    mlm_logits = torch.randn(4, 6, 13, generator=g)
    mlm_labels = torch.randint(0, 13, (4, 6), generator=g)
    vtm_logits = torch.randn(4, 2, generator=g)
    vtm_labels = torch.tensor([1, 0, 1, 0])
    terms = pretrain_stage2_loss(mlm_logits, mlm_labels, vtm_logits, vtm_labels)
    matched = vtm_labels == 1
    assert terms["mlm"].item() == pytest.approx(mlm_loss(mlm_logits[matched], mlm_labels[matched]).item(), rel=1e-6)
    assert terms["vtm"].item() == pytest.approx(10.0 * vtm_loss(vtm_logits, vtm_labels).item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(terms["mlm"].item() + terms["vtm"].item(), rel=1e-6)


def test_stage2_loss_moves_labels_to_the_logits_device_and_dtype():
    """``video_text_matching_pairs`` makes labels on the generator's device (CPU) while the logits
    may be on an accelerator; the loss brings the labels over (as long class indices)."""
    g = torch.Generator().manual_seed(0)
    mlm_logits, vtm_logits = torch.randn(4, 6, 11, generator=g), torch.randn(4, 2, generator=g)
    mlm_labels = torch.randint(0, 11, (4, 6), generator=g)
    vtm_labels = video_text_matching_pairs(4, g).labels
    reference = pretrain_stage2_loss(mlm_logits, mlm_labels, vtm_logits, vtm_labels)
    # Other integer dtypes (as a data loader may give) are accepted and give the same loss.
    terms = pretrain_stage2_loss(mlm_logits, mlm_labels.int(), vtm_logits, vtm_labels.to(torch.int32))
    for name in reference:
        torch.testing.assert_close(terms[name], reference[name])
    # Logits on another device than the CPU labels (meta stands in for an accelerator here).
    meta = pretrain_stage2_loss(mlm_logits.to("meta"), mlm_labels, vtm_logits.to("meta"), vtm_labels)
    assert all(t.device.type == "meta" for t in meta.values())


def test_order_negatives_keep_the_video_and_reorder_the_sentences():
    """vtm_order_negatives: that share of the mismatched pairs keep their own video, their
    sentences (ids and mask alike) in another order; at 0 the draws are the paper's, unchanged."""
    from lfvila_cli.objectives import draw_stage2_targets

    b, m, length = 8, 4, 6
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 2000, (b, m, length), generator=g)
    mask = torch.ones(b, m, length, dtype=torch.long)
    mask[:, :, 3 + torch.arange(3)] = 0  # sentences of different lengths: the mask must move with them
    mask[:, 1, 3:] = 1
    mask[5, 1:] = 0  # text 5 has one sentence: it cannot be reordered
    special, vocab, mask_id = [0, 1, 2], 3000, 2

    def draw(share, seed=0):
        cfg = ObjectiveConfig(vtm_order_negatives=share, mlm_probability=1e-9)  # (no token masked)
        return draw_stage2_targets(ids, mask, special, vocab, mask_id, torch.Generator().manual_seed(seed), cfg)

    paper = draw(0.0)
    assert torch.equal(paper.input_ids, ids) and torch.equal(paper.attention_mask, mask)
    mismatched = (paper.vtm_labels == 0).nonzero().flatten().tolist()
    assert len(mismatched) == b // 2 and all(int(paper.video_index[r]) != r for r in mismatched)

    for seed in range(5):
        t = draw(1.0, seed)
        assert torch.equal(t.vtm_labels, draw(0.0, seed).vtm_labels)  # the pairing is drawn first, as before
        for row in range(b):
            if t.vtm_labels[row] == 1 or row == 5:
                assert torch.equal(t.input_ids[row], ids[row]) and torch.equal(t.attention_mask[row], mask[row])
                continue
            assert int(t.video_index[row]) == row  # its own video ...
            assert not torch.equal(t.input_ids[row], ids[row])  # ... and its sentences in another order
            order = [next(j for j in range(m) if torch.equal(t.input_ids[row, i], ids[row, j])) for i in range(m)]
            assert sorted(order) == list(range(m)) and order != list(range(m))
            assert all(torch.equal(t.attention_mask[row, i], mask[row, j]) for i, j in enumerate(order))
    half = draw(0.5)
    kept = [r for r in (half.vtm_labels == 0).nonzero().flatten().tolist() if int(half.video_index[r]) == r]
    assert len(kept) == 2  # round(0.5 × 4) of the mismatched pairs
    with pytest.raises(ConfigError, match="vtm_order_negatives"):
        ObjectiveConfig(vtm_order_negatives=1.5)


def test_order_negatives_enter_the_stage_two_key_only_when_set():
    from lfvila_cli.stages.pretrain import key_config
    from lfvila_cli.train.config import PretrainConfig

    assert "vtm_order_negatives" not in key_config(PretrainConfig(stage=2))["objectives"]  # older keys stay valid
    cfg = resolve(PretrainConfig, overrides=["stage=2", "objectives.vtm_order_negatives=0.5"])
    assert key_config(cfg)["objectives"]["vtm_order_negatives"] == 0.5
