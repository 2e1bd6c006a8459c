"""LF-VILA's losses: features in, losses out; no model code here. What each objective computes,
its weight and temperature: docs/method.md §4 (VPC, MTC, MLM, VTM) and §6 (fine-tuning). MTC
takes all its extra negatives from other videos, where the released code took one from the same
video: docs/method.md §7.

Shapes: B local batch, G = world·B the global batch, M clips = sentences per sample, D the
contrastive width (features L2-normalised), L tokens per sentence, V vocabulary, K answer
candidates, T frames.

    ObjectiveConfig                   weights (VPC 1, MTC 0.25, MLM 1, VTM 10), temperature 0.05,
                                      MTC draws (2 keys, 2 values, 3 other-video negatives), MLM
                                      rate 0.15, base seed of the generators
    video_paragraph_contrastive_loss  video, paragraph (B, D) -> scalar VPC, directions summed
    temporal_contrastive_loss         sentences, clips (B, M, D) -> TemporalContrastiveOutput:
                                      MTC loss (both directions), accuracy, the plans drawn
    sample_temporal_contrastive_plan  one MTC direction's draws for the global batch
    mask_tokens, mlm_loss             (N, L) ids -> MaskedTokens (80/10/10 of the selected);
                                      logits (..., V), labels -> mean CE over labelled tokens
    video_text_matching_pairs, vtm_loss   B -> video_index, labels (B,), half mismatched;
                                      logits (N, 2), labels (N,) -> 2-way CE
    pretrain_stage1_loss              video, paragraph (B, D), sentences, clips (B, M, D) ->
                                      {"vpc", "mtc", "total"}
    draw_stage2_targets               text (B, M, L) -> Stage2Targets: masked ids, MLM labels
                                      (B, M·L), video_index, VTM labels (B,)
    matched_mlm_labels, stage2_mlm_positions   the MLM labels of matched pairs; (B, M·L) bool,
                                      the tokens the MLM head must score
    pretrain_stage2_loss, stage2_output_loss   MLM (matched pairs only) + VTM ->
                                      {"mlm", "vtm", "total"}
    retrieval_loss                    VPC of a ``DualEncoderOutput``
    multiple_choice_loss              CE over choice logits (B, K) + span_weight ×
                                      class_balanced_span_loss over span logits (B, T, 2)
    classification_loss               CE over logits (B, num_labels)
    all_gather_with_grad              (B, ...) -> (G, ...) on every rank, gradients flowing back

Model outputs come in as the model returns them (``lfvila_cli.model.lfvila``'s output
dataclasses, read by attribute).

Distributed convention (open_clip style). ``all_gather_with_grad`` concatenates every rank's
features; its backward **sums** the gradients that all ranks send to a slice and hands each
rank its own slice. Each rank's loss is an average over its *local* rows (keys) scored
against *global* columns (candidates), scaled so that the mean of the per-rank losses equals
the single-process loss on the global batch. The optimised objective is therefore that mean,
which is what DDP / DeepSpeed compute when they **average** parameter gradients over ranks:
after that averaging the gradients equal the single-process gradients exactly. Before it, a
rank's raw input gradient is ``world_size`` times the single-process gradient of its slice.
Every rank must hold the same number of samples (use ``drop_last``).

MTC draws its sampling plan for the whole global batch from the generator passed in; seed it
identically on every rank (e.g. ``cfg.seed + step``, not the rank) and the 2-rank losses and
gradients equal the single-process ones exactly. Seeded differently per rank, the loss stays
valid but the draws differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import IGNORE_INDEX, NO_TARGET, ObjectiveConfig  # noqa: F401  (part of this module's API)

# --------------------------------------------------------------------------- distributed


def _distributed(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not in use."""
    if not _distributed(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate ``x`` from all ranks along dim 0; backward sums over ranks, keeps our slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        ctx.rank, ctx.local, ctx.group = rank, x.shape[0], group
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss may depend on our slice (as candidates/negatives); the gradient of
        # the sum of the per-rank losses w.r.t. our slice is the sum of what each rank sends.
        # DDP's 1/world averaging of parameter gradients then turns the sum into the mean.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.local
        return grad[start : start + ctx.local], None


def _check_same_shape(x: torch.Tensor, group) -> None:
    # all_gather needs identical shapes; with NCCL a mismatch can hang or return garbage.
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shapes, shape, group=group)
    if any(not torch.equal(s, shape) for s in shapes):
        found = [tuple(s.tolist()) for s in shapes]
        raise ValueError(f"all_gather_with_grad: every rank needs the same shape (use drop_last), got {found}")


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """``x`` (B, ...) from every rank concatenated in rank order -> (world·B, ...).

    Gradients flow back to each rank's own slice: backward all-reduces (sums) the incoming
    gradient and returns this rank's rows (see the module docstring for the scaling). The
    identity when torch.distributed is not initialised or the world has one rank.
    """
    if not _distributed(group):
        return x
    _check_same_shape(x, group)
    return _AllGatherWithGrad.apply(x, group)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits at temperature 0.05 lose precision; score in at least float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _zero_with_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0 that still connects to the inputs, so ``backward`` works on every rank."""
    return sum(t.sum() for t in tensors) * 0.0


# --------------------------------------------------------------------------- VPC


def video_paragraph_contrastive_loss(
    video: torch.Tensor, paragraph: torch.Tensor, temperature: float = 0.05, group=None
) -> torch.Tensor:
    """Global video–paragraph contrastive loss (VPC), both directions summed.

    video, paragraph: (B, D) local features, assumed L2-normalised; row ``b`` of each is the
    same sample. Both are all-gathered (with gradient) to the global batch (G = world·B).
    Returns a scalar: mean over the local rows of CE(video→all paragraphs) plus mean over the
    local rows of CE(paragraph→all videos). The mean of this over ranks equals the
    single-process loss on the global batch.
    """
    if video.shape != paragraph.shape or video.dim() != 2:
        raise ValueError(f"video and paragraph must both be (B, D), got {tuple(video.shape)} and {tuple(paragraph.shape)}")
    rank, _ = rank_and_world(group)
    local = video.shape[0]
    all_video = all_gather_with_grad(video, group)  # (G, D)
    all_paragraph = all_gather_with_grad(paragraph, group)  # (G, D)
    # Local rows against global columns; the positive of local row b is global column rank·B + b.
    targets = torch.arange(local, device=video.device) + rank * local
    video_to_paragraph = _upcast(video) @ _upcast(all_paragraph).t() / temperature  # (B, G)
    paragraph_to_video = _upcast(paragraph) @ _upcast(all_video).t() / temperature  # (B, G)
    return F.cross_entropy(video_to_paragraph, targets) + F.cross_entropy(paragraph_to_video, targets)


# --------------------------------------------------------------------------- MTC


@dataclass
class TemporalContrastivePlan:
    """The random draws of one MTC direction, for every sample of the global batch.

    Positions index clips/sentences (0..M−1), videos index the global batch (0..G−1).
    """

    key_pos: torch.Tensor  # (G, num_key) long, distinct per row
    value_pos: torch.Tensor  # (G, num_value) long, distinct per row
    target: torch.Tensor  # (G, num_key) long: index into value_pos of the nearest value, or NO_TARGET on a tie
    other_video: torch.Tensor  # (G, O) long: other videos (never the row's own), distinct when G−1 >= O
    other_pos: torch.Tensor  # (G, O) long: one random position in each of those videos

    def to(self, device) -> "TemporalContrastivePlan":
        return TemporalContrastivePlan(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def sample_temporal_contrastive_plan(
    num_videos: int, num_positions: int, cfg: ObjectiveConfig, generator: torch.Generator
) -> TemporalContrastivePlan:
    """Draw one MTC direction's keys, values and other-video negatives for a global batch.

    All draws come from ``generator`` (on its device), in a fixed order, so a seeded generator
    reproduces the plan. Other-video negatives are distinct videos when the batch has at least
    ``num_other_neg + 1`` videos, drawn with replacement (still never the own video) when it
    is smaller, and absent when it holds one video.
    """
    G, M = num_videos, num_positions
    K, V, O = cfg.mtc_num_key, cfg.mtc_num_value, cfg.mtc_num_other_neg
    if K > M or V > M:
        raise ValueError(f"MTC needs mtc_num_key ({K}) and mtc_num_value ({V}) <= clips per sample ({M})")
    device = generator.device

    def distinct(count: int, choices: int) -> torch.Tensor:
        # A uniformly random ordered subset per row: the first `count` of a random permutation.
        return torch.rand(G, choices, generator=generator, device=device).argsort(dim=1)[:, :count]

    key_pos = distinct(K, M)  # (G, K)
    value_pos = distinct(V, M)  # (G, V)
    distance = (key_pos[:, :, None] - value_pos[:, None, :]).abs()  # (G, K, V)
    nearest = distance.min(dim=2, keepdim=True).values
    tie = (distance == nearest).sum(dim=2) > 1  # (G, K)
    target = distance.argmin(dim=2).masked_fill(tie, NO_TARGET)

    if G == 1:
        O = 0
    if O <= G - 1:
        # Distinct other videos: sort random keys with the own video pushed last.
        scores = torch.rand(G, G, generator=generator, device=device)
        scores.fill_diagonal_(2.0)
        other_video = scores.argsort(dim=1)[:, :O]
    else:
        # Too few videos for distinct negatives: draw among the G−1 others, then skip the own index.
        draw = torch.randint(0, G - 1, (G, O), generator=generator, device=device)
        own = torch.arange(G, device=device)[:, None]
        other_video = draw + (draw >= own).long()
    other_pos = torch.randint(0, M, (G, O), generator=generator, device=device)
    return TemporalContrastivePlan(key_pos, value_pos, target, other_video, other_pos)


@dataclass
class TemporalContrastiveOutput:
    loss: torch.Tensor  # scalar: sentence_to_clip + clip_to_sentence
    sentence_to_clip: torch.Tensor  # scalar
    clip_to_sentence: torch.Tensor  # scalar
    accuracy: torch.Tensor  # scalar, detached: share of this rank's scored rows whose target scores highest
    num_rows: int  # rows scored on this rank (both directions)
    num_ties: int  # rows ignored on this rank because two values were equally near
    plans: tuple[TemporalContrastivePlan, TemporalContrastivePlan]  # (sentence→clip, clip→sentence), global


def _temporal_direction(
    keys: torch.Tensor,
    values: torch.Tensor,
    plan: TemporalContrastivePlan,
    rows: slice,
    world: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MTC direction. keys, values: (G, M, D) global. Returns (loss, correct rows)."""
    # Normalise by the scored rows of the *global* plan so that the mean over ranks of the
    # per-rank losses is the global mean, whatever the tie count on each rank.
    global_rows = int((plan.target != NO_TARGET).sum())  # the plan is on the generator's device: no sync
    plan = plan.to(keys.device)
    local = torch.arange(rows.start, rows.stop, device=keys.device)  # global indices of our videos
    key_pos, value_pos, target = plan.key_pos[rows], plan.value_pos[rows], plan.target[rows]  # (B, K), (B, V), (B, K)
    query = keys[local[:, None], key_pos]  # (B, K, D)
    same_video = values[local[:, None], value_pos]  # (B, V, D)
    other = values[plan.other_video[rows], plan.other_pos[rows]]  # (B, O, D)
    candidates = torch.cat([same_video, other], dim=1)  # (B, V+O, D)
    logits = torch.einsum("bkd,bcd->bkc", _upcast(query), _upcast(candidates)) / temperature  # (B, K, V+O)
    correct = ((logits.detach().argmax(dim=2) == target) & (target != NO_TARGET)).sum()
    if global_rows == 0:
        return _zero_with_graph(keys, values), correct
    summed = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=NO_TARGET, reduction="sum")
    return summed * world / global_rows, correct


