"""Validation and test metrics (docs/method.md §6): retrieval ranks in both directions, the
temporal-order check of the bundled example, and the QA tasks' accuracy. N paragraphs = N videos,
video i the match of text i; embeddings (N, D), scored by dot product (pass L2-normalised ones).

    ranks_chunked(query, keys)        (N,) ranks, 1 = best, ``chunk`` queries at a time so memory
                                      stays ~chunk × N scores (20,000 × 20,000 at 1024 dimensions:
                                      ``benchmarks/bench_ranking.py``); ``retrieval_ranks`` is the
                                      full-matrix reference
    rank_metrics(ranks)               R@K as *fractions* (0–1), MedR (median rank), MnR (mean rank)
    retrieval_metrics(video, text)    both directions (text→video, video→text), R@1/5/10/50, MedR, MnR
    paragraph_to_video_retrieval      text→video R@1/5/10 and MedR
    temporal_order_accuracy           share of paragraphs closer to their own video than to its
                                      reordered twin (chance 0.5, ties wrong)
    embed_dataset, evaluate_stage1    embed a dataset in eval mode; stage 1's validation figures
    dual_softmax_ranks                ranks after dual-softmax re-scoring (``..._reference``: full
                                      matrix); transductive, so reported apart
    predict_task, task_metrics        a ``TaskDataset``'s outputs; its figures with the chance level
    span_metrics                      How2QA's span head: IoU of its predicted span with the
                                      annotated one, and a random span's IoU (chance)
    gather_in_order                   every rank's share back in index order, on every rank

Ranks are pessimistic on ties: a video scoring exactly as high as the true one counts as ranked
above it, so constant embeddings give chance, not 1.

Temporal order: the bundled example gives each val/test base video a reordered twin (same
events in another order; corpus task fields ``group`` and ``hard_negative_of``); base and twin
paragraphs alike are scored, text→video. ``evaluate_stage1`` embeds a (non-training)
``PretrainDataset`` through its deterministic eval window (no augmentation; a val sample with
more than ``clips_per_sample`` clips is seen through one window, the same for its text and its
video). The twin of a sample is seen through *its own* eval window: with videos of exactly
``clips_per_sample`` clips the pair differs by order only, with longer ones the windows may also
differ in content.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch


def _similarity(video_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    video_emb = torch.as_tensor(video_emb, dtype=torch.float64)
    text_emb = torch.as_tensor(text_emb, dtype=torch.float64)
    if video_emb.dim() != 2 or video_emb.shape != text_emb.shape:
        raise ValueError(f"video and text embeddings must both be (N, D), got {tuple(video_emb.shape)} and {tuple(text_emb.shape)}")
    return text_emb @ video_emb.t()  # (N texts, N videos)


def retrieval_ranks(video_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(N,) long: rank (1 = best) of video i among all videos for text i (ties pessimistic).

    The reference: one float64 (N, N) similarity matrix. ``ranks_chunked`` is the path used
    for evaluation (bounded memory), tested equal to this one."""
    sim = _similarity(video_emb, text_emb)
    own = sim.diagonal()[:, None]
    above = (sim >= own).sum(dim=1) - 1  # every other video scoring >= the true one
    return above + 1


