"""LF-VILA, composed: HTWA video encoder + hierarchical BERT + cross-modal encoder + heads.

Paper (Sun et al., NeurIPS 2022, arXiv 2210.06031; docs/method.md §2–§4, §6). One model object serves
every stage and task; its config says which parts exist:

* **Stage 1** (VPC, global Video–Paragraph Contrastive, + MTC, Multimodal Temporal
  Contrastive): video encoder, text layers 0–11 (sentence level 0–7, paragraph level 8–11),
  the four contrastive projections (global: video, paragraph; local: clip, sentence).
* **Stage 2** (MLM, Masked Language Modelling, + VTM, Video–Text Matching): the above, frozen,
  plus BERT layers 12–23 run as a single-stream cross-modal encoder over
  [paragraph tokens ; video tokens], the MLM and VTM heads.
* **Retrieval**: the dual encoder of stage 1 with the global projections only.
* **QA**: video encoder, text levels and cross-modal encoder, with a multiple-choice head
  (How2QA: a logit per candidate + per-frame span head) or a classifier (VIOLIN, ActivityNet-QA).

Losses are not computed here (``lfvila_cli.objectives``): every ``forward_*`` method returns
named features and logits. Model code never reads files; ``weights.py`` initialises and imports
weights, ``presets.py`` names the configurations.

Parameter names (top level) against the authors' released checkpoints (full key map in
``weights.py``):

    video_encoder.*                 video_encoder.*   (clip head renamed, see video_encoder.py)
    text_encoder.bert.*             text_encoder.bert.*
    text_encoder.paragraph_embedding.*   sent_embedding.*   (400 position rows, not 512)
    fusion.video_tokens.*           video_token_pos.*
    projections.{video,paragraph,clip,sentence}.linear.*
                                    {video,text}_global_proj.*, {video,text}_local_proj.*
    mlm_head.*                      text_encoder.cls.predictions.*
    vtm_head.classifier.*           text_encoder.seq_relationship.*
    multiple_choice_head.{classifier,span_classifier}.*   text_encoder.{classifier,span_classifier}.*
    classification_head.classifier.*                      text_encoder.classifier.*

Departures from the release: the paragraph position table has 8·50 = 400 rows (theirs 512,
of which rows ≥ 400 are never read); a stage-1 model keeps the MLM/VTM heads the release's
stage-1 file carries (unused and frozen in stage 1, so stage 2 starts from them), while the
retrieval model drops them (the release kept them, unused).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional

import torch
from torch import nn

from ..config import check
from ..errors import ConfigError, LfvilaError
from ..objectives import ObjectiveConfig
from .fusion import CrossModalConfig, CrossModalEncoder, CrossModalOutput
from .heads import (
    ClassificationHead,
    ContrastiveProjections,
    MaskedLanguageModelingHead,
    MultipleChoiceHead,
    ProjectionConfig,
    VideoTextMatchingHead,
)
from .text_encoder import HierarchicalTextEncoder, TextEncoderConfig, TextEncoderOutput
from .video_encoder import VideoEncoder, VideoEncoderConfig, VideoEncoderOutput

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadsConfig:
    """Which heads the model holds. Defaults: the release's stage-1 layout."""

    projections: Literal["none", "global", "global+local"] = "global+local"  # contrastive projections
    mlm: bool = True  # masked-language-modelling head (stage 2)
    vtm: bool = True  # video–text matching head (stage 2)
    tie_mlm_decoder: bool = False  # share the MLM decoder with the word embeddings (the release did not)
    multiple_choice: bool = False  # How2QA: one logit per candidate + per-frame span head
    num_labels: int = 0  # classification QA classes (VIOLIN 2, ActivityNet-QA 1654); 0 = no classifier

    def __post_init__(self) -> None:
        check(self.num_labels >= 0, "heads.num_labels", f"must be >= 0, got {self.num_labels}")
        check(
            not (self.multiple_choice and self.num_labels),
            "heads.num_labels",
            "a model holds either the multiple-choice head or a classifier, not both "
            "(both read the authors' text_encoder.classifier weights)",
        )


def _default_text() -> TextEncoderConfig:
    return TextEncoderConfig(model="bert-large-uncased", keep_layers=12)