def temporal_contrastive_loss(
    sentences: torch.Tensor,
    clips: torch.Tensor,
    generator: torch.Generator | None,
    cfg: ObjectiveConfig | None = None,
    *,
    plans: tuple[TemporalContrastivePlan, TemporalContrastivePlan] | None = None,
    group=None,
) -> TemporalContrastiveOutput:
    """Multimodal temporal contrastive loss (MTC), docs/method.md §4.

    sentences, clips: (B, M, D) local, assumed L2-normalised; ``[b, i]`` is sentence/clip ``i``
    of sample ``b``. Both are all-gathered (with gradient) so other-video negatives come from
    the global batch. ``generator`` draws the two plans (sentence→clip first, then
    clip→sentence) with ``sample_temporal_contrastive_plan``; pass ``plans`` instead to score
    given draws. Each direction's loss is the mean cross-entropy over the non-tied rows of the
    global batch (this rank's share, scaled as in the module docstring); the two are summed.
    If every row of a direction is tied its loss is 0, still connected to the graph.
    """
    cfg = cfg or ObjectiveConfig()
    if sentences.shape != clips.shape or sentences.dim() != 3:
        raise ValueError(f"sentences and clips must both be (B, M, D), got {tuple(sentences.shape)} and {tuple(clips.shape)}")
    rank, world = rank_and_world(group)
    local, positions = sentences.shape[:2]
    all_sentences = all_gather_with_grad(sentences, group)  # (G, M, D)
    all_clips = all_gather_with_grad(clips, group)  # (G, M, D)
    num_videos = all_sentences.shape[0]
    if plans is None:
        if generator is None:
            raise ValueError("temporal_contrastive_loss needs a torch.Generator (or explicit plans)")
        plans = (
            sample_temporal_contrastive_plan(num_videos, positions, cfg, generator),
            sample_temporal_contrastive_plan(num_videos, positions, cfg, generator),
        )
    for plan in plans:
        if plan.key_pos.shape[0] != num_videos:
            raise ValueError(f"MTC plan covers {plan.key_pos.shape[0]} videos, the global batch has {num_videos}")
    rows = slice(rank * local, (rank + 1) * local)
    s2c, correct_s2c = _temporal_direction(all_sentences, all_clips, plans[0], rows, world, cfg.temperature)
    c2s, correct_c2s = _temporal_direction(all_clips, all_sentences, plans[1], rows, world, cfg.temperature)
    scored = sum(int((p.target[rows] != NO_TARGET).sum()) for p in plans)
    tied = sum(int((p.target[rows] == NO_TARGET).sum()) for p in plans)
    return TemporalContrastiveOutput(
        loss=s2c + c2s,
        sentence_to_clip=s2c,
        clip_to_sentence=c2s,
        accuracy=(correct_s2c + correct_c2s).float() / max(scored, 1),
        num_rows=scored,
        num_ties=tied,
        plans=plans,
    )


