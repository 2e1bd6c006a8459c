"""Hierarchical text encoder: one BERT split by layer into a sentence and a paragraph level
(docs/method.md §3). Sentence features feed MTC, the paragraph feature VPC (docs/method.md §4);
the layers above belong to the cross-modal encoder (``fusion.py``), which runs them from this
same BERT object. Where it departs from the release (summary-token mean, paragraph positions,
a 400-row position table, sentence-index initialisation): docs/method.md §7.

Shapes: B batch, M sentence slots, L tokens per sentence ([CLS] and [SEP] included), H width.

    TextEncoderConfig        which BERT, the split (sentence_layers s, paragraph_layers p),
                             keep_layers, max_sentences, max_tokens
    HierarchicalTextEncoder  input_ids, attention_mask (B, M, L) -> ``TextEncoderOutput``:
                             sentence_features (B, M, H), paragraph_feature (B, H),
                             token_states (B, 1 + M·L, H), token_mask (B, 1 + M·L),
                             sentence_mask (B, M); ``encode_sentences`` (N, L) -> (N, L, H)
    ParagraphEmbedding       (B, M, L, H) -> (B, M·L, H): + position + sentence index, LN, dropout
    load_bert                the BERT a config names (hub id, directory, or random)
    attention_bias, run_layer   (B, K) key mask -> (B, 1, 1, K) additive bias; one BERT layer

The layers, in order:

    layers [0, s)           sentence level    (B·M, L) tokens, one sentence per row;
                            sentence feature = its [CLS] after layer s-1
    paragraph embedding     the M·L token states + position (slot m·max_tokens + l)
                            + sentence index (m), LayerNorm, dropout
    summary token           mean of the real sentences' [CLS] vectors (after the paragraph
                            embedding), prepended -> 1 + M·L tokens
    layers [s, s+p)         paragraph level   (B, 1 + M·L) tokens, joint key mask;
                            paragraph feature = the summary token after layer s+p-1
    layers [s+p, ...)       cross-modal encoder (fusion.py)

Paper sizes: BERT-large-uncased (24 layers, 1024 wide, 16 heads), s = 8, p = 4, fusion
12..23, M = 4 sentences of L = 50 tokens. Any BERT-family encoder from ``transformers``
whose embeddings are as wide as its layers works (BERT, RoBERTa, MiniLM, ...).

**Uneven numbers of sentences.** A batch is padded to ``M`` sentence slots; a slot whose
attention mask is all zero is empty. ``sentence_mask`` (B, M) marks the real ones. An empty
slot never influences anything real: its tokens are masked keys at the paragraph level, it
is left out of the summary mean, and its ``sentence_features`` row is zero (so callers must
use ``sentence_mask``, e.g. to drop it from MTC). Inside the sentence-level layers an empty
slot attends to its own first token only, because a row with no key at all turns into NaN
under scaled-dot-product attention. Extra padding tokens at the end of a sentence (any
``L <= max_tokens``) and extra empty sentence slots change no output of a real token.

Parameter names here (prefix ``<this module>.``) against the authors' checkpoint keys
(``tests/fixtures/official-checkpoint-keys/*.tsv``, prefix as in those files):

    bert.embeddings.*                         text_encoder.bert.embeddings.*   (same names; their
                                              persistent ``position_ids`` buffer is not saved by
                                              transformers 5.x and is simply skipped)
    bert.encoder.layer.{n}.*                  text_encoder.bert.encoder.layer.{n}.*   (n = 0..23;
                                              same names; the stage-1 file has n = 0..11 only,
                                              see ``keep_layers``)
    bert.pooler.dense.*                       text_encoder.bert.pooler.dense.*  (used by fusion.py)
    paragraph_embedding.position_embeddings.weight [400, H]
                                              sent_embedding.position_embeddings.weight [512, H]
                                              (rows 0..399)
    paragraph_embedding.sentence_embeddings.weight [8, H]
                                              sent_embedding.segment_embeddings.weight [8, H]
    paragraph_embedding.norm.{weight,bias}    sent_embedding.norm.{weight,bias}   (eps = BERT's)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ..config import check
from ..errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class TextEncoderConfig:
    model: str = ""  # hub id or local directory for AutoModel; "" = random BERT from bert_config
    bert_config: dict | None = None  # BertConfig keyword arguments (tiny random models in tests)
    local_files_only: bool = False  # never reach the hub (HF_HUB_OFFLINE=1 does the same globally)
    sentence_layers: int = 8  # layers [0, sentence_layers): each sentence alone
    paragraph_layers: int = 4  # the next layers: the whole paragraph
    keep_layers: int | None = None  # drop BERT layers from this index up (stage 1: 12); None keeps all
    max_sentences: int = 8  # sentence slots M (size of the sentence-index table)
    max_tokens: int = 50  # tokens per sentence L, [CLS] and [SEP] included
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    def __post_init__(self) -> None:
        check(
            bool(self.model) != (self.bert_config is not None),
            "model",
            "give exactly one of 'model' (hub id or local path) and 'bert_config' (random init)",
        )
        check(self.sentence_layers >= 1, "sentence_layers", f"must be >= 1, got {self.sentence_layers}")
        check(self.paragraph_layers >= 1, "paragraph_layers", f"must be >= 1, got {self.paragraph_layers}")
        text_layers = self.sentence_layers + self.paragraph_layers
        check(
            self.keep_layers is None or self.keep_layers >= text_layers,
            "keep_layers",
            f"must be >= sentence_layers + paragraph_layers = {text_layers}, got {self.keep_layers}",
        )
        check(self.max_sentences >= 1, "max_sentences", f"must be >= 1, got {self.max_sentences}")
        check(self.max_tokens >= 2, "max_tokens", f"must be >= 2 ([CLS] and [SEP]), got {self.max_tokens}")


@dataclass
class TextEncoderOutput:
    """Named text features; ``B`` batch, ``M`` sentence slots, ``L`` tokens, ``H`` width."""

    sentence_features: torch.Tensor  # (B, M, H) [CLS] after the sentence level; zero for empty slots
    paragraph_feature: torch.Tensor  # (B, H) summary token after the paragraph level
    token_states: torch.Tensor  # (B, 1 + M·L, H) summary token, then the M·L tokens sentence by sentence
    token_mask: torch.Tensor  # (B, 1 + M·L) bool, True = real token (the summary token always)
    sentence_mask: torch.Tensor  # (B, M) bool, True = the slot holds a sentence


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) key mask (True/1 = attend) -> (B, 1, 1, K) additive bias for a BERT layer.

    The same form BERT has always used (0 where attended, the dtype's minimum elsewhere);
    both the eager and the SDPA attention of ``transformers`` accept it, and it has no
    data-dependent branches (exportable).
    """
    keep = mask.to(torch.bool)[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)