@dataclass
class LfvilaConfig:
    """The whole model. Defaults: ``lfvila-base`` stage 1 (the paper's sizes, docs/method.md §2–§3; BERT-large from the hub)."""

    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    text: TextEncoderConfig = field(default_factory=_default_text)
    fusion: Optional[CrossModalConfig] = None  # None: no cross-modal encoder (stage 1, retrieval)
    projections: ProjectionConfig = field(default_factory=ProjectionConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        heads, video = self.heads, self.video
        if heads.projections != "none":
            check(
                self.projections.video_dim == video.num_features,
                "projections.video_dim",
                f"must equal the video encoder's output width {video.num_features}, got {self.projections.video_dim}",
            )
            if heads.projections == "global+local":
                check(
                    self.projections.clip_dim == video.clip_feature_dim,
                    "projections.clip_dim",
                    f"must equal the video encoder's clip-feature width {video.clip_feature_dim}, "
                    f"got {self.projections.clip_dim}",
                )
        check(
            self.fusion is not None or not (heads.multiple_choice or heads.num_labels),
            "fusion",
            "the QA heads read the cross-modal encoder's pooled output: set fusion (e.g. fusion.first_layer=12)",
        )
        if self.fusion is not None:
            text_layers = self.text.sentence_layers + self.text.paragraph_layers
            check(
                self.fusion.first_layer >= text_layers,
                "fusion.first_layer",
                f"must be >= sentence_layers + paragraph_layers = {text_layers} "
                f"(the text levels own those layers), got {self.fusion.first_layer}",
            )
            check(
                self.text.keep_layers is None or self.text.keep_layers > self.fusion.first_layer,
                "text.keep_layers",
                f"drops the cross-modal layers (fusion starts at layer {self.fusion.first_layer}); "
                "keep all layers (null) for stage 2 and QA",
            )
            video_dim = self.fusion.video_dim
            check(
                video_dim is None or video_dim == video.num_features,
                "fusion.video_dim",
                f"must be null or the video encoder's output width {video.num_features}, got {video_dim}",
            )


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class VideoEmbeddings:
    """Projected, L2-normalised video features (B batch, M clips, D contrastive width)."""

    global_embedding: torch.Tensor  # (B, D) for VPC and retrieval
    clip_embeddings: Optional[torch.Tensor]  # (B, M, D) for MTC; None without local projections
    features: VideoEncoderOutput  # the encoder's raw outputs (tokens, global/clip features)


@dataclass
class TextEmbeddings:
    """Projected, L2-normalised text features (B batch, M sentence slots, D contrastive width)."""

    paragraph_embedding: torch.Tensor  # (B, D) for VPC and retrieval
    sentence_embeddings: Optional[torch.Tensor]  # (B, M, D) for MTC; None without local projections
    sentence_mask: torch.Tensor  # (B, M) bool, True = the slot holds a sentence
    features: TextEncoderOutput  # the encoder's raw outputs (token states, masks)


@dataclass
class Stage1Output:
    """What ``pretrain_stage1_loss`` takes: every embedding L2-normalised, width D."""

    video_embedding: torch.Tensor  # (B, D)
    paragraph_embedding: torch.Tensor  # (B, D)
    clip_embeddings: torch.Tensor  # (B, M, D), clip i = frames [i·F, (i+1)·F)
    sentence_embeddings: torch.Tensor  # (B, M, D), sentence i belongs to clip i
    sentence_mask: torch.Tensor  # (B, M) bool


@dataclass
class Stage2Output:
    """What ``pretrain_stage2_loss`` takes."""

    mlm_logits: torch.Tensor  # (B, M·L, V): one row per text token, sentence by sentence (summary token left out)
    vtm_logits: torch.Tensor  # (B, 2): 0 = mismatched, 1 = matched
    fusion: CrossModalOutput  # sequence, pooled output, masks


@dataclass
class MultipleChoiceModelOutput:
    choice_logits: torch.Tensor  # (B, K), softmax over the K candidates by the caller
    span_logits: torch.Tensor  # (B, T, 2) per frame: out of / in the annotated span (max over candidates)
    fusion: CrossModalOutput  # for the B·K (sample, candidate) rows, candidate-major within a sample


@dataclass
class ClassificationModelOutput:
    logits: torch.Tensor  # (B, num_labels)
    fusion: CrossModalOutput


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

Stage = Literal["stage1", "stage2", "finetune"]


class EmptySentenceSlotError(LfvilaError, ValueError):
    """Stage-1 input whose text leaves a sentence slot empty (MTC needs one sentence per clip)."""


class LfvilaModel(nn.Module):
    """The LF-VILA model. Build it with a config (``presets.get_preset``); parts the config
    leaves out are ``None``. ``forward(mode, ...)`` dispatches to the ``forward_*`` methods so
    that wrappers calling ``model(...)`` (DDP, DeepSpeed) run them with their hooks."""

    def __init__(self, config: LfvilaConfig) -> None:
        super().__init__()
        self.config = config
        self.frozen_modules: list[str] = []  # kept in eval mode by train(); see set_trainable
        heads = config.heads
        self.video_encoder = VideoEncoder(config.video)
        self.text_encoder = HierarchicalTextEncoder(config.text)
        bert = self.text_encoder.bert
        hidden = self.text_encoder.hidden_size
        init_range = getattr(bert.config, "initializer_range", 0.02)
        dropout = getattr(bert.config, "hidden_dropout_prob", 0.1)

        if heads.projections != "none" and config.projections.text_dim != hidden:
            raise ConfigError(
                f"config key 'projections.text_dim': must equal the text model's width {hidden}, "
                f"got {config.projections.text_dim}"
            )
        self.projections: Optional[ContrastiveProjections] = None
        if heads.projections != "none":
            self.projections = ContrastiveProjections(config.projections)
            if heads.projections == "global":
                # Retrieval is VPC only: drop the local (MTC) projections, as the release did.
                self.projections.clip = None
                self.projections.sentence = None

        if config.fusion is not None and (config.fusion.video_dim or hidden) != config.video.num_features:
            raise ConfigError(
                f"config key 'fusion.video_dim': the video encoder's output is {config.video.num_features} wide; "
                f"set fusion.video_dim={config.video.num_features} (null means the text width {hidden})"
            )
        # Built over the text encoder's BERT: layers 12.. and the pooler stay owned (and saved) there.
        self.fusion = CrossModalEncoder(config.fusion, bert) if config.fusion is not None else None
        self.mlm_head = (
            MaskedLanguageModelingHead.from_bert(bert, tie_word_embeddings=heads.tie_mlm_decoder) if heads.mlm else None
        )
        self.vtm_head = VideoTextMatchingHead(hidden, init_range) if heads.vtm else None
        self.multiple_choice_head = (
            MultipleChoiceHead(hidden, dropout, init_range) if heads.multiple_choice else None
        )
        self.classification_head = (
            ClassificationHead(hidden, heads.num_labels, dropout, init_range) if heads.num_labels else None
        )

    # ----------------------------------------------------------------------------- encoders

    def encode_video(self, frames: torch.Tensor) -> VideoEmbeddings:
        """frames (B, T, 3, H, W), ImageNet-normalised -> ``VideoEmbeddings``:
        global (B, D) and clip (B, T/frames_per_clip, D) embeddings, unit norm."""
        projections = self._projections()
        features = self.video_encoder(frames)
        clips = projections.clip(features.clip_features) if projections.clip is not None else None
        return VideoEmbeddings(projections.video(features.global_feature), clips, features)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEmbeddings:
        """input_ids, attention_mask (B, M, L) -> ``TextEmbeddings``: paragraph (B, D) and
        sentence (B, M, D) embeddings, unit norm (empty slots: see ``sentence_mask``)."""
        projections = self._projections()
        features = self.text_encoder(input_ids, attention_mask)
        sentences = projections.sentence(features.sentence_features) if projections.sentence is not None else None
        return TextEmbeddings(
            projections.paragraph(features.paragraph_feature), sentences, features.sentence_mask, features
        )

    def _projections(self) -> ContrastiveProjections:
        if self.projections is None:
            raise ConfigError("config key 'heads.projections': this model has no contrastive projections ('none')")
        return self.projections

    def _fusion(self) -> CrossModalEncoder:
        if self.fusion is None:
            raise ConfigError("config key 'fusion': this model has no cross-modal encoder (stage-1 / retrieval layout)")
        return self.fusion

    # ----------------------------------------------------------------------------- stages

    def forward_pretrain_stage1(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Stage1Output:
        """frames (B, T, 3, H, W); input_ids, attention_mask (B, M, L) with M = T / frames_per_clip
        (sentence i over clip i) -> ``Stage1Output`` for VPC + MTC."""
        clips = frames.shape[1] // self.config.video.frames_per_clip
        if input_ids.shape[1] != clips:
            raise ValueError(
                f"stage 1 pairs sentence i with clip i: {frames.shape[1]} frames make {clips} clips of "
                f"{self.config.video.frames_per_clip} frames, but the text has {input_ids.shape[1]} sentence slots"
            )
        video = self.encode_video(frames)
        text = self.encode_text(input_ids, attention_mask)
        if video.clip_embeddings is None or text.sentence_embeddings is None:
            raise ConfigError("config key 'heads.projections': stage 1 needs the local projections ('global+local')")
        # MTC pairs sentence i with clip i and has no notion of an empty slot: an empty slot's zero
        # feature would still project to a unit vector and act as a key / target / negative. Stage 1
        # always draws M consecutive clips each with its sentence, so an empty slot is a data error.
        empty = ~text.sentence_mask.bool()
        if bool(empty.any()):
            samples = int(empty.any(dim=1).sum())
            raise EmptySentenceSlotError(
                f"stage 1 needs a sentence in every slot (MTC pairs sentence i with clip i): "
                f"{samples} of {empty.shape[0]} samples have empty sentence slots ({int(empty.sum())} slots in all)"
            )
        return Stage1Output(
            video_embedding=video.global_embedding,
            paragraph_embedding=text.paragraph_embedding,
            clip_embeddings=video.clip_embeddings,
            sentence_embeddings=text.sentence_embeddings,
            sentence_mask=text.sentence_mask,
        )

    def fuse(
        self,
        video_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> CrossModalOutput:
        """The video encoder's final map (B, T, h, w, C) and text (B, M, L) -> cross-modal output
        over (B, 1 + M·L + T·6) tokens."""
        text = self.text_encoder(input_ids, attention_mask)
        return self._fusion()(text.token_states, text.token_mask, video_tokens)

    def forward_stage2(
        self,
        frames: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_index: Optional[torch.Tensor] = None,
    ) -> Stage2Output:
        """frames (B, T, 3, H, W); input_ids (B, M, L) already MLM-masked, attention_mask (B, M, L);
        video_index (B,) long: text b is fused with the video of sample ``video_index[b]``
        (``objectives.video_text_matching_pairs``), None = matched. One fused pass gives both
        MLM logits (B, M·L, V) — flatten the labels to (B, M·L) — and VTM logits (B, 2)."""
        if self.mlm_head is None or self.vtm_head is None:
            raise ConfigError("config keys 'heads.mlm' and 'heads.vtm': stage 2 needs both heads")
        video = self.video_encoder(frames).tokens  # (B, T, h, w, C)
        if video_index is not None:
            video = video[video_index.to(video.device)]
        fused = self.fuse(video, input_ids, attention_mask)
        mlm_logits = self.mlm_head(fused.text_states[:, 1:])  # summary token has no label
        return Stage2Output(mlm_logits=mlm_logits, vtm_logits=self.vtm_head(fused.pooled), fusion=fused)

    def forward_multiple_choice(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> MultipleChoiceModelOutput:
        """frames (B, T, 3, H, W); input_ids, attention_mask (B, K, M, L), K candidates each a
        text of M segments (question + answer, subtitles) -> choice logits (B, K), span logits
        (B, T, 2). The video is encoded once and shared by its K candidates."""
        if self.multiple_choice_head is None:
            raise ConfigError("config key 'heads.multiple_choice': this model has no multiple-choice head")
        batch, choices = input_ids.shape[:2]
        video = self.video_encoder(frames).tokens.repeat_interleave(choices, dim=0)  # (B·K, T, h, w, C)
        fused = self.fuse(video, input_ids.flatten(0, 1), attention_mask.flatten(0, 1))
        out = self.multiple_choice_head(fused.pooled, choices, fused.frame_states)
        return MultipleChoiceModelOutput(out.choice_logits, out.span_logits, fused)

    def forward_classification(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> ClassificationModelOutput:
        """frames (B, T, 3, H, W); input_ids, attention_mask (B, M, L) -> logits (B, num_labels)."""
        if self.classification_head is None:
            raise ConfigError("config key 'heads.num_labels': this model has no classifier (num_labels = 0)")
        fused = self.fuse(self.video_encoder(frames).tokens, input_ids, attention_mask)
        return ClassificationModelOutput(self.classification_head(fused.pooled), fused)

    def forward_dual_encoder(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[VideoEmbeddings, TextEmbeddings]:
        """Retrieval fine-tuning in one call (one forward for DeepSpeed's hooks): frames
        (B, T, 3, H, W) and text (B, M, L) -> their embeddings."""
        return self.encode_video(frames), self.encode_text(input_ids, attention_mask)

    def forward(self, mode: str, *args, **kwargs):
        """``model("stage1" | "stage2" | "dual" | "multiple_choice" | "classification" | "video" | "text", ...)``."""
        dispatch = {
            "stage1": self.forward_pretrain_stage1,
            "dual": self.forward_dual_encoder,
            "stage2": self.forward_stage2,
            "multiple_choice": self.forward_multiple_choice,
            "classification": self.forward_classification,
            "video": self.encode_video,
            "text": self.encode_text,
        }
        if mode not in dispatch:
            raise ValueError(f"unknown forward mode {mode!r}; expected one of {', '.join(dispatch)}")
        return dispatch[mode](*args, **kwargs)

    # ----------------------------------------------------------------------------- training

    def stage_parameter_names(self, stage: Stage) -> list[str]:
        """Names of the parameters a stage trains (docs/method.md §4).

        stage1: video encoder, BERT embeddings and text layers [0, sentence+paragraph),
        paragraph embedding, projections. stage2: the cross-modal layers, the pooler, the video
        token embedding, MLM and VTM heads (everything from stage 1 frozen). finetune: all.
        """
        names = [name for name, _ in self.named_parameters()]
        if stage == "finetune":
            return names
        text_layers = self.config.text.sentence_layers + self.config.text.paragraph_layers
        first_fusion = self.config.fusion.first_layer if self.config.fusion is not None else text_layers

        def layer_of(name: str) -> Optional[int]:
            prefix = "text_encoder.bert.encoder.layer."
            return int(name[len(prefix):].split(".", 1)[0]) if name.startswith(prefix) else None

        def stage1(name: str) -> bool:
            layer = layer_of(name)
            if layer is not None:
                return layer < text_layers
            return name.startswith(("video_encoder.", "text_encoder.bert.embeddings.", "text_encoder.paragraph_embedding.", "projections."))

        def stage2(name: str) -> bool:
            layer = layer_of(name)
            if layer is not None:
                return layer >= first_fusion
            return name.startswith(("text_encoder.bert.pooler.", "fusion.", "mlm_head.", "vtm_head."))

        if stage == "stage1":
            return [n for n in names if stage1(n)]
        if stage == "stage2":
            return [n for n in names if stage2(n)]
        raise ValueError(f"unknown stage {stage!r}; expected stage1, stage2 or finetune")

    def set_trainable(self, stage: Stage) -> int:
        """Set ``requires_grad`` for ``stage`` (others frozen); returns the trainable count.

        The largest submodules left wholly frozen are remembered (``frozen_modules``) and kept in
        eval mode by ``train()``, as the authors call ``.eval()`` on frozen parts: no dropout or
        stochastic depth where nothing learns (in stage 2: the video encoder, BERT's embeddings
        and text layers, the paragraph embedding, the projections).
        """
        trainable = set(self.stage_parameter_names(stage))
        count = 0
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)
            count += param.numel() if name in trainable else 0
        self.frozen_modules = self._wholly_frozen_modules()
        self.train(self.training)
        return count

    def _wholly_frozen_modules(self) -> list[str]:
        """Names of the largest submodules that hold parameters, none of them trainable."""
        frozen: list[str] = []

        def walk(prefix: str, module: nn.Module) -> None:
            for name, child in module.named_children():
                path = f"{prefix}{name}"
                params = list(child.parameters())
                if params and not any(p.requires_grad for p in params):
                    frozen.append(path)
                elif params:
                    walk(path + ".", child)

        walk("", self)
        return frozen

    def train(self, mode: bool = True) -> "LfvilaModel":
        """``nn.Module.train``, except that the submodules ``set_trainable`` froze stay in eval mode."""
        super().train(mode)
        if mode:
            for name in getattr(self, "frozen_modules", ()):
                self.get_submodule(name).eval()
        return self


# ---------------------------------------------------------------------------------------------
# Building without memory: the meta device
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create every parameter and persistent buffer on the meta device (shapes only, no memory,
    no init cost). Non-persistent buffers (index tensors no checkpoint holds) stay real.

    Module code may still compute small things on the CPU while it is built (e.g. a drop-path
    schedule with ``.tolist()``), which a ``torch.device("meta")`` context would break; only
    registration is redirected. Use for parameter counts, key maps, and with
    ``load_state_dict(..., assign=True)`` to materialise weights straight from a checkpoint.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def meta_parameter(module: nn.Module, name: str, param) -> None:
        register_parameter(module, name, param)
        if param is not None:
            param = module._parameters[name]
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    def meta_buffer(module: nn.Module, name: str, tensor, persistent: bool = True) -> None:
        # Non-persistent buffers (BERT's position_ids / token_type_ids) are in no state dict, so
        # no checkpoint could restore them: keep them real (they are small index tensors).
        if persistent and tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(module, name, tensor, persistent)

    nn.Module.register_parameter = meta_parameter
    nn.Module.register_buffer = meta_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter
        nn.Module.register_buffer = register_buffer


def meta_tensor_names(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` still on the meta device."""
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return sorted({name for name, tensor in tensors if tensor is not None and tensor.is_meta})


@torch.no_grad()
def _fresh_init(module: nn.Module, part: str, std: float) -> None:
    """The initialisation ``module`` (a leaf owner of tensors, materialised empty) gets when the
    model is built: ``part`` is its top-level attribute name, ``std`` BERT's initializer_range."""
    from .fusion import VideoTokenEmbedding
    from .video_encoder import WindowAttention3D, _init_weights as video_init

    if isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif part == "video_encoder" and isinstance(module, (nn.Linear, WindowAttention3D)):
        video_init(module)  # truncated normal 0.02, zero biases
    elif part == "projections" or isinstance(module, nn.modules.conv._ConvNd):
        module.reset_parameters()  # PyTorch's default, as the projections and the patch kernel get
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)  # BERT's rule: its layers and the fresh heads
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, VideoTokenEmbedding):
        module.spatial_embedding.normal_(std=0.02)
        module.temporal_embedding.normal_(std=0.02)
    elif isinstance(module, MaskedLanguageModelingHead):
        module.bias.zero_()
    # anything else stays uninitialised memory and is not reported as materialised


def materialise_meta(model: "LfvilaModel", device: str | torch.device = "cpu") -> list[str]:
    """Give every parameter still on the meta device real memory on ``device`` and its
    fresh initialisation (what ``LfvilaModel(config)`` would have drawn), module by module.

    For a model built on meta and then loaded from a file that lacks some parts (a QA model from
    a stage-2 file: the QA head): those parts keep their fresh initialisation. Returns the names
    materialised; tensors of a module with no known initialisation stay on meta.
    """
    from .fusion import VideoTokenEmbedding
    from .video_encoder import WindowAttention3D

    initialisable = (
        nn.LayerNorm, nn.Linear, nn.Embedding, nn.modules.conv._ConvNd,
        MaskedLanguageModelingHead, VideoTokenEmbedding, WindowAttention3D,
    )
    bert_config = getattr(getattr(getattr(model, "text_encoder", None), "bert", None), "config", None)
    std = getattr(bert_config, "initializer_range", 0.02)
    done: list[str] = []
    for name, module in model.named_modules():
        params = [n for n, t in module._parameters.items() if t is not None and t.is_meta]
        buffers = [n for n, t in module._buffers.items() if t is not None and t.is_meta]
        # A module with no known initialisation, or a meta buffer (we cannot recompute it), stays
        # on meta so that the caller sees what is still missing.
        if not params or buffers or not isinstance(module, initialisable):
            continue
        # Materialise the meta parameters (to_empty for those only); a loaded parameter of the same
        # module is swapped out for a scratch copy while the module's init runs, so it is kept.
        loaded = {n: t for n, t in module._parameters.items() if t is not None and not t.is_meta}
        for n, t in module._parameters.items():
            if t is not None:
                module._parameters[n] = nn.Parameter(torch.empty_like(t, device=device), requires_grad=t.requires_grad)
        _fresh_init(module, name.split(".", 1)[0], std)
        module._parameters.update(loaded)
        done.extend(f"{name}.{n}" if name else n for n in params)
    return sorted(done)


def build_model(config: LfvilaConfig, device: str | torch.device | None = None) -> LfvilaModel:
    """``LfvilaModel(config)``; with ``device="meta"`` every tensor is shape-only."""
    if device is not None and torch.device(device).type == "meta":
        with parameters_on_meta():
            return LfvilaModel(config)
    model = LfvilaModel(config)
    return model.to(device) if device is not None else model


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tensor shared under two names counts once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # parameters() already yields each Parameter once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