# --------------------------------------------------------------------------- MLM


class MaskedTokens(NamedTuple):
    input_ids: torch.Tensor  # (N, L) with [MASK] / random / kept tokens at the selected places
    labels: torch.Tensor  # (N, L) original id at the selected places, IGNORE_INDEX elsewhere


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    vocab_size: int,
    mask_token_id: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> MaskedTokens:
    """BERT masking of text tokens: select ``probability`` of the eligible tokens; of those,
    80% -> ``mask_token_id``, 10% -> a uniformly random id in [0, vocab_size), 10% unchanged.

    input_ids: (N, L) text ids only (video tokens never pass through here).
    special_tokens_mask: (N, L), true for [CLS]/[SEP]/[PAD] and other special tokens.
    attention_mask: optional (N, L), 0 on padding; padding is never selected either way.
    ``input_ids`` is not modified.
    """
    eligible = ~special_tokens_mask.bool()
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    device = generator.device if generator is not None else input_ids.device
    shape = input_ids.shape
    selected = (torch.rand(shape, generator=generator, device=device) < probability).to(input_ids.device) & eligible
    how = torch.rand(shape, generator=generator, device=device).to(input_ids.device)
    random_ids = torch.randint(0, vocab_size, shape, generator=generator, device=device).to(input_ids.device)
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    masked = input_ids.clone()
    masked[selected & (how < 0.8)] = mask_token_id
    to_random = selected & (how >= 0.8) & (how < 0.9)
    masked[to_random] = random_ids[to_random].to(masked.dtype)
    return MaskedTokens(masked, labels)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens. logits (..., V), labels (...) with
    IGNORE_INDEX on unlabelled tokens; 0 (with a graph) when no token is labelled."""
    labels = labels.flatten()
    # Sum / count rather than reduction="mean": no host sync, and 0 rather than NaN when empty.
    summed = F.cross_entropy(_upcast(logits.flatten(0, -2)), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return summed / (labels != IGNORE_INDEX).sum().clamp(min=1)


# --------------------------------------------------------------------------- VTM


class VideoTextMatchingPairs(NamedTuple):
    video_index: torch.Tensor  # (B,) long: the sample whose video pairs with text b
    labels: torch.Tensor  # (B,) long: 1 matched (video_index[b] == b), 0 mismatched (another video, or its own
    #                      with the sentences reordered: order_negatives)


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of 0..n−1 with no fixed point (n >= 2); rejection
    sampling accepts with probability ≈ 1/e."""
    while True:
        perm = torch.randperm(n, generator=generator, device=generator.device)
        if not bool((perm == torch.arange(n, device=perm.device)).any()):
            return perm


