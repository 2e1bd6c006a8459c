"""Named model presets: ``lfvila-base`` (the paper), ``lfvila-small``, ``lfvila-tiny``.

Each preset is a factory of ``LfvilaConfig`` for a *variant* — the layout a stage or task
needs (docs/method.md §4, §6), built as the class ``lfvila.model_class`` names for it:

    stage1             video encoder, text layers [0, s+p) only, global + local projections,
                       and the MLM/VTM heads the release's stage-1 file carries (unused there)
    stage2             stage 1 + every BERT layer, the cross-modal encoder, MLM and VTM heads
    retrieval          stage 1 without local projections and without MLM/VTM heads (VPC only)
    qa-multichoice     encoders + cross-modal encoder + multiple-choice/span head (How2QA)
    qa-classification  encoders + cross-modal encoder + classifier (``num_labels``: VIOLIN 2,
                       ActivityNet-QA 1654)

The text model is named by ``text_model``: ``None`` = the preset's default (a hub id for base
and small, a random BERT for tiny), ``"random"`` = the same architecture from a ``BertConfig``
dict with random weights (offline; tests, parameter counts), anything else = a hub id or local
directory loaded with ``AutoModel.from_pretrained`` (it must have the preset's width).

    get_preset(name, variant, num_labels=, text_model=) -> LfvilaConfig; list_presets()
    lfvila_base / lfvila_small / lfvila_tiny(variant, ...)   the factories (``PRESETS``)
    derive_variant(config, variant)    another variant over an existing model's architecture
    release_parameter_count(variant)   the authors' count for a base-preset variant, if released

Parameter counts of ``lfvila-base`` against the authors' released models (unique parameters
of the classes that wrote their checkpoints; ``tests/fixtures/official-checkpoint-keys``):

    variant               ours          release       difference
    stage1                310,173,636   310,288,324   −114,688
    stage2                461,369,284   461,483,972   −114,688
    retrieval             275,735,688   308,189,124   −32,453,436
    qa-multichoice        424,835,211   424,949,899   −114,688
    qa-classification 2   424,834,186   424,948,874   −114,688
    qa-classification 1654 426,527,486  426,642,174   −114,688

−114,688 = (512 − 400) × 1024: the paragraph position table has 400 rows, the release's 512.
Retrieval also drops the unused MLM head (1024·1024 + 1024 dense, 2·1024 LayerNorm,
30522·1024 decoder, 30522 bias = 32,336,698) and VTM head (2·1024 + 2 = 2,050); why:
docs/method.md §7. Everything else matches parameter for parameter (same names and shapes,
see ``weights.py``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Literal, Optional

from ..errors import ConfigError
from .fusion import CrossModalConfig
from .heads import ProjectionConfig
from .lfvila import HeadsConfig, LfvilaConfig
from .text_encoder import TextEncoderConfig
from .video_encoder import VideoEncoderConfig

Variant = Literal["stage1", "stage2", "retrieval", "qa-multichoice", "qa-classification"]
VARIANTS: tuple[str, ...] = ("stage1", "stage2", "retrieval", "qa-multichoice", "qa-classification")

# BertConfig keyword arguments (everything else: BertConfig defaults = BERT's).
BERT_LARGE = dict(
    vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2,
)
BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
)
# bert-base-uncased WordPiece vocabulary size, so any uncased BERT tokenizer fits the tiny model
# (`lfvila pretrain` sizes a random BERT to the tokenizer it trains instead).
# A random BERT barely tells sentences apart at BERT's initializer_range 0.02 (every linear map
# shrinks its input; the [CLS] / paragraph summary of two sentences differ by ~0.1% at 32 wide,
# and 0.1 dropout swamps that): stage 1 then sits at chance. 128 wide with std 0.15 and no
# dropout gives sentence features with cosine ~0.79 between different sentences at init (0.99 at
# 32 wide); its forward + backward takes 0.07 s for 16 paragraphs against 0.28 s for their video.
BERT_TINY = dict(
    vocab_size=30522, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
    intermediate_size=512, max_position_embeddings=512, type_vocab_size=2,
    initializer_range=0.15, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)

# Unique parameters of the authors' models (fixtures README); classification by num_labels.
RELEASE_PARAMETER_COUNTS: dict[tuple[str, int], int] = {
    ("stage1", 0): 310_288_324,
    ("stage2", 0): 461_483_972,
    ("retrieval", 0): 308_189_124,
    ("qa-multichoice", 0): 424_949_899,
    ("qa-classification", 2): 424_948_874,
    ("qa-classification", 1654): 426_642_174,
}


def _text(
    text_model: Optional[str],
    default_model: str,
    architecture: dict,
    sentence_layers: int,
    paragraph_layers: int,
    max_tokens: int,
) -> TextEncoderConfig:
    if text_model is None:
        text_model = default_model
    common = dict(
        sentence_layers=sentence_layers,
        paragraph_layers=paragraph_layers,
        max_sentences=8,
        max_tokens=max_tokens,
    )
    if text_model == "random":
        return TextEncoderConfig(bert_config=copy.deepcopy(architecture), **common)
    return TextEncoderConfig(model=text_model, **common)


def _compose(
    video: VideoEncoderConfig,
    text: TextEncoderConfig,
    embed_dim: int,
    text_dim: int,
    variant: str,
    num_labels: Optional[int],
) -> LfvilaConfig:
    """The variant's layout over one architecture."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown model variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "qa-classification":
        if num_labels is None or num_labels < 1:
            raise ConfigError(f"model variant 'qa-classification' needs num_labels >= 1, got {num_labels}")
    elif num_labels is not None:
        raise ConfigError(f"num_labels applies to the 'qa-classification' variant only, not {variant!r}")
    text_layers = text.sentence_layers + text.paragraph_layers
    fused = variant in ("stage2", "qa-multichoice", "qa-classification")
    # Stage-1 and retrieval models hold the text layers only, like the authors' stage-1 file.
    text = dataclasses.replace(text, keep_layers=None if fused else text_layers)
    heads = {
        "stage1": HeadsConfig(projections="global+local", mlm=True, vtm=True),
        "stage2": HeadsConfig(projections="global+local", mlm=True, vtm=True),
        "retrieval": HeadsConfig(projections="global", mlm=False, vtm=False),
        "qa-multichoice": HeadsConfig(projections="none", mlm=False, vtm=False, multiple_choice=True),
        "qa-classification": HeadsConfig(projections="none", mlm=False, vtm=False, num_labels=num_labels or 0),
    }[variant]
    return LfvilaConfig(
        video=video,
        text=text,
        fusion=CrossModalConfig(first_layer=text_layers, video_dim=video.num_features, max_frames=32) if fused else None,
        projections=ProjectionConfig(
            embed_dim=embed_dim, video_dim=video.num_features, clip_dim=video.clip_feature_dim, text_dim=text_dim
        ),
        heads=heads,
    )


