"""Heads on the encoders' features: contrastive projections, MLM, VTM and the QA heads. What
each is and how it is trained: docs/method.md §4 (projections, MLM, VTM) and §6 (QA).

Shapes: B batch, M clips/sentences, K answer candidates, T frames, H the BERT width, D the
contrastive width (1024 in the paper), V the vocabulary.

    ProjectionConfig            embed_dim D and the input widths (video, clip, text)
    ContrastiveProjections      four ``ProjectionHead``s, linear then L2 norm: global video
                                (B, Dv) and paragraph (B, H) -> (B, D) for VPC; local clip
                                (B, M, Dc) and sentence (B, M, H) -> (B, M, D) for MTC
    MaskedLanguageModelingHead  token states (B, N, H) -> logits (B, N, V): BERT's prediction
                                head (dense, activation, LayerNorm, decoder + bias); the decoder
                                may share the word embeddings (``tie_word_embeddings``; the
                                release did not)
    VideoTextMatchingHead       pooled (B, H) -> (B, 2), 0 = mismatched, 1 = matched
    MultipleChoiceHead          pooled (B·K, H), frame_states (B·K, T, H), candidate-major ->
                                choice_logits (B, K) (softmax by the caller) and span_logits
                                (B, T, 2) (out of / in the span, max over the K candidates);
                                its loss: ``objectives.multiple_choice_loss``
    ClassificationHead          pooled (B, H) -> (B, num_labels): VIOLIN 2, ActivityNet-QA 1654
    BertInitialised             base of the BERT-initialised heads (N(0, initializer_range),
                                ``HEAD_INITIALIZER_RANGE`` = 0.02 in the models),
                                biases 0, LayerNorm 1 / 0)

Parameter names here against the authors' checkpoint keys (tests/fixtures/official-checkpoint-keys):

    ContrastiveProjections: video.linear.*     video_global_proj.*
                            paragraph.linear.* text_global_proj.*
                            clip.linear.*      video_local_proj.*
                            sentence.linear.*  text_local_proj.*
    MaskedLanguageModelingHead: transform.dense.*, transform.LayerNorm.*
                                               text_encoder.cls.predictions.transform.{dense,LayerNorm}.*
                            decoder.weight     text_encoder.cls.predictions.decoder.weight (absent when tied)
                            bias               text_encoder.cls.predictions.bias
                                               (= ...decoder.bias, the same tensor saved twice)
    VideoTextMatchingHead:  classifier.*       text_encoder.seq_relationship.*
    MultipleChoiceHead:     classifier.*       text_encoder.classifier.*       [1, H]
                            span_classifier.*  text_encoder.span_classifier.*  [2, H]
    ClassificationHead:     classifier.*       text_encoder.classifier.*       [num_labels, H]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check


@dataclass
class ProjectionConfig:
    embed_dim: int = 1024  # width of the shared contrastive space
    video_dim: int = 1024  # global video feature (mean of the video encoder's final tokens)
    clip_dim: int = 1024  # clip feature (intra-clip layers + PatchMerging head, mean per clip)
    text_dim: int = 1024  # BERT width H (paragraph and sentence features)

    def __post_init__(self) -> None:
        for name in ("embed_dim", "video_dim", "clip_dim", "text_dim"):
            value = getattr(self, name)
            check(value >= 1, name, f"must be >= 1, got {value}")


# The standard deviation fresh heads start at: BERT's 0.02 (the authors' heads: BERT-large's
# initializer_range), also over a text model initialised wider. lfvila-tiny's random BERT uses 0.15
# for its own layers (model/presets.py); heads at 0.15 start with logits of standard deviation
# about 0.15·√H ≈ 1.7, confidently wrong: fine-tuning How2QA then spent its first steps making
# every frame's fused state the same (span loss from 2.4 down to ln 2, never below; docs/method.md §6).
HEAD_INITIALIZER_RANGE = 0.02


class BertInitialised(nn.Module):
    """A fresh head initialised as BERT initialises its heads (what the release's ``post_init``
    did): linear weights N(0, initializer_range), biases 0, LayerNorm 1 / 0. ``_init_weights``
    is the rule for one submodule (``transformers``' convention; ``lfvila.materialise_meta``
    calls it for the parts a checkpoint lacks); ``init_weights`` applies it to every submodule,
    in order, as the constructor does once its layers exist."""

    initializer_range: float = HEAD_INITIALIZER_RANGE

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        for module in self.modules():
            self._init_weights(module)


class ProjectionHead(nn.Module):
    """Linear map then L2 normalisation: (..., in_dim) -> (..., out_dim), unit norm, float32.

    Default ``nn.Linear`` initialisation, as in the release (plain modules there). The norm is
    taken in float32 whatever the precision the map ran at (bf16 autocast or weights), so
    embeddings are unit vectors to float32 rounding (docs/engineering.md §7).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(features).float(), dim=-1)