def video_text_matching_pairs(batch_size: int, generator: torch.Generator) -> VideoTextMatchingPairs:
    """Choose ``batch_size // 2`` samples to mismatch; the rest keep their own video.

    The mismatched samples swap videos among themselves by a random derangement, so every
    video is still used once and none pairs with its own text. With a single mismatched
    sample (batch of 2 or 3) it takes the video of a random other sample instead. Tensors live
    on the generator's device.
    """
    if batch_size < 1:
        raise ValueError(f"video_text_matching_pairs: batch_size must be >= 1, got {batch_size}")
    device = generator.device
    video_index = torch.arange(batch_size, device=device)
    labels = torch.ones(batch_size, dtype=torch.long, device=device)
    num_mismatched = batch_size // 2
    chosen = torch.randperm(batch_size, generator=generator, device=device)[:num_mismatched]
    if num_mismatched >= 2:
        video_index[chosen] = chosen[_derangement(num_mismatched, generator)]
    elif num_mismatched == 1:
        other = int(torch.randint(0, batch_size - 1, (1,), generator=generator, device=device))
        video_index[chosen] = other + int(other >= int(chosen))
    labels[chosen] = 0
    return VideoTextMatchingPairs(video_index, labels)


def vtm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Two-way cross-entropy: logits (N, 2), labels (N,) with 1 = matched, 0 = mismatched."""
    return F.cross_entropy(_upcast(logits), labels)


# --------------------------------------------------------------------------- stages


def pretrain_stage1_loss(
    video: torch.Tensor,
    paragraph: torch.Tensor,
    sentences: torch.Tensor,
    clips: torch.Tensor,
    generator: torch.Generator,
    cfg: ObjectiveConfig | None = None,
    group=None,
) -> dict[str, torch.Tensor]:
    """Stage 1: ``total = vpc_weight·VPC + mtc_weight·MTC`` (1.0 and 0.25 by default).

    video, paragraph: (B, D) global features; sentences, clips: (B, M, D) local features;
    all L2-normalised. Returns the weighted terms ``vpc`` and ``mtc`` and their sum ``total``.
    """
    cfg = cfg or ObjectiveConfig()
    vpc = video_paragraph_contrastive_loss(video, paragraph, cfg.temperature, group=group)
    mtc = temporal_contrastive_loss(sentences, clips, generator, cfg, group=group).loss
    terms = {"vpc": cfg.vpc_weight * vpc, "mtc": cfg.mtc_weight * mtc}
    terms["total"] = terms["vpc"] + terms["mtc"]
    return terms


def matched_mlm_labels(mlm_labels: torch.Tensor, vtm_labels: torch.Tensor) -> torch.Tensor:
    """mlm_labels (N, L), vtm_labels (N,) -> (N, L) long on mlm_labels' device: the labels MLM
    is trained on, IGNORE_INDEX on the rows of mismatched pairs (``vtm_labels == 0``)."""
    mlm_labels = torch.as_tensor(mlm_labels).long()
    mismatched = torch.as_tensor(vtm_labels).to(mlm_labels.device) == 0
    return mlm_labels.masked_fill(mismatched[:, None], IGNORE_INDEX)


def pretrain_stage2_loss(
    mlm_logits: torch.Tensor,
    mlm_labels: torch.Tensor,
    vtm_logits: torch.Tensor,
    vtm_labels: torch.Tensor,
    cfg: ObjectiveConfig | None = None,
    mlm_positions: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Stage 2: ``total = mlm_weight·MLM + vtm_weight·VTM`` (1 and 10 by default).

    mlm_logits (N, L, V) and mlm_labels (N, L) come from the same forward pass as vtm_logits
    (N, 2); MLM counts on matched pairs only, so labels of rows with ``vtm_labels == 0`` are
    ignored. With ``mlm_positions`` (N, L) bool, mlm_logits (P, V) holds only the rows of those
    P tokens, in row-major order (the model scored no others; every labelled token of a
    matched pair must be among them). Labels may live on another device or have another
    integer dtype than the logits (they are moved to the logits' device as long). Returns the
    weighted terms ``mlm`` and ``vtm`` and their sum ``total``.
    """
    cfg = cfg or ObjectiveConfig()
    # ``video_text_matching_pairs`` makes its labels on the generator's device (often the CPU)
    # while the logits may be on an accelerator: bring the labels to the logits, as class indices.
    vtm_labels = torch.as_tensor(vtm_labels).to(device=vtm_logits.device, dtype=torch.long)
    labels = matched_mlm_labels(torch.as_tensor(mlm_labels).to(mlm_logits.device), vtm_labels)
    if mlm_positions is not None:
        labels = labels[mlm_positions.to(labels.device)]  # (P,)
    terms = {
        "mlm": cfg.mlm_weight * mlm_loss(mlm_logits, labels),
        "vtm": cfg.vtm_weight * vtm_loss(vtm_logits, vtm_labels),
    }
    terms["total"] = terms["mlm"] + terms["vtm"]
    return terms