def lfvila_base(variant: str = "stage1", num_labels: Optional[int] = None, text_model: Optional[str] = None) -> LfvilaConfig:
    """The paper's model (docs/method.md §2–§3): HTWA Swin-B-sized video encoder (128 wide, 24 blocks,
    windows 2/4/8/16/16/32 × 3×5), BERT-large-uncased split 8 / 4 / 12, projections 1024→1024.
    Frames 32 × 192×320, 4 sentences × 50 tokens."""
    video = VideoEncoderConfig()
    text = _text(text_model, "bert-large-uncased", BERT_LARGE, 8, 4, max_tokens=50)
    return _compose(video, text, 1024, BERT_LARGE["hidden_size"], variant, num_labels)


def lfvila_small(variant: str = "stage1", num_labels: Optional[int] = None, text_model: Optional[str] = None) -> LfvilaConfig:
    """One consumer GPU (~24 GB): a Swin-T-width video encoder (96 wide, 16 blocks, the
    paper's windows, 768 out) and BERT-base-uncased split 4 / 2 / 6, projections to 512.
    About 36 M video + 110 M text parameters; suits 16–32 frames at 96×160 to 192×320."""
    video = VideoEncoderConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2, 2, 2],
        num_heads=[3, 6, 12, 12, 12, 24],
        drop_path_rate=0.1,
    )
    text = _text(text_model, "bert-base-uncased", BERT_BASE, 4, 2, max_tokens=50)
    return _compose(video, text, 512, BERT_BASE["hidden_size"], variant, num_labels)


def lfvila_tiny(variant: str = "stage1", num_labels: Optional[int] = None, text_model: Optional[str] = None) -> LfvilaConfig:
    """Tests and the quickstart: the base model's structure (6 HTWA layers, merges after 0, 1,
    4, sentence/paragraph/cross-modal BERT levels) at toy widths. The paper's 8×8 patches, so
    64×96 frames give an 8×12 map (the paper: 24×40 at 192×320) and a 1×2 final map; 8 frames
    per clip, so 16 or 32 frames; a random 4-layer, 128-wide BERT split 1 / 1 / 2 with BERT's
    vocabulary, sentences of up to 32 tokens. (4×4 patches, a 16×24 map, made a stage-1 step
    4.4× slower — 1.21 s against 0.28 s for the video encoder at 16 × 32 × 64×96 — and learned
    no more per step on the example.)"""
    video = VideoEncoderConfig(
        patch_size=[1, 8, 8],
        embed_dim=16,
        depths=[2, 2, 2, 2, 2, 2],
        num_heads=[1, 2, 4, 4, 4, 8],
        spatial_window=[2, 3],
        drop_path_rate=0.0,
    )
    text = _text(text_model, "random", BERT_TINY, 1, 1, max_tokens=32)
    return _compose(video, text, 32, BERT_TINY["hidden_size"], variant, num_labels)


PRESETS: dict[str, Callable[..., LfvilaConfig]] = {
    "lfvila-base": lfvila_base,
    "lfvila-small": lfvila_small,
    "lfvila-tiny": lfvila_tiny,
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(
    name: str,
    variant: str = "stage1",
    *,
    num_labels: Optional[int] = None,
    text_model: Optional[str] = None,
) -> LfvilaConfig:
    """The ``LfvilaConfig`` of preset ``name`` for ``variant`` (see the module docstring)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    return PRESETS[name](variant, num_labels=num_labels, text_model=text_model)


def derive_variant(config: LfvilaConfig, variant: str, num_labels: Optional[int] = None) -> LfvilaConfig:
    """The ``variant`` layout over the architecture of an existing ``config`` (a pre-trained
    model's ``config.json``): same video encoder, text model and contrastive width; the
    variant's heads, cross-modal encoder and kept text layers. Loss settings carry over."""
    derived = _compose(
        copy.deepcopy(config.video), copy.deepcopy(config.text), config.projections.embed_dim,
        config.projections.text_dim, variant, num_labels,
    )
    derived.objectives = copy.deepcopy(config.objectives)
    return derived


def release_parameter_count(variant: str, num_labels: Optional[int] = None) -> Optional[int]:
    """Unique parameters of the authors' model for a base-preset variant, if released."""
    return RELEASE_PARAMETER_COUNTS.get((variant, num_labels or 0))
