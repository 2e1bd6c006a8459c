"""Fine-tuning and evaluation data for the downstream tasks (docs/method.md §6).

Every task reads a frame store cached in ``chunks`` mode: each sample's video (or its
``clip``) as ``N`` equal chunks of ``K`` frames, so ``T = N·K`` frames spread over the whole
video. Items:

* **retrieval** — frames and the paragraph as ``M`` sentence slots (``loader.clips_per_sample``):
  a paragraph of more than ``M`` sentences is merged by repeatedly joining the adjacent pair
  with the smallest combined length in words (ties: the earliest pair), as docs/method.md §6 says; a
  shorter one leaves slots empty (the text encoder masks them).
* **multiple_choice** (How2QA) — for each of the ``C`` candidates a text of ``2 + S`` slots: the
  question, the candidate, then up to ``S`` = ``max_subtitles`` subtitle lines in time order
  (question and candidate in one slot overflowed the tiny preset's 32 tokens per sentence and
  cut off the candidate's words that tell the candidates apart);
  per frame a span label (1 inside the annotated ``span``, 0 outside, from the frame's cached
  time; ``-100`` for every frame when the item has no span: the span loss skips it).
* **classification** (VIOLIN, ActivityNet-QA) — the statement or question then up to ``S``
  subtitle slots, and the ``label`` (VIOLIN: 1 true / 0 false; ActivityNet-QA: the answer's
  class, -1 when the answer is outside the vocabulary: skipped in training, wrong in evaluation).

Train items get the pre-training augmentation (one crop box and one flip for all ``T`` frames,
``loader.augment``); evaluation items none. An item is a pure function of ``(seed, epoch,
index)``, so ``make_loader`` shards and resumes these datasets as it does pre-training ones.
Samples whose store rows failed or are pending are skipped and counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..errors import DataError
from .corpus import Sample, is_qa_item
from .framestore import OK, FrameStore
from .loader import StoreBacked, augment, crop_params, normalisation
from .loader_config import LoaderConfig, check_task_shapes, text_slots

log = logging.getLogger(__name__)

Kind = Literal["retrieval", "multiple_choice", "classification"]
KINDS: tuple[str, ...] = ("retrieval", "multiple_choice", "classification")
IGNORE_SPAN = -100


def merge_sentences(sentences: Sequence[str], slots: int) -> list[str]:
    """At most ``slots`` texts: while there are too many, join the adjacent pair with the
    smallest combined length in words (the earliest such pair on ties)."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    texts = [s.strip() for s in sentences]
    lengths = [len(t.split()) for t in texts]
    while len(texts) > slots:
        i = min(range(len(texts) - 1), key=lambda j: (lengths[j] + lengths[j + 1], j))
        texts[i : i + 2] = [f"{texts[i]} {texts[i + 1]}"]
        lengths[i : i + 2] = [lengths[i] + lengths[i + 1]]
    return texts


def subtitle_lines(sample: Sample, limit: int) -> list[str]:
    """The first ``limit`` subtitle texts in time order (untimed ones keep their place at the end)."""
    subtitles = [s for s in sample.task.get("subtitles") or [] if str(s.get("text", "")).strip()]
    subtitles = sorted(subtitles, key=lambda s: (s.get("start") is None, s.get("start") or 0.0))
    return [str(s["text"]).strip() for s in subtitles[:limit]]


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(texts), L) ids and mask, L = ``max_tokens``; an empty text is an empty slot (all-zero mask)."""
    tokens = tokenizer(
        [t or "" for t in texts], max_length=max_tokens, truncation=True, padding="max_length",
        return_tensors="pt", return_token_type_ids=False,
    )
    ids, mask = tokens["input_ids"].long(), tokens["attention_mask"].long()
    empty = torch.tensor([not t for t in texts])
    ids[empty], mask[empty] = 0, 0
    return ids, mask


def qa_tokens(
    tokenizer, kind: str, text: str, candidates: Sequence[str], subtitles: Sequence[str], max_subtitles: int, max_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A QA item's ids and mask: multiple choice (C, 2+S, L), per candidate the question, the
    candidate, then the subtitles; classification (1+S, L), the question or statement, then the
    subtitles. ``subtitles`` in time order, the first ``max_subtitles`` kept, S = ``max_subtitles``
    slots (the unused ones empty)."""
    lines = [str(s).strip() for s in subtitles if str(s).strip()][:max_subtitles]
    rest = lines + [""] * (max_subtitles - len(lines))
    if kind == "multiple_choice":
        pairs = [tokenize_texts(tokenizer, [text, str(c), *rest], max_tokens) for c in candidates]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    return tokenize_texts(tokenizer, [text, *rest], max_tokens)


def span_labels(times: np.ndarray, span: Any) -> np.ndarray:
    """(T,) int64 per frame: 1 inside ``[start, end]``, 0 outside, ``IGNORE_SPAN`` without a span."""
    if span is None:
        return np.full(times.shape, IGNORE_SPAN, dtype=np.int64)
    start, end = float(span[0]), float(span[1])
    return ((times >= start) & (times <= end)).astype(np.int64)