class Stage2Targets(NamedTuple):
    """The random draws of one stage-2 batch (B samples, M sentence slots, L tokens)."""

    input_ids: torch.Tensor  # (B, M, L) MLM-masked token ids, the model's text input
    mlm_labels: torch.Tensor  # (B, M·L) original id at the selected tokens, IGNORE_INDEX elsewhere
    video_index: torch.Tensor  # (B,) long: the sample whose video pairs with text b
    vtm_labels: torch.Tensor  # (B,) long: 1 matched, 0 mismatched
    attention_mask: torch.Tensor  # (B, M, L): the text's mask, its slots in input_ids' order


def draw_stage2_targets(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_token_ids: Iterable[int],
    vocab_size: int,
    mask_token_id: int,
    generator: torch.Generator,
    cfg: ObjectiveConfig | None = None,
) -> Stage2Targets:
    """Stage 2's draws for a batch of texts input_ids, attention_mask (B, M, L): first the VTM
    pairing (``video_text_matching_pairs``), then the temporal negatives (``order_negatives``,
    only when ``cfg.vtm_order_negatives`` > 0), then the MLM masking (``mask_tokens``,
    probability ``cfg.mlm_probability``; tokens whose id is in ``special_token_ids`` and padding
    are never selected), all from ``generator``, in that order."""
    cfg = cfg or ObjectiveConfig()
    b, m, length = input_ids.shape
    pairs = video_text_matching_pairs(b, generator)
    if cfg.vtm_order_negatives > 0:
        pairs, input_ids, attention_mask = order_negatives(pairs, input_ids, attention_mask, cfg.vtm_order_negatives, generator)
    flat = input_ids.reshape(b * m, length)
    special = torch.tensor(sorted(set(special_token_ids)), dtype=flat.dtype, device=flat.device)
    masked = mask_tokens(
        flat, torch.isin(flat, special), vocab_size, mask_token_id,
        cfg.mlm_probability, generator, attention_mask=attention_mask.reshape(b * m, length),
    )
    return Stage2Targets(
        masked.input_ids.reshape(b, m, length), masked.labels.reshape(b, m * length), pairs.video_index, pairs.labels,
        attention_mask,
    )