def run_layer(layer: nn.Module, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One ``transformers`` encoder layer; 5.x layers return a tensor, older ones a tuple."""
    out = layer(hidden, bias)
    return out[0] if isinstance(out, tuple) else out


def load_bert(cfg: TextEncoderConfig) -> "PreTrainedModel":
    """The BERT-family encoder named by ``cfg`` (weights from the hub/a path, or random)."""
    if cfg.model:
        from transformers import AutoConfig, AutoModel

        try:
            if torch.get_default_device().type == "meta":
                # Built under torch.device("meta"): shapes only, so the architecture is enough
                # (its config); no weights are read.
                config = AutoConfig.from_pretrained(cfg.model, local_files_only=cfg.local_files_only)
                bert = AutoModel.from_config(config, attn_implementation=cfg.attn_implementation)
            else:
                bert = AutoModel.from_pretrained(
                    cfg.model, local_files_only=cfg.local_files_only, attn_implementation=cfg.attn_implementation
                )
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"config key 'model': cannot load {cfg.model!r}: {first}") from None
    else:
        from transformers import BertConfig, BertModel

        bert = BertModel(BertConfig(**cfg.bert_config, attn_implementation=cfg.attn_implementation))
    embeddings = getattr(bert, "embeddings", None)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if not isinstance(getattr(embeddings, "position_embeddings", None), nn.Embedding) or layers is None:
        raise ConfigError(
            f"config key 'model': {cfg.model!r} is not a BERT-family encoder "
            "(needs embeddings.position_embeddings and encoder.layer)"
        )
    if embeddings.position_embeddings.embedding_dim != bert.config.hidden_size:
        raise ConfigError(
            f"config key 'model': {cfg.model!r} has embeddings narrower than its layers "
            "(factorised embeddings are not supported)"
        )
    return bert


class ParagraphEmbedding(nn.Module):
    """Fresh position + sentence-index embeddings over the concatenated sentence outputs.

    Authors' name: ``sent_embedding`` (``SentEmbedding``).
    """

    def __init__(
        self,
        hidden_size: int,
        max_sentences: int,
        max_tokens: int,
        layer_norm_eps: float,
        dropout: float,
        initializer_range: float,
    ) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.position_embeddings = nn.Embedding(max_sentences * max_tokens, hidden_size)
        self.sentence_embeddings = nn.Embedding(max_sentences, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.initializer_range = initializer_range
        # The position table is then copied from BERT's (``init_positions_from``).
        self._init_weights(self.sentence_embeddings)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's rule for one submodule: embeddings N(0, initializer_range), LayerNorm 1 / 0."""
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def init_positions_from(self, table: torch.Tensor) -> None:
        """Copy a (P, H) position table into ours, tiling it when ours is longer."""
        rows = self.position_embeddings.num_embeddings
        index = torch.arange(rows, device=table.device) % table.shape[0]
        self.position_embeddings.weight.copy_(table[index])

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, M, L, H) sentence-level token states -> (B, M·L, H) paragraph-level inputs."""
        batch, sentences, length, hidden = states.shape
        device = states.device
        # Slot positions m·max_tokens + l: a token keeps its position however much padding follows.
        positions = torch.arange(sentences, device=device)[:, None] * self.max_tokens + torch.arange(length, device=device)
        sentence_ids = torch.arange(sentences, device=device).repeat_interleave(length)  # (M·L,)
        x = states.reshape(batch, sentences * length, hidden)  # (B, M·L, H)
        x = x + self.position_embeddings(positions.reshape(-1)) + self.sentence_embeddings(sentence_ids)
        return self.dropout(self.norm(x))


class HierarchicalTextEncoder(nn.Module):
    """BERT split by layer: sentence level, then paragraph level (docs/method.md §3).

    ``bert`` keeps every layer it was loaded with (or ``keep_layers`` of them); the layers
    above the paragraph level belong to the cross-modal encoder, which is built over this
    module's ``bert`` and so shares those weights without copying them.
    """

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bert = load_bert(cfg)
        layers = bert.encoder.layer
        text_layers = cfg.sentence_layers + cfg.paragraph_layers
        if text_layers > len(layers):
            raise ConfigError(
                f"config key 'sentence_layers': sentence_layers + paragraph_layers = {text_layers} "
                f"but the model has only {len(layers)} layers"
            )
        if cfg.keep_layers is not None and cfg.keep_layers < len(layers):
            bert.encoder.layer = nn.ModuleList(list(layers)[: cfg.keep_layers])
            bert.config.num_hidden_layers = cfg.keep_layers
        self.bert = bert
        config = bert.config
        self.paragraph_embedding = ParagraphEmbedding(
            config.hidden_size,
            cfg.max_sentences,
            cfg.max_tokens,
            config.layer_norm_eps,
            config.hidden_dropout_prob,
            getattr(config, "initializer_range", 0.02),
        )
        table = bert.embeddings.position_embeddings.weight
        # RoBERTa-style tables reserve the rows up to padding_idx; real positions start after them.
        padding_idx = getattr(bert.embeddings, "padding_idx", None)
        start = padding_idx + 1 if padding_idx is not None else 0
        self.paragraph_embedding.init_positions_from(table[start:])

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    @property
    def num_layers(self) -> int:
        """Layers held by ``bert`` (text levels and, above them, the cross-modal ones)."""
        return len(self.bert.encoder.layer)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.get_input_embeddings()

    def encode_sentences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids and mask of N independent sentences -> (N, L, H) token states.

        Embeddings, then layers [0, sentence_layers): exactly the lower part of a plain
        forward of ``bert`` over each sentence.
        """
        hidden = self.bert.embeddings(input_ids=input_ids)  # (N, L, H)
        bias = attention_bias(attention_mask, hidden.dtype)  # (N, 1, 1, L)
        for layer in self.bert.encoder.layer[: self.cfg.sentence_layers]:
            hidden = run_layer(layer, hidden, bias)
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoderOutput:
        """Token ids and mask, both (B, M, L) -> ``TextEncoderOutput``.

        M <= max_sentences slots, L <= max_tokens tokens each, sentence ``i`` in slot ``i``
        (temporal order). For multiple-choice QA flatten (B, K, M, L) to (B·K, M, L).
        """
        if input_ids.dim() != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"expected input_ids and attention_mask of shape (B, M, L), got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        batch, sentences, length = input_ids.shape
        if sentences > self.cfg.max_sentences or length > self.cfg.max_tokens:
            raise ValueError(
                f"text of {sentences} sentences x {length} tokens exceeds max_sentences="
                f"{self.cfg.max_sentences} x max_tokens={self.cfg.max_tokens}"
            )
        token_mask = attention_mask.to(torch.bool)  # (B, M, L)
        sentence_mask = token_mask.any(dim=-1)  # (B, M)

        # Sentence level. An empty slot attends to its own first token (see module docstring).
        # (out of place: the ONNX exporter has no in-place |=)
        compute_mask = torch.cat([token_mask[..., :1] | ~sentence_mask[..., None], token_mask[..., 1:]], dim=-1)
        states = self.encode_sentences(
            input_ids.reshape(batch * sentences, length), compute_mask.reshape(batch * sentences, length)
        )
        states = states.view(batch, sentences, length, -1)  # (B, M, L, H)
        real = sentence_mask[..., None].to(states.dtype)  # (B, M, 1)
        sentence_features = states[:, :, 0] * real  # (B, M, H)

        # Paragraph level: [summary ; M·L tokens] with the joint key mask.
        tokens = self.paragraph_embedding(states)  # (B, M·L, H)
        cls_tokens = tokens.view(batch, sentences, length, -1)[:, :, 0]  # (B, M, H)
        summary = (cls_tokens * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)  # (B, H)
        hidden = torch.cat([summary[:, None], tokens], dim=1)  # (B, 1 + M·L, H)
        mask = torch.cat(
            [token_mask.new_ones(batch, 1), token_mask.reshape(batch, sentences * length)], dim=1
        )  # (B, 1 + M·L)
        bias = attention_bias(mask, hidden.dtype)
        first = self.cfg.sentence_layers
        for layer in self.bert.encoder.layer[first : first + self.cfg.paragraph_layers]:
            hidden = run_layer(layer, hidden, bias)
        return TextEncoderOutput(
            sentence_features=sentence_features,
            paragraph_feature=hidden[:, 0],
            token_states=hidden,
            token_mask=mask,
            sentence_mask=sentence_mask,
        )