def ranks_chunked(query: torch.Tensor, keys: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) long: rank (1 = best) of ``keys[i]`` among all keys for ``query[i]`` by dot product,
    ties pessimistic, computed ``chunk`` queries at a time: peak memory ~ chunk × N scores
    instead of N × N. Scores are in the inputs' dtype (float32 or float64); a query's own score
    is read from the same product as the others, so ties compare exactly.

    Text→video ranks: ``ranks_chunked(text, video)``; video→text: ``ranks_chunked(video, text)``."""
    if query.dim() != 2 or query.shape != keys.shape:
        raise ValueError(f"query and keys must both be (N, D), got {tuple(query.shape)} and {tuple(keys.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not query.is_floating_point() or query.dtype in (torch.float16, torch.bfloat16):
        query = query.float()
    keys = keys.to(query.dtype)
    n = query.shape[0]
    ranks = torch.empty(n, dtype=torch.long)
    keys_t = keys.t()  # a view: BLAS reads it transposed, no copy
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = query[start:stop] @ keys_t  # (c, N)
        rows = torch.arange(stop - start)
        own = scores[rows, rows + start][:, None]
        ranks[start:stop] = (scores >= own).sum(dim=1).cpu()  # counts itself: rank 1 when alone on top
    return ranks


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 50)) -> dict[str, float]:
    """Recall@K (fractions), MedR and MnR (mean rank) of 1-based ``ranks``."""
    if ranks.numel() == 0:
        raise ValueError("rank_metrics: no queries")
    ranks = ranks.double()
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    out["MedR"] = float(np.median(ranks.numpy()))
    out["MnR"] = float(ranks.mean())
    return out


def retrieval_metrics(
    video_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 50), chunk: int = 1024
) -> dict[str, dict[str, float]]:
    """Both directions with video i the match of text i: ``{"text_to_video": {R@K.., MedR, MnR},
    "video_to_text": {...}}`` by dot product, chunked (``ranks_chunked``)."""
    return {
        "text_to_video": rank_metrics(ranks_chunked(text_emb, video_emb, chunk), ks),
        "video_to_text": rank_metrics(ranks_chunked(video_emb, text_emb, chunk), ks),
    }


def paragraph_to_video_retrieval(video_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text→video retrieval with video i the match of text i: ``{"R@1", "R@5", "R@10"`` (fractions),
    ``"MedR"}`` over N paragraphs (``video_emb``, ``text_emb``: (N, D), any normalisation —
    scores are dot products, so pass L2-normalised embeddings for cosine similarity)."""
    text, video = (torch.as_tensor(x, dtype=torch.float64) for x in (text_emb, video_emb))
    if video.shape[0] == 0:
        raise ValueError("paragraph_to_video_retrieval: no paragraphs")
    metrics = rank_metrics(ranks_chunked(text, video), ks)
    return {k: v for k, v in metrics.items() if k != "MnR"}


def temporal_order_accuracy(
    video_emb: torch.Tensor,
    text_emb: torch.Tensor,
    sample_ids: Sequence[str],
    hard_negative_of: Mapping[str, str],
) -> dict[str, float]:
    """Fraction of paragraphs whose similarity to their own video exceeds that to their
    reordered twin's video. ``sample_ids[i]`` names row i of both embeddings;
    ``hard_negative_of[id]`` names its twin. Rows whose twin is absent are not counted.
    Returns ``{"accuracy": fraction (NaN without pairs), "pairs": number of paragraphs scored}``."""
    sim = _similarity(video_emb, text_emb)
    row = {sid: i for i, sid in enumerate(sample_ids)}
    wins, count = 0, 0
    for i, sid in enumerate(sample_ids):
        twin = hard_negative_of.get(sid)
        if twin is None or twin not in row:
            continue
        count += 1
        wins += int(sim[i, i] > sim[i, row[twin]])
    return {"accuracy": wins / count if count else float("nan"), "pairs": count}