class ContrastiveProjections(nn.Module):
    """The four projections: global (video, paragraph) for VPC, local (clip, sentence) for MTC."""

    def __init__(self, cfg: ProjectionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = ProjectionHead(cfg.video_dim, cfg.embed_dim)  # (B, Dv) -> (B, D)
        self.paragraph = ProjectionHead(cfg.text_dim, cfg.embed_dim)  # (B, H) -> (B, D)
        self.clip = ProjectionHead(cfg.clip_dim, cfg.embed_dim)  # (B, M, Dc) -> (B, M, D)
        self.sentence = ProjectionHead(cfg.text_dim, cfg.embed_dim)  # (B, M, H) -> (B, M, D)


class PredictionTransform(nn.Module):
    """BERT's MLM transform: dense, activation, LayerNorm (names kept from BERT for weight import)."""

    def __init__(self, hidden_size: int, hidden_act: str = "gelu", layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        from transformers.activations import get_activation

        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = get_activation(hidden_act)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.activation(self.dense(hidden)))


class MaskedLanguageModelingHead(BertInitialised):
    """Text token states (..., H) -> vocabulary logits (..., V).

    With ``tied_embedding`` the decoder is that embedding's weight matrix, read at call time
    and kept out of this module's parameters (saved once, under the embedding's name).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        tied_embedding: nn.Embedding | None = None,
        initializer_range: float = HEAD_INITIALIZER_RANGE,
    ) -> None:
        super().__init__()
        self.transform = PredictionTransform(hidden_size, hidden_act, layer_norm_eps)
        if tied_embedding is not None:
            if tuple(tied_embedding.weight.shape) != (vocab_size, hidden_size):
                raise ValueError(
                    f"tied embedding is {tuple(tied_embedding.weight.shape)}, expected {(vocab_size, hidden_size)}"
                )
            self.decoder = None
            self._tied = (tied_embedding,)  # a tuple: not registered as a submodule
        else:
            self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
            self._tied = ()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.initializer_range = initializer_range
        self.init_weights()

    @classmethod
    def from_bert(cls, bert: nn.Module, tie_word_embeddings: bool = False) -> "MaskedLanguageModelingHead":
        """Sized from a ``transformers`` BERT (its config), optionally tied to its word embeddings."""
        config = bert.config
        return cls(
            config.hidden_size,
            config.vocab_size,
            config.hidden_act,
            config.layer_norm_eps,
            tied_embedding=bert.get_input_embeddings() if tie_word_embeddings else None,
            initializer_range=HEAD_INITIALIZER_RANGE,
        )

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            nn.init.zeros_(self.bias)

    @property
    def decoder_weight(self) -> torch.Tensor:
        return self._tied[0].weight if self._tied else self.decoder.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, N, H), e.g. ``CrossModalOutput.text_states`` -> (B, N, V) logits."""
        return F.linear(self.transform(hidden), self.decoder_weight, self.bias)


class VideoTextMatchingHead(BertInitialised):
    """Pooled fusion output (B, H) -> (B, 2) logits: 0 = mismatched, 1 = matched."""

    def __init__(self, hidden_size: int, initializer_range: float = HEAD_INITIALIZER_RANGE) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, 2)
        self.initializer_range = initializer_range
        self.init_weights()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


@dataclass
class MultipleChoiceOutput:
    choice_logits: torch.Tensor  # (B, K), softmax over K by the caller
    span_logits: torch.Tensor | None  # (B, T, 2), out of / in the span, max over the K candidates


class MultipleChoiceHead(BertInitialised):
    """How2QA head: 1 logit per candidate, plus the per-frame span classifier."""

    def __init__(self, hidden_size: int, dropout: float = 0.1, initializer_range: float = HEAD_INITIALIZER_RANGE) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, 1)
        self.span_classifier = nn.Linear(hidden_size, 2)
        self.initializer_range = initializer_range
        self.init_weights()

    def forward(
        self, pooled: torch.Tensor, num_choices: int, frame_states: torch.Tensor | None = None
    ) -> MultipleChoiceOutput:
        """pooled (B·K, H) and frame_states (B·K, T, H), candidate-major within a sample
        (row b·K + k is candidate k of sample b) -> ``MultipleChoiceOutput``."""
        if pooled.shape[0] % num_choices:
            raise ValueError(f"{pooled.shape[0]} rows are not a multiple of num_choices={num_choices}")
        choice_logits = self.classifier(self.dropout(pooled)).view(-1, num_choices)  # (B, K)
        span_logits = None
        if frame_states is not None:
            per_choice = self.span_classifier(frame_states)  # (B·K, T, 2)
            frames = per_choice.shape[1]
            span_logits = per_choice.view(-1, num_choices, frames, 2).amax(dim=1)  # (B, T, 2)
        return MultipleChoiceOutput(choice_logits=choice_logits, span_logits=span_logits)


class ClassificationHead(BertInitialised):
    """Pooled fusion output (B, H) -> (B, num_labels): VIOLIN (2), ActivityNet-QA (1654)."""

    def __init__(
        self, hidden_size: int, num_labels: int, dropout: float = 0.1, initializer_range: float = HEAD_INITIALIZER_RANGE
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.initializer_range = initializer_range
        self.init_weights()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))