def order_negatives(
    pairs: VideoTextMatchingPairs, input_ids: torch.Tensor, attention_mask: torch.Tensor, share: float, generator: torch.Generator
) -> tuple[VideoTextMatchingPairs, torch.Tensor, torch.Tensor]:
    """Turn ``share`` of the mismatched pairs into temporal negatives: the text keeps its own
    video and its sentences come in another order (a permutation of its filled slots other than
    the identity; texts of one sentence stay as they were). input_ids, attention_mask (B, M, L).
    Draws from ``generator``: the order of the mismatched rows, then one permutation per row
    taken. Returns the pairs (labels unchanged: 0) and the reordered ids and mask."""
    mismatched = (pairs.labels == 0).nonzero().flatten()
    picked = mismatched[torch.randperm(len(mismatched), generator=generator, device=generator.device).to(mismatched.device)]
    picked = picked[: int(round(share * len(mismatched)))]
    video_index, ids, mask = pairs.video_index.clone(), input_ids.clone(), attention_mask.clone()
    filled = attention_mask.to(torch.bool).any(dim=-1).sum(dim=-1)  # (B,) sentences per text
    for row in picked.tolist():
        n = int(filled[row])
        if n < 2:
            continue
        order = torch.randperm(n, generator=generator, device=generator.device)
        while bool((order == torch.arange(n, device=order.device)).all()):
            order = torch.randperm(n, generator=generator, device=generator.device)
        order = order.to(ids.device)
        ids[row, :n], mask[row, :n] = input_ids[row, order], attention_mask[row, order]
        video_index[row] = row
    return VideoTextMatchingPairs(video_index, pairs.labels), ids, mask