def gather_in_order(out: dict[str, Any], num_examples: int, rank: int, world_size: int) -> dict[str, Any]:
    """Every rank's share of a ``make_loader(..., rank, world_size, shuffle=False,
    drop_last=False)`` pass — rank ``r`` holds positions ``r, r + W, ...`` of the index order,
    padded with its head — back in index order on every rank (``torch.distributed``
    all-gather; all ranks must call it). Tensors are concatenated along dim 0, lists joined."""
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, out)
    counts = [len(p["sample_ids"]) for p in parts]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index = [int(offsets[p % world_size]) + p // world_size for p in range(num_examples)]
    merged: dict[str, Any] = {}
    for key in out:
        if isinstance(out[key], torch.Tensor):
            merged[key] = torch.cat([p[key] for p in parts])[index]
        else:
            joined = [item for p in parts for item in p[key]]
            merged[key] = [joined[i] for i in index]
    return merged


@torch.no_grad()
def embed_dataset(
    model, dataset, batch_size: int, with_local: bool = False, rank: int = 0, world_size: int = 1, precision: str = "fp32",
) -> dict[str, Any]:
    """Global video and paragraph embeddings (float32, CPU) of every example of ``dataset`` (a
    ``PretrainDataset`` or a retrieval ``TaskDataset``), in index order, in eval mode (the
    model's previous mode is restored). With ``with_local`` and local projections also
    ``"clips"`` (N, M, D), ``"sentences"`` (N, M, D) and ``"sentence_mask"``. With
    ``world_size`` > 1 every rank embeds its share and all get the whole result
    (``gather_in_order``): every rank must call it. ``precision``: auto | bf16 | fp32
    (``model/precision.py``; fp32, the default, is the reference)."""
    from .data.loader import make_loader
    from .model.precision import autocast

    was_training = model.training
    model.eval()
    out: dict[str, list] = {"video": [], "text": [], "sample_ids": []}
    try:
        param = next(model.parameters())
        for batch in make_loader(dataset, batch_size, rank=rank, world_size=world_size, shuffle=False, drop_last=False):
            frames = batch["frames"].to(device=param.device, dtype=param.dtype)
            with autocast(precision, param.device):
                video = model.encode_video(frames)
                text = model.encode_text(batch["input_ids"].to(param.device), batch["attention_mask"].to(param.device))
            out["video"].append(video.global_embedding.float().cpu())
            out["text"].append(text.paragraph_embedding.float().cpu())
            out["sample_ids"].extend(batch["sample_ids"])
            if with_local and video.clip_embeddings is not None and text.sentence_embeddings is not None:
                out.setdefault("clips", []).append(video.clip_embeddings.float().cpu())
                out.setdefault("sentences", []).append(text.sentence_embeddings.float().cpu())
                out.setdefault("sentence_mask", []).append(text.sentence_mask.cpu())
    finally:
        model.train(was_training)
    result = {k: (v if k == "sample_ids" else torch.cat(v)) for k, v in out.items()}
    return gather_in_order(result, len(dataset), rank, world_size) if world_size > 1 else result


def evaluate_stage1(model, val_dataset, batch_size: int = 8, rank: int = 0, world_size: int = 1, precision: str = "fp32") -> dict[str, float]:
    """Paragraph→video retrieval over ``val_dataset`` (a ``PretrainDataset`` with ``train=False``)
    and, where samples carry ``hard_negative_of``, temporal-order accuracy. Keys: ``R@1``,
    ``R@5``, ``R@10``, ``MedR``, ``chance_R@1`` (1/N), ``num_videos``, and
    ``temporal_order_accuracy``/``temporal_order_pairs`` when twins are present. With
    ``world_size`` > 1 the ranks share the embedding (every rank must call it). ``precision``: as
    in ``embed_dataset``."""
    if len(val_dataset) == 0:
        raise ValueError("evaluate_stage1: the validation dataset is empty")
    emb = embed_dataset(model, val_dataset, batch_size, rank=rank, world_size=world_size, precision=precision)
    n = len(emb["sample_ids"])
    out: dict[str, float] = dict(paragraph_to_video_retrieval(emb["video"], emb["text"]))
    out["chance_R@1"] = 1.0 / n
    out["num_videos"] = n
    twins = {
        s.id: str(s.task["hard_negative_of"]) for s in val_dataset.samples if s.task.get("hard_negative_of")
    }
    if twins:
        order = temporal_order_accuracy(emb["video"], emb["text"], emb["sample_ids"], twins)
        if order["pairs"]:
            out["temporal_order_accuracy"] = order["accuracy"]
            out["temporal_order_pairs"] = order["pairs"]
    return out


# ---------------------------------------------------------------------------------------------
# Downstream tasks (fine-tuning validation, ``lfvila evaluate``)
# ---------------------------------------------------------------------------------------------


def dual_softmax_ranks(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.01, chunk: int = 1024) -> torch.Tensor:
    """Ranks as ``ranks_chunked`` after dual-softmax re-scoring (Cheng et al. 2021): each score
    ``s[q, k]`` is multiplied by ``softmax_q(s[:, k] / temperature)``, the prior of query ``q``
    among all queries for key ``k``. This uses every query at once — a transductive step — so
    it is reported apart from the plain numbers, never mixed with them (docs/method.md §6).

    Two chunked passes keep memory ~ chunk × N: the per-key log-sum-exp over queries, then the
    re-scored ranks. ``dual_softmax_ranks_reference`` is the full-matrix version."""
    if query.dim() != 2 or query.shape != keys.shape:
        raise ValueError(f"query and keys must both be (N, D), got {tuple(query.shape)} and {tuple(keys.shape)}")
    query, keys = query.double(), keys.double()
    n = query.shape[0]
    keys_t = keys.t()
    lse = torch.full((n,), float("-inf"), dtype=torch.float64)
    for start in range(0, n, chunk):
        scores = query[start : start + chunk] @ keys_t / temperature
        lse = torch.logaddexp(lse, torch.logsumexp(scores, dim=0))
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = query[start:stop] @ keys_t
        scores = scores * torch.exp(scores / temperature - lse[None, :])
        rows = torch.arange(stop - start)
        own = scores[rows, rows + start][:, None]
        ranks[start:stop] = (scores >= own).sum(dim=1)
    return ranks


def dual_softmax_ranks_reference(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """The full-matrix reference of ``dual_softmax_ranks``."""
    scores = query.double() @ keys.double().t()
    scores = scores * torch.softmax(scores / temperature, dim=0)
    own = scores.diagonal()[:, None]
    return (scores >= own).sum(dim=1)


@torch.no_grad()
def predict_task(
    model, dataset, batch_size: int, with_local: bool = False, rank: int = 0, world_size: int = 1, precision: str = "fp32",
) -> dict[str, Any]:
    """Run ``model`` in eval mode over a ``TaskDataset`` (index order) and return what its task
    is scored on: retrieval — ``embed_dataset``'s embeddings; multiple choice / classification
    ``{"logits", "labels"}`` (logits float32), multiple choice with a span head also
    ``{"span_logits", "span_labels"}`` ((N, T, 2), (N, T)); always ``"sample_ids"``. With ``world_size`` > 1
    the ranks share the work and all get the whole result (every rank must call it).
    ``precision``: as in ``embed_dataset``."""
    from .data.loader import make_loader
    from .model.precision import autocast

    if dataset.kind == "retrieval":
        return embed_dataset(model, dataset, batch_size, with_local=with_local, rank=rank, world_size=world_size, precision=precision)
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"logits": [], "labels": [], "sample_ids": []}
    spans: dict[str, list] = {"span_logits": [], "span_labels": []}
    try:
        param = next(model.parameters())
        for batch in make_loader(dataset, batch_size, rank=rank, world_size=world_size, shuffle=False, drop_last=False):
            frames = batch["frames"].to(device=param.device, dtype=param.dtype)
            ids, mask = batch["input_ids"].to(param.device), batch["attention_mask"].to(param.device)
            with autocast(precision, param.device):
                output = model(frames, ids, mask)  # LfvilaForMultipleChoice or LfvilaForClassification
            logits = output.choice_logits if dataset.kind == "multiple_choice" else output.logits
            out["logits"].append(logits.float().cpu())
            out["labels"].append(batch["label"])
            out["sample_ids"].extend(batch["sample_ids"])
            if getattr(output, "span_logits", None) is not None and "span_labels" in batch:
                spans["span_logits"].append(output.span_logits.float().cpu())
                spans["span_labels"].append(batch["span_labels"])
    finally:
        model.train(was_training)
    if spans["span_logits"]:
        out.update(spans)
    result = {k: (v if k == "sample_ids" else torch.cat(v)) for k, v in out.items()}
    return gather_in_order(result, len(dataset), rank, world_size) if world_size > 1 else result


def task_metrics(
    kind: str, predicted: Mapping[str, Any], dual_softmax: float | None = None, chunk: int = 1024, ranks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The task's figures from ``predict_task`` output, with the chance level.

    retrieval: ``text_to_video`` / ``video_to_text`` R@1/5/10/50, MedR, MnR (chance R@K = K/N),
    and with ``dual_softmax`` (a temperature) the same under ``dual_softmax`` — labelled apart.
    QA: ``accuracy`` over every item (an answer outside the vocabulary, label -1, counts as
    wrong), ``chance`` = 1/candidates (multiple choice) or the majority label's share
    (classification), ``num_items``. ``ranks``: retrieval ranks already computed by
    ``ranks_chunked`` (``{"text_to_video", "video_to_text"}``), so a caller that also writes them
    out ranks once."""
    if kind == "retrieval":
        video, text = predicted["video"], predicted["text"]
        n = video.shape[0]
        if ranks is None:
            out: dict[str, Any] = dict(retrieval_metrics(video, text, chunk=chunk))
        else:
            out = {direction: rank_metrics(ranks[direction]) for direction in ("text_to_video", "video_to_text")}
        out["chance"] = {f"R@{k}": min(1.0, k / n) for k in (1, 5, 10, 50)}
        out["num_videos"] = n
        if dual_softmax is not None:
            out["dual_softmax"] = {
                "temperature": dual_softmax,
                "text_to_video": rank_metrics(dual_softmax_ranks(text, video, dual_softmax, chunk)),
                "video_to_text": rank_metrics(dual_softmax_ranks(video, text, dual_softmax, chunk)),
            }
        return out
    logits, labels = predicted["logits"], predicted["labels"].long()
    if labels.numel() == 0:
        raise ValueError("task_metrics: no items")
    correct = logits.argmax(dim=-1) == labels
    if kind == "multiple_choice":
        chance = 1.0 / logits.shape[1]
    else:
        known = labels[labels >= 0]
        chance = float(torch.bincount(known).max()) / labels.numel() if known.numel() else 0.0
    out = {"accuracy": float(correct.double().mean()), "chance": chance, "num_items": int(labels.numel())}
    if "span_logits" in predicted:
        span = span_metrics(predicted["span_logits"], predicted["span_labels"])
        if span["items"]:
            out["span"] = span
    return out


def frame_runs(frames: int) -> torch.Tensor:
    """(R, T) bool: every run of consecutive frames [s, e], 0 <= s <= e < T, R = T(T+1)/2."""
    index = torch.arange(frames)
    start, end = torch.triu_indices(frames, frames)  # s <= e
    return (index >= start[:, None]) & (index <= end[:, None])


def span_metrics(span_logits: torch.Tensor, span_labels: torch.Tensor) -> dict[str, Any]:
    """How well the span head finds the annotated span, over the items that have one.

    span_logits (N, T, 2) (out of / in the span), span_labels (N, T): 1 in, 0 out, negative =
    no span (left out). The predicted span of an item is the run of consecutive frames with the
    largest sum of in-minus-out margins (at least one frame): the frames the head calls in, made
    one interval. Its IoU with the annotated frames, per item, then the mean: ``iou``.
    ``chance_iou``: the same for a run drawn uniformly from all T(T+1)/2 runs (its expected
    IoU, exact); ``whole_video_iou``: the IoU of predicting every frame. ``items``: how many."""
    has_span = (span_labels >= 0).all(dim=1) & (span_labels == 1).any(dim=1)  # (N,)
    logits, labels = span_logits[has_span].float(), (span_labels[has_span] == 1).float()  # (n, T, 2), (n, T)
    if labels.shape[0] == 0:
        return {"iou": None, "chance_iou": None, "whole_video_iou": None, "items": 0}
    runs = frame_runs(labels.shape[1]).float()  # (R, T)
    overlap = labels @ runs.T  # (n, R): annotated frames inside each run
    iou = overlap / (runs.sum(dim=1) + labels.sum(dim=1, keepdim=True) - overlap)  # (n, R)
    margin = logits[..., 1] - logits[..., 0]  # (n, T)
    best = (margin @ runs.T).argmax(dim=1)  # (n,) the run with the largest summed margin
    return {
        "iou": float(iou.gather(1, best[:, None]).mean()),
        "chance_iou": float(iou.mean()),
        "whole_video_iou": float((labels.sum(dim=1) / labels.shape[1]).mean()),
        "items": int(labels.shape[0]),
    }
