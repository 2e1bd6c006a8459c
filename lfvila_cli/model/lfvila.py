"""LF-VILA, composed: HTWA video encoder + hierarchical BERT + cross-modal encoder + heads
(docs/method.md §2–§4, §6). Which heads each stage and task model holds, and where that departs
from the release: docs/method.md §7.

Shapes: frames (B, T, 3, H, W), ImageNet-normalised; text input_ids / attention_mask (B, M, L),
M sentence slots (in pre-training M = T / frames_per_clip clips), L tokens; K answer candidates,
D contrastive width, V vocabulary.

``LfvilaModel`` holds the parts its ``LfvilaConfig`` asks for (``HeadsConfig``: which heads) and
what every task shares; it has no ``forward``:

    encode_video(frames)        -> VideoEmbeddings: global (B, D), clips (B, M, D), unit norm
    encode_text(ids, mask)      -> TextEmbeddings: paragraph (B, D), sentences (B, M, D), mask (B, M)
    fuse(video map (B, T, h, w, C), ids, mask) -> CrossModalOutput over 1 + M·L + 6·T tokens
    stage_parameter_names / set_trainable      what a stage trains; the rest frozen

One subclass per task adds a typed ``forward(frames, input_ids, attention_mask, ...)``:

    LfvilaForPretrainingStage1  -> Stage1Output: video, paragraph (B, D); clips, sentences (B, M, D)
    LfvilaForPretrainingStage2  (MLM-masked ids, video_index (B,), mlm_positions (B, M·L); or video_tokens
                                (B, T, h, w, C) for frames) -> Stage2Output:
                                mlm_logits (B, M·L, V), or (P, V) for the P positions; vtm_logits (B, 2)
    LfvilaForRetrieval          -> DualEncoderOutput: VideoEmbeddings, TextEmbeddings
    LfvilaForMultipleChoice     (ids, mask (B, K, M, L)) -> choice_logits (B, K), span_logits (B, T, 2)
    LfvilaForClassification     -> logits (B, num_labels)

``model_class`` picks the class from a config's layout or a preset variant; ``build_model``
builds it (``device="meta"``: shapes only; ``materialise_meta`` initialises what a checkpoint
did not fill). Parameter names do not depend on the class, and wrappers that call
``model(...)`` (DDP, DeepSpeed) run their hooks. ``Cls.from_pretrained(dir or hub id)`` and
``model.save_pretrained(dir)`` read and write a finished-model directory (``pretrained.py``).
Losses live in ``lfvila_cli.objectives``; the model code here reads no files (the model
directory: ``files.py``; weight import: ``weights.py``; named configurations: ``presets.py``).

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
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import torch
from torch import nn

from ..config import check
from ..errors import ArtifactError, ConfigError, LfvilaError
from ..objectives import ObjectiveConfig
from .files import (
    TOKENIZER_DIR,
    config_from,
    info_from,
    load_strict,
    model_info,
    read_config_json,
    resolve_device,
    resolve_model_dir,
    write_model,
)
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

    mlm_logits: torch.Tensor  # (B, M·L, V): one row per text token, sentence by sentence (summary token
    # left out); (P, V) with mlm_positions: one row per scored token, in row-major order
    vtm_logits: torch.Tensor  # (B, 2): 0 = mismatched, 1 = matched
    fusion: CrossModalOutput  # sequence, pooled output, masks
    mlm_positions: Optional[torch.Tensor] = None  # (B, M·L) bool: the P tokens scored; None = every token


@dataclass
class MultipleChoiceModelOutput:
    choice_logits: torch.Tensor  # (B, K), softmax over the K candidates by the caller
    span_logits: torch.Tensor  # (B, T, 2) per frame: out of / in the annotated span (max over candidates)
    fusion: CrossModalOutput  # for the B·K (sample, candidate) rows, candidate-major within a sample


@dataclass
class ClassificationModelOutput:
    logits: torch.Tensor  # (B, num_labels)
    fusion: CrossModalOutput


@dataclass
class DualEncoderOutput:
    """Both encoders' embeddings of one batch (retrieval fine-tuning, VPC)."""

    video: VideoEmbeddings  # global (B, D), clips (B, M, D) or None
    text: TextEmbeddings  # paragraph (B, D), sentences (B, M, D) or None


# ---------------------------------------------------------------------------------------------
# The model: the parts (LfvilaModel), then one class per task with its forward
# ---------------------------------------------------------------------------------------------

Stage = Literal["stage1", "stage2", "finetune"]


