"""The Python API: a finished model (a model directory or a hub id) with its tokenizer and the
preprocessing it was trained with, to encode videos and paragraphs, rank videos for paragraphs
and answer questions about a video.

    import lfvila_cli
    model = lfvila_cli.load("lfvila-work/store/pretrain1/<key>", device="cpu")   # or "org/name", device="auto"
    videos = model.encode_videos(["a.mp4", "b.mp4"])        # .video (N, D), .clips (N, M, D), .times (N, M, K)
    texts = model.encode_paragraphs([["the red circle grows.", "it moves to the left."]])   # .paragraph (P, D)
    model.rank([["the red circle grows."]], videos)          # per paragraph: the videos by cosine similarity
    qa = lfvila_cli.load("lfvila-work/store/finetune/<key>")
    qa.answer("a.mp4", "what does the circle do?", ["grows", "shrinks", "stays", "spins"])

A video is a file (decoded as the downstream cache stores it: ``clips`` equal chunks of the
model's frames per clip, evenly spaced, resized and centre-cropped to ``height`` × ``width``;
by default the frames and size the model was trained on, from its config.json) or uint8 frames
(T, H, W, 3), RGB. The normalisation and the tokens per sentence are the model's too (its
config.json; for a model directory written before it recorded them, its artifact's stage
config). Texts are tokenized as fine-tuning does (``data.task_data``). Embeddings are unit
vectors, numpy float32 on the CPU whatever the device and precision (``precision="auto"``, the
default, runs bf16 autocast where the hardware computes bf16 natively; ``"fp32"`` is the
reference: docs/engineering.md §7).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .errors import ConfigError, DataError, LfvilaError

Video = Union[str, Path, np.ndarray]


@dataclass
class VideoEncoding:
    """Embeddings of N videos: ``video`` (N, D); ``clips`` (N, M, D), None for a model without
    clip embeddings (a retrieval fine-tune); ``times`` (N, M, K) seconds of each frame, for
    decoded files (None for frames given as arrays)."""

    video: np.ndarray
    clips: Optional[np.ndarray]
    times: Optional[np.ndarray]


@dataclass
class TextEncoding:
    """Embeddings of P paragraphs: ``paragraph`` (P, D); ``sentences`` (P, M, D), None without
    sentence embeddings; ``sentence_mask`` (P, M), True where a paragraph has that sentence."""

    paragraph: np.ndarray
    sentences: Optional[np.ndarray]
    sentence_mask: np.ndarray


def load_model(path_or_hub_id: str | Path, *, device: Optional[str] = None, revision: Optional[str] = None):
    """The bare torch model of a model directory or hub id, of the class its config.json names,
    in eval mode on ``device`` (``LfvilaModel.from_pretrained``)."""
    from .model.lfvila import LfvilaModel

    return LfvilaModel.from_pretrained(path_or_hub_id, device=device, revision=revision)


def load(path_or_hub_id: str | Path, *, device: str = "auto", revision: Optional[str] = None, precision: str = "auto") -> "Lfvila":
    """A model directory or hub id (``revision``: a branch, tag or commit) with its tokenizer, on
    ``device``: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``; inference at ``precision``: ``"auto"`` (bf16 where the hardware computes it
    natively, else fp32), ``"bf16"`` or ``"fp32"``."""
    return Lfvila(load_model(path_or_hub_id, device=device, revision=revision), precision=precision)


class Lfvila:
    """A loaded model, its tokenizer and preprocessing (see the module docstring)."""

    def __init__(self, model, precision: str = "auto") -> None:
        from .data.loader_config import LoaderConfig, trained_loader_config
        from .data.tokenizer import load_tokenizer
        from .model.precision import resolve_precision
        from .model.pretrained import TOKENIZER_DIR
        from .pipeline.artifacts import read_stage_config

        if model.pretrained_dir is None:
            raise LfvilaError("Lfvila takes a model loaded from its directory (lfvila_cli.load, or from_pretrained)")
        self.model = model
        self.config = model.config
        self.precision = resolve_precision(precision, self.device)  # "bf16" or "fp32": what inference runs at
        source = Path(model.pretrained_dir)
        if not (source / TOKENIZER_DIR).is_dir():
            raise LfvilaError(f"{source}: no {TOKENIZER_DIR}/ directory: a model directory keeps the tokenizer it was trained with")
        self.tokenizer = load_tokenizer(source / TOKENIZER_DIR, local_files_only=True)
        info = model.pretrained_info or {}
        self.task: Optional[str] = info.get("task")
        id2label = info.get("id2label") or {}
        self.labels: Optional[list[str]] = [id2label[str(i)] for i in range(len(id2label))] if id2label else None
        pre = dict(info.get("preprocessing") or {})
        if "image_mean" not in pre:  # written before config.json recorded it: the artifact's stage config
            loader = trained_loader_config(read_stage_config(source))
            pre.update(image_mean=loader.image_mean, image_std=loader.image_std, max_tokens=loader.max_tokens)
        self.preprocessing = pre
        self.max_tokens = min(int(pre.get("max_tokens") or self.config.text.max_tokens), self.config.text.max_tokens)
        self._loader = LoaderConfig(image_mean=list(pre["image_mean"]), image_std=list(pre["image_std"]), max_tokens=self.max_tokens)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return f"Lfvila({type(self.model).__name__}, {self.model.pretrained_dir}, device={self.device}, precision={self.precision})"

    @contextlib.contextmanager
    def _inference(self):
        """No autograd, at the model's inference precision."""
        import torch

        from .model.precision import autocast

        with torch.inference_mode(), autocast(self.precision, self.device):
            yield

    # ------------------------------------------------------------------------------- inputs

    def frames(
        self, videos: Sequence[Video], clips: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """uint8 frames (N, T, H, W, 3) of ``videos`` (files or arrays of one shape) and, for files,
        the frames' times (N, M, K); ``clips``, ``height``, ``width`` default to what the model
        was trained on."""
        from .data.video import VideoError, decode_chunks

        if isinstance(videos, (str, Path, np.ndarray)) and not (isinstance(videos, np.ndarray) and videos.ndim == 5):
            videos = [videos]
        videos = list(videos)
        if not videos:
            raise ConfigError("no videos given")
        per_clip = self.config.video.frames_per_clip
        if all(isinstance(v, np.ndarray) for v in videos):
            shapes = {v.shape for v in videos}
            if len(shapes) > 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[-1] != 3:
                raise ConfigError(f"video frames must be uint8 arrays (T, H, W, 3) of one shape, got {sorted(shapes)}")
            frames = np.stack(videos)
            if frames.dtype != np.uint8 or frames.shape[1] % per_clip:
                raise ConfigError(f"video frames must be uint8 (T, H, W, 3) with T a multiple of {per_clip} (frames per clip), got {frames.dtype} {frames.shape[1:]}")
            return frames, None
        if any(isinstance(v, np.ndarray) for v in videos):
            raise ConfigError("give the videos either as files or as frame arrays, not both")
        pre = self.preprocessing
        clips = clips or (pre["frames"] // per_clip if pre.get("frames") else None)
        height, width = height or pre.get("height"), width or pre.get("width")
        if not (clips and height and width):
            raise ConfigError(f"{self.model.pretrained_dir}: its config.json does not say which frames it was trained on: give clips, height and width")
        decoded = []
        for v in videos:
            try:
                decoded.append(decode_chunks(str(v), clips, per_clip, height, width))
            except VideoError as exc:
                raise DataError(f"{v}: {exc}") from None
        frames = np.stack([f.reshape(-1, height, width, 3) for f, _ in decoded])
        return frames, np.stack([t for _, t in decoded])

    def _input(self, frames: np.ndarray):
        """uint8 (N, T, H, W, 3) -> normalised float (N, T, 3, H, W) on the model's device."""
        import torch

        from .data.loader import normalisation

        scale, shift = normalisation(self._loader)
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 1, 4, 2, 3).float()
        return x.mul_(scale.to(self.device)).sub_(shift.to(self.device))

    def _paragraph_tokens(self, paragraphs: Sequence[Sequence[str]]):
        """ids, mask (P, M, L): each paragraph's sentences, padded with empty slots to the longest."""
        import torch

        from .data.task_data import tokenize_texts

        if isinstance(paragraphs, str) or not paragraphs or any(isinstance(p, str) or not p for p in paragraphs):
            raise ConfigError("paragraphs: a list of paragraphs, each a non-empty list of sentences, e.g. [['a sentence.', 'another.']]")
        limit = self.config.text.max_sentences
        longest = max(len(p) for p in paragraphs)
        if longest > limit:
            raise ConfigError(f"a paragraph of {longest} sentences; the model takes at most {limit} (join some of them)")
        if any(not str(s).strip() for p in paragraphs for s in p):
            raise ConfigError("paragraphs: an empty sentence")
        tokens = [tokenize_texts(self.tokenizer, [str(s) for s in p] + [""] * (longest - len(p)), self.max_tokens) for p in paragraphs]
        return torch.stack([t[0] for t in tokens]).to(self.device), torch.stack([t[1] for t in tokens]).to(self.device)

    def _contrastive(self, what: str) -> None:
        if self.model.projections is None:
            raise LfvilaError(f"{self.model.pretrained_dir}: a {type(self.model).__name__} has no {what} embeddings (a QA model: use answer())")

    # ------------------------------------------------------------------------------- encoding

    def encode_videos(
        self, videos: Sequence[Video], *, clips: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
        batch: int = 8,
    ) -> VideoEncoding:
        """Video (N, D) and clip (N, M, D) embeddings of ``videos`` (files or uint8 frame arrays)."""
        self._contrastive("video")
        frames, times = self.frames(videos, clips, height, width)
        video, clip = [], []
        with self._inference():
            for start in range(0, len(frames), batch):
                out = self.model.encode_video(self._input(frames[start : start + batch]))
                video.append(out.global_embedding.float().cpu().numpy())
                if out.clip_embeddings is not None:
                    clip.append(out.clip_embeddings.float().cpu().numpy())
        return VideoEncoding(np.concatenate(video), np.concatenate(clip) if clip else None, times)

    def encode_paragraphs(self, paragraphs: Sequence[Sequence[str]]) -> TextEncoding:
        """Paragraph (P, D) and sentence (P, M, D) embeddings; each paragraph a list of sentences."""
        self._contrastive("text")
        ids, mask = self._paragraph_tokens(paragraphs)
        with self._inference():
            out = self.model.encode_text(ids, mask)
        sentences = None if out.sentence_embeddings is None else out.sentence_embeddings.float().cpu().numpy()
        return TextEncoding(out.paragraph_embedding.float().cpu().numpy(), sentences, out.sentence_mask.bool().cpu().numpy())

    def rank(self, paragraphs: Sequence[Sequence[str]], videos: Union[VideoEncoding, Sequence[Video]], **video_options: Any) -> list[dict[str, Any]]:
        """For each paragraph, the videos by cosine similarity (``ranking``: index, score, best
        first; ties by index) and, for models with clip embeddings, each sentence's best clip of
        the top video (``sentence_clips``: clip, score, and its span in seconds for files)."""
        encoded = videos if isinstance(videos, VideoEncoding) else self.encode_videos(videos, **video_options)
        texts = self.encode_paragraphs(paragraphs)
        scores = texts.paragraph @ encoded.video.T  # (P, N), unit vectors: cosine similarity
        results = []
        for p, sentences in enumerate(paragraphs):
            order = np.argsort(-scores[p], kind="stable")
            result: dict[str, Any] = {"paragraph": list(sentences), "ranking": [{"video": int(i), "score": float(scores[p, i])} for i in order]}
            if encoded.clips is not None and texts.sentences is not None:
                top = int(order[0])
                sim = texts.sentences[p, : len(sentences)] @ encoded.clips[top].T  # (S, M)
                result["sentence_clips"] = []
                for i, (s, c) in enumerate(zip(sentences, sim.argmax(axis=1))):
                    entry = {"sentence": s, "clip": int(c), "score": float(sim[i, c])}
                    if encoded.times is not None:
                        entry.update(start=float(encoded.times[top, c, 0]), end=float(encoded.times[top, c, -1]))
                    result["sentence_clips"].append(entry)
            results.append(result)
        return results

    # ------------------------------------------------------------------------------- QA

    def answer(
        self, video: Video, question: str, candidates: Optional[Sequence[str]] = None, *, subtitles: Sequence[str] = (),
        clips: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
    ) -> dict[str, Any]:
        """Answer one QA item about one video (a file or uint8 frames (T, H, W, 3)): a
        multiple-choice model picks one of ``candidates`` (``answer``: its index, ``candidate``,
        ``scores``: softmax over the candidates); a classifier gives its class (``answer``: index,
        ``label``: the class's name when config.json has ``id2label``, ``scores``: softmax over
        the classes). ``question``: the question or statement; ``subtitles``: lines in time
        order, as many as the model's task was trained with."""
        import torch

        from .data.task_data import qa_tokens
        from .tasks import TASKS

        mc, classifier = self.model.multiple_choice_head is not None, self.model.classification_head is not None
        if not (mc or classifier):
            raise LfvilaError(f"{self.model.pretrained_dir}: a {type(self.model).__name__} does not answer questions: load a fine-tuned QA model")
        if not str(question).strip():
            raise ConfigError("answer: an empty question")
        if mc and (not candidates or any(not str(c).strip() for c in candidates)):
            raise ConfigError("answer: a multiple-choice model needs the candidate answers (a non-empty list of non-empty texts)")
        if classifier and candidates:
            raise ConfigError(f"answer: a classifier ({self.config.heads.num_labels} classes) takes no candidates")
        frames, _ = self.frames([video], clips, height, width)
        if frames.shape[1] > self.config.fusion.max_frames:
            raise ConfigError(f"{frames.shape[1]} frames; the model takes at most {self.config.fusion.max_frames} (fusion.max_frames): give fewer clips")
        max_subtitles = TASKS[self.task].max_subtitles if self.task in TASKS else len(subtitles)
        kind = "multiple_choice" if mc else "classification"
        ids, mask = qa_tokens(self.tokenizer, kind, str(question), list(candidates or []), list(subtitles), max_subtitles, self.max_tokens)
        with self._inference():
            out = self.model(self._input(frames), ids[None].to(self.device), mask[None].to(self.device))
            logits = (out.choice_logits if mc else out.logits)[0].float()
        scores = torch.softmax(logits, dim=-1).cpu().numpy()
        best = int(scores.argmax())
        result: dict[str, Any] = {"answer": best, "scores": [float(s) for s in scores]}
        if mc:
            result["candidate"] = str(candidates[best])
        else:
            result["label"] = self.labels[best] if self.labels else None
        return result