def stage2_mlm_positions(targets: Stage2Targets) -> torch.Tensor:
    """(B, M·L) bool, on the labels' device: the tokens MLM is trained on (masked tokens of
    matched pairs), the only ones the MLM head needs to score (docs/method.md §4)."""
    return matched_mlm_labels(targets.mlm_labels, targets.vtm_labels) != IGNORE_INDEX


def stage2_output_loss(
    output: Any, targets: Stage2Targets, cfg: ObjectiveConfig | None = None, with_accuracy: bool = False
) -> dict[str, torch.Tensor]:
    """``pretrain_stage2_loss`` of a stage-2 model output (``vtm_logits`` (B, 2); ``mlm_logits``
    (B, M·L, V), or (P, V) for the P tokens of ``output.mlm_positions`` where that is set)
    against ``targets``. With ``with_accuracy`` also the counts ``vtm_correct``, and
    ``mlm_correct`` / ``mlm_count`` over the tokens MLM is trained on (masked tokens of matched
    pairs), on the CPU."""
    positions = output.mlm_positions
    terms = pretrain_stage2_loss(
        output.mlm_logits, targets.mlm_labels, output.vtm_logits, targets.vtm_labels, cfg, mlm_positions=positions
    )
    if with_accuracy:
        terms["vtm_correct"] = (output.vtm_logits.argmax(-1).cpu() == targets.vtm_labels.cpu()).sum().float()
        labels = matched_mlm_labels(targets.mlm_labels.to(output.mlm_logits.device), targets.vtm_labels)
        terms["mlm_count"] = (labels != IGNORE_INDEX).sum().float().cpu()
        if positions is not None:
            labels = labels[positions.to(labels.device)]  # (P,), the rows of mlm_logits
        scored = labels != IGNORE_INDEX
        terms["mlm_correct"] = ((output.mlm_logits.argmax(-1) == labels) & scored).sum().float().cpu()
    return terms