class TaskDataset(StoreBacked, torch.utils.data.Dataset):
    """Items of one split of a downstream task (see the module docstring).

    ``dataset[i]`` -> ``{"frames": (T, 3, H, W) float32, "times": (T,), "input_ids" /
    "attention_mask": retrieval (M, L), multiple choice (C, 2+S, L), classification (1+S, L),
    "label": () long (multiple choice: the answer index), "span_labels": (T,) long
    (multiple choice), "sample_id", "index"}``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        store: FrameStore | str | Path,
        tokenizer,
        kind: Kind,
        cfg: LoaderConfig,
        train: bool,
        max_subtitles: int = 0,
        num_candidates: int = 4,
        num_labels: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind, self.cfg, self.train, self.tokenizer = kind, cfg, train, tokenizer
        self.max_subtitles, self.num_candidates, self.num_labels = max_subtitles, num_candidates, num_labels
        self.epoch = 0
        self._attach(store)
        st = self.store
        if st.segment_mode != "chunks":
            raise DataError(
                f"{st.url}: fine-tuning spreads frames over the whole video: cache with segment_mode=chunks "
                f"(this store has segment_mode={st.segment_mode!r})"
            )
        self.height, self.width = st.height, st.width
        self._scale, self._shift = normalisation(cfg)

        status = st.status()
        self.skipped: Counter[str] = Counter()
        self.samples: list[Sample] = []
        for sample in samples:
            reason = self._unusable(sample, st, status)
            if reason is None:
                self.samples.append(sample)
            else:
                self.skipped[reason] += 1
        if self.skipped:
            log.warning("task data: %d of %d samples usable; skipped %s", len(self.samples), len(samples), dict(self.skipped))
        self._detach()

    def _unusable(self, sample: Sample, st: FrameStore, status: np.ndarray) -> str | None:
        if sample.id not in st:
            return "not in frame store"
        rows = st.rows(sample.id)
        if (status[rows.start : rows.stop] != OK).any():
            return "failed or pending frames"
        task = sample.task
        if self.kind == "retrieval":
            if is_qa_item(sample):
                return "a QA item, not a paragraph (prepare the retrieval corpus)"
        elif self.kind == "multiple_choice":
            if "candidates" not in task or "question" not in task:
                return "no 'question' and 'candidates' (not a multiple-choice item)"
            if len(task["candidates"]) != self.num_candidates:
                return f"not {self.num_candidates} candidates"
        else:
            if "label" not in task or not (task.get("statement") or task.get("question")):
                return "no 'label' and 'statement'/'question' (not a classification item)"
            if self.num_labels is not None and task["label"] >= self.num_labels:
                return f"label outside the model's {self.num_labels} classes"
            if self.train and task["label"] < 0:
                return "answer outside the vocabulary"
        return None

    @property
    def text_slots(self) -> int:
        return text_slots(self.kind, self.cfg.clips_per_sample, self.max_subtitles)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        return self.get(int(index), int(epoch))

    @property
    def frames_per_item(self) -> int:
        """Frames of an item's video: the store's chunks × frames per chunk."""
        return int(self.store.attrs.get("num_chunks") or 0) * self.store.frames_per_segment

    def get(self, index: int, epoch: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.cfg.seed, epoch if self.train else 0, index])
        frames, times = self.store.sample(sample.id, check_status=False)  # (N, K, H, W, 3), (N, K)
        video = torch.from_numpy(np.ascontiguousarray(frames.reshape((-1,) + frames.shape[2:]))).permute(0, 3, 1, 2)
        if self.train:
            box = crop_params(rng, self.height, self.width, self.cfg.crop_scale, self.cfg.crop_ratio)
            video = augment(video, box, bool(rng.random() < self.cfg.flip_prob), (self.height, self.width))
        video = video.contiguous().float().mul_(self._scale).sub_(self._shift)
        times = np.asarray(times, np.float32).reshape(-1)
        item: dict[str, Any] = {"frames": video.contiguous(), "times": torch.from_numpy(times), "sample_id": sample.id, "index": index}
        task = sample.task
        if self.kind == "retrieval":
            texts = merge_sentences([seg.text for seg in sample.segments], self.cfg.clips_per_sample)
            texts += [""] * (self.cfg.clips_per_sample - len(texts))
            item["input_ids"], item["attention_mask"] = tokenize_texts(self.tokenizer, texts, self.cfg.max_tokens)
        else:
            text = task["question"] if self.kind == "multiple_choice" else task.get("statement") or task.get("question")
            item["input_ids"], item["attention_mask"] = qa_tokens(
                self.tokenizer, self.kind, str(text), task.get("candidates") or [], subtitle_lines(sample, self.max_subtitles),
                self.max_subtitles, self.cfg.max_tokens,
            )
            if self.kind == "multiple_choice":
                item["label"] = torch.tensor(int(task["answer"]))
                item["span_labels"] = torch.from_numpy(span_labels(times, task.get("span")))
            else:
                item["label"] = torch.tensor(int(task["label"]))
        return item

    @staticmethod
    def collate_fn(items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"sample_ids": [it["sample_id"] for it in items]}
        for name in items[0]:
            if name != "sample_id":
                batch[name] = torch.stack([torch.as_tensor(it[name]) for it in items])
        return batch


def check_fit(dataset, config, what: str) -> None:
    """One-line errors when a task dataset does not fit the model: no usable item, the frame
    store's frames per chunk, frames per video or the sentence slots per text."""
    if len(dataset) == 0:
        raise DataError(f"{what}: no usable {dataset.kind} items ({dict(dataset.skipped) or 'the split is empty'})")
    store = dataset.store
    check_task_shapes(
        dataset.kind, store.frames_per_segment, int(store.attrs.get("num_chunks") or 0), dataset.text_slots,
        config.video.frames_per_clip, config.fusion.max_frames if config.fusion is not None else None, config.text.max_sentences,
    )