class EmptySentenceSlotError(LfvilaError, ValueError):
    """Stage-1 input whose text leaves a sentence slot empty (MTC needs one sentence per clip)."""


M = TypeVar("M", bound="LfvilaModel")


class LfvilaModel(nn.Module):
    """The LF-VILA parts (config in, parts the config leaves out are ``None``) and what every
    task shares: ``encode_video``, ``encode_text``, ``fuse``, the stage split of the parameters.

    It has no ``forward``: each task has its class with one (``LfvilaForPretrainingStage1``,
    ``LfvilaForPretrainingStage2``, ``LfvilaForRetrieval``, ``LfvilaForMultipleChoice``,
    ``LfvilaForClassification``), so that wrappers calling ``model(...)`` (DDP, DeepSpeed's
    engine) run it with their hooks. ``build_model`` picks the class from the config
    (``model_class``); the parameter names do not depend on the class. ``from_pretrained`` /
    ``save_pretrained`` read and write a model directory (its files: ``files.py``)."""

    # A loaded model remembers where it came from and that directory's ``files.MODEL_KEYS`` (task,
    # classes, preprocessing), so that ``save_pretrained`` writes them, and the tokenizer, again.
    pretrained_dir: Optional[Path] = None
    pretrained_info: Optional[dict[str, Any]] = None

    @classmethod
    def from_pretrained(
        cls: type[M], path_or_hub_id: str | Path, *, device: Optional[str | torch.device] = None, revision: Optional[str] = None,
    ) -> M:
        """The model in a model directory or hub repository (``revision``: a branch, tag or
        commit of the hub repository; a local path always wins over a hub id), in eval mode on
        ``device`` (None: the CPU; see ``resolve_device``). Called on a task class, the directory
        must hold that class (a one-line error otherwise); on ``LfvilaModel``, any: the class its
        layout makes, which config.json's ``architectures`` names."""
        target = resolve_device(device)
        model_dir = resolve_model_dir(path_or_hub_id, revision)
        data = read_config_json(model_dir)
        config = config_from(LfvilaConfig, data)
        held = model_class(config)
        info = info_from(model_dir, data, held.__name__)
        if not issubclass(held, cls):
            raise ArtifactError(f"{model_dir}: holds a {held.__name__}, not a {cls.__name__}; load it with {held.__name__}.from_pretrained or lfvila_cli.load_model")
        model = load_strict(held(config), model_dir)
        model.pretrained_dir, model.pretrained_info = model_dir, info
        return model.to(target).eval()

    def save_pretrained(self, model_dir: str | Path, *, tokenizer: Any = None) -> Path:
        """Write the model directory: config.json (the config and the ``MODEL_KEYS`` this model
        was loaded with), model.safetensors (float32) and tokenizer/ — ``tokenizer`` (a loaded
        tokenizer, or a directory holding one), else the one of the directory it was loaded from,
        if any. Returns the directory."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in (self.pretrained_info or {}).items() if k not in ("architectures", "lfvila_version")}
        write_model(self, self.config, model_dir, {**model_info(model_class(self.config).__name__), **kept})
        source = tokenizer
        if source is None and self.pretrained_dir is not None and (self.pretrained_dir / TOKENIZER_DIR).is_dir():
            source = self.pretrained_dir / TOKENIZER_DIR
        if isinstance(source, (str, Path)):
            if not Path(source).is_dir():
                raise ArtifactError(f"{source}: no tokenizer directory to save with the model")
            if Path(source).resolve() != (model_dir / TOKENIZER_DIR).resolve():
                # the files as they are: save_pretrained of a loaded fast tokenizer drops vocab.txt
                shutil.copytree(source, model_dir / TOKENIZER_DIR, dirs_exist_ok=True)
        elif source is not None:
            source.save_pretrained(str(model_dir / TOKENIZER_DIR))
        return model_dir

    def __init__(self, config: LfvilaConfig) -> None:
        super().__init__()
        self.config = config
        self.frozen_modules: list[str] = []  # kept in eval mode by train(); see set_trainable
        heads = config.heads
        self.video_encoder = VideoEncoder(config.video)
        self.text_encoder = HierarchicalTextEncoder(config.text)
        bert = self.text_encoder.bert
        hidden = self.text_encoder.hidden_size
        # Fresh heads start at heads.HEAD_INITIALIZER_RANGE (BERT's 0.02) whatever the text model's own.
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
        self.vtm_head = VideoTextMatchingHead(hidden) if heads.vtm else None
        self.multiple_choice_head = (
            MultipleChoiceHead(hidden, dropout) if heads.multiple_choice else None
        )
        self.classification_head = (
            ClassificationHead(hidden, heads.num_labels, dropout) if heads.num_labels else None
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


class LfvilaForPretrainingStage1(LfvilaModel):
    """Stage 1 (VPC + MTC, docs/method.md §4): video encoder, text levels, global and local projections."""

    def forward(self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Stage1Output:
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


class LfvilaForPretrainingStage2(LfvilaModel):
    """Stage 2 (MLM + VTM, docs/method.md §4): stage 1's parts plus the cross-modal encoder, MLM and VTM heads."""

    def forward(
        self,
        frames: Optional[torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_index: Optional[torch.Tensor] = None,
        mlm_positions: Optional[torch.Tensor] = None,
        video_tokens: Optional[torch.Tensor] = None,
    ) -> Stage2Output:
        """frames (B, T, 3, H, W); input_ids (B, M, L) already MLM-masked, attention_mask (B, M, L);
        video_index (B,) long: text b is fused with the video of sample ``video_index[b]``
        (``objectives.video_text_matching_pairs``), None = matched. One fused pass gives both
        MLM logits (B, M·L, V) — flatten the labels to (B, M·L) — and VTM logits (B, 2).

        mlm_positions (B, M·L) bool (``objectives.stage2_mlm_positions``): the head scores only
        these P tokens, mlm_logits (P, V): the vocabulary-wide logits of the tokens MLM never
        reads are never made (docs/method.md §4). None scores every token, the reference.

        ``video_tokens`` (B, T, h, w, C) in place of ``frames`` (then None): the frozen video
        encoder's output computed earlier (a feature store, docs/method.md §8); the first
        trainable module, the video token embedding, reads it as it would the encoder's."""
        if self.mlm_head is None or self.vtm_head is None:
            raise ConfigError("config keys 'heads.mlm' and 'heads.vtm': stage 2 needs both heads")
        if (frames is None) == (video_tokens is None):
            raise ValueError("stage 2 takes either frames or the video encoder's tokens (video_tokens), not both or neither")
        video = self.video_encoder(frames).tokens if video_tokens is None else video_tokens  # (B, T, h, w, C)
        if video_index is not None:
            video = video[video_index.to(video.device)]
        fused = self.fuse(video, input_ids, attention_mask)
        text_states = fused.text_states[:, 1:]  # (B, M·L, H): the summary token has no label
        if mlm_positions is not None:
            text_states = text_states[mlm_positions.to(text_states.device)]  # (P, H)
        return Stage2Output(
            mlm_logits=self.mlm_head(text_states), vtm_logits=self.vtm_head(fused.pooled), fusion=fused,
            mlm_positions=mlm_positions,
        )


class LfvilaForRetrieval(LfvilaModel):
    """Retrieval fine-tuning (VPC, docs/method.md §6): the dual encoder with the global projections."""

    def forward(self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DualEncoderOutput:
        """frames (B, T, 3, H, W) and text (B, M, L) -> both embeddings, in one call (one
        forward for DeepSpeed's hooks); the video is encoded first."""
        return DualEncoderOutput(self.encode_video(frames), self.encode_text(input_ids, attention_mask))


class LfvilaForMultipleChoice(LfvilaModel):
    """Multiple-choice QA (How2QA, docs/method.md §6): cross-modal encoder + choice and span head."""

    def forward(
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


class LfvilaForClassification(LfvilaModel):
    """Classification QA (VIOLIN, ActivityNet-QA, docs/method.md §6): cross-modal encoder + classifier."""

    def forward(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> ClassificationModelOutput:
        """frames (B, T, 3, H, W); input_ids, attention_mask (B, M, L) -> logits (B, num_labels)."""
        if self.classification_head is None:
            raise ConfigError("config key 'heads.num_labels': this model has no classifier (num_labels = 0)")
        fused = self.fuse(self.video_encoder(frames).tokens, input_ids, attention_mask)
        return ClassificationModelOutput(self.classification_head(fused.pooled), fused)


VARIANT_CLASSES: dict[str, type[LfvilaModel]] = {
    "stage1": LfvilaForPretrainingStage1,
    "stage2": LfvilaForPretrainingStage2,
    "retrieval": LfvilaForRetrieval,
    "qa-multichoice": LfvilaForMultipleChoice,
    "qa-classification": LfvilaForClassification,
}


def model_class(layout: "LfvilaConfig | str") -> type[LfvilaModel]:
    """The class of a model: from a preset variant (``presets.VARIANTS``) or from a config's
    layout (its heads and cross-modal encoder, as ``presets`` composes them). A layout that is
    none of the task layouts gets the plain ``LfvilaModel`` (encoders only, no ``forward``)."""
    if isinstance(layout, str):
        if layout not in VARIANT_CLASSES:
            raise ConfigError(f"unknown model variant {layout!r}; known: {', '.join(VARIANT_CLASSES)}")
        return VARIANT_CLASSES[layout]
    heads = layout.heads
    if heads.multiple_choice:
        return LfvilaForMultipleChoice
    if heads.num_labels:
        return LfvilaForClassification
    if layout.fusion is not None and heads.mlm and heads.vtm:
        return LfvilaForPretrainingStage2
    if layout.fusion is None and heads.projections == "global+local":
        return LfvilaForPretrainingStage1
    if heads.projections != "none":
        return LfvilaForRetrieval
    return LfvilaModel


# ---------------------------------------------------------------------------------------------
# Building without memory: the meta device
# ---------------------------------------------------------------------------------------------


def meta_tensor_names(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` still on the meta device."""
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return sorted({name for name, tensor in tensors if tensor is not None and tensor.is_meta})


def _init_owner(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The nearest module at or above ``name`` with an ``_init_weights(module)`` rule (ours, or a
    ``transformers`` model's), or None."""
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        owner = model.get_submodule(".".join(parts[:depth]))
        if callable(getattr(owner, "_init_weights", None)):
            return owner
    return None


@torch.no_grad()
def materialise_meta(model: nn.Module, device: str | torch.device = "cpu") -> list[str]:
    """Give every tensor still on the meta device real memory on ``device`` and its fresh
    initialisation, module by module, as the model's own code initialises it when built: the
    module's ``reset_parameters()`` (PyTorch's default; ours for their own tensors), then the
    rule of the nearest module owning the initialisation of its part (``_init_weights(module)``:
    the video encoder's truncated normal, BERT's normal(initializer_range) from ``transformers``,
    the heads' BERT rule). Non-persistent buffers (BERT's position_ids / token_type_ids, which
    no checkpoint holds) are recomputed the same way.

    For a model built on meta and then loaded from a file that lacks some parts (a QA model from
    a stage-2 file: the QA head): those parts get a fresh initialisation; loaded tensors of the
    same module are kept. Returns the names of the parameters and persistent buffers
    materialised; tensors of a module with no initialisation (no ``reset_parameters`` and no
    owner rule) stay on meta.
    """
    done: list[str] = []
    for name, module in model.named_modules():
        params = [n for n, t in module._parameters.items() if t is not None and t.is_meta]
        buffers = [n for n, t in module._buffers.items() if t is not None and t.is_meta]
        if not params and not buffers:
            continue
        owner = _init_owner(model, name)
        if owner is None and not hasattr(module, "reset_parameters"):
            continue  # stays on meta: the caller sees what is still missing
        # Tensors already loaded are set aside while the module's init runs on scratch copies
        # (to_empty would replace their data in place).
        loaded_params = {n: t for n, t in module._parameters.items() if t is not None and not t.is_meta}
        loaded_buffers = {n: t for n, t in module._buffers.items() if t is not None and not t.is_meta}
        for n, t in loaded_params.items():
            module._parameters[n] = nn.Parameter(t.to("meta"), requires_grad=t.requires_grad)
        for n, t in loaded_buffers.items():
            module._buffers[n] = t.to("meta")
        module.to_empty(device=device, recurse=False)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if owner is not None:
            owner._init_weights(module)
        module._parameters.update(loaded_params)
        module._buffers.update(loaded_buffers)
        prefix = f"{name}." if name else ""
        done.extend(prefix + n for n in params)
        done.extend(prefix + n for n in buffers if n not in module._non_persistent_buffers_set)
    return sorted(done)


def build_model(config: LfvilaConfig, device: str | torch.device | None = None) -> LfvilaModel:
    """The model ``config`` describes, of the class its layout calls for (``model_class``);
    with ``device="meta"`` every tensor is shape-only (built under ``torch.device("meta")``:
    no memory, no initialisation cost; ``materialise_meta`` gives the tensors a checkpoint
    did not fill their fresh initialisation)."""
    cls = model_class(config)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return cls(config)
    model = cls(config)
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