# --------------------------------------------------------------------------- fine-tuning tasks


def retrieval_loss(output: Any, temperature: float = 0.05, group=None) -> dict[str, torch.Tensor]:
    """Retrieval fine-tuning: VPC between ``output.video.global_embedding`` and
    ``output.text.paragraph_embedding`` (both (B, D), a ``DualEncoderOutput``).
    Returns ``vpc`` and ``total`` (the same)."""
    vpc = video_paragraph_contrastive_loss(output.video.global_embedding, output.text.paragraph_embedding, temperature, group=group)
    return {"total": vpc, "vpc": vpc}


def class_balanced_span_loss(
    span_logits: torch.Tensor, span_labels: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-frame in/out-of-span cross-entropy, each class weighted to half of each sample's loss.

    span_logits (B, T, 2), span_labels (B, T) in {0, 1}, frame_mask (B, T) optional (True =
    real frame). Per sample: 0.5 · mean CE over its in-span frames + 0.5 · mean CE over its
    out-of-span frames (a class the sample lacks adds 0); then the mean over samples. This is
    the authors' weighting (frame weight T·0.5 / N_class, then the mean over all frames).
    Two-way softmax CE equals BCE on the logit difference.
    """
    batch, frames, _ = span_logits.shape
    ce = F.cross_entropy(span_logits.reshape(-1, 2).float(), span_labels.reshape(-1).long(), reduction="none")
    ce = ce.view(batch, frames)
    valid = torch.ones_like(ce, dtype=torch.bool) if frame_mask is None else frame_mask.to(torch.bool)
    inside = (span_labels == 1) & valid
    outside = (span_labels == 0) & valid
    per_sample = 0.0
    for members in (inside, outside):
        weight = members.to(ce.dtype)
        per_sample = per_sample + 0.5 * (ce * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
    return per_sample.mean()


def multiple_choice_loss(
    output: Any, labels: torch.Tensor, span_labels: torch.Tensor, span_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """Multiple-choice QA (How2QA): cross-entropy of ``output.choice_logits`` (B, K) against
    ``labels`` (B,), plus ``span_weight`` × ``class_balanced_span_loss`` of
    ``output.span_logits`` (B, T, 2) against ``span_labels`` (B, T) (1 in the span, 0 outside,
    negative = no span: left out). Returns ``choice``, ``span`` and ``total``."""
    choice = F.cross_entropy(output.choice_logits.float(), labels)
    span = class_balanced_span_loss(output.span_logits, span_labels, span_labels >= 0)
    return {"total": choice + span_weight * span, "choice": choice, "span": span}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Classification QA: cross-entropy of logits (B, num_labels) against labels (B,).
    Returns ``ce`` and ``total`` (the same)."""
    ce = F.cross_entropy(logits.float(), labels)
    return {"total": ce, "ce": ce}

