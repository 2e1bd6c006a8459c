"""Weights: Swin-2D inflation into the HTWA video encoder, BERT initialisation, and import /
export of the authors' released LF-VILA checkpoints.

The video encoder is HTWA (docs/method.md §2); the heads serve VPC, MTC, MLM and VTM
(docs/method.md §4). Where the model's parameters differ from the release's: docs/method.md §7.

    load_swin2d(encoder, source)           (a) a Swin-2D checkpoint into a ``VideoEncoder``;
                                           inflate_swin2d / inflate_patch_kernel /
                                           inflate_relative_position_table do the tensors
    load_bert_weights(model, source)       (b) a BERT state dict into the text encoder, MLM head
    load_official_checkpoint(model, source)   (c) an authors' checkpoint into an ``LfvilaModel``;
                                           convert_official_state_dict renames without loading
    export_official_state_dict(model)      (c) the inverse: our weights under the authors' keys
    read_state_dict(source), checkpoint_file, resolve_pretrained_file   reading files safely
    ImportReport, WeightImportError        what an import did; a refused import

Every import reads tensors only: ``torch.load(path, map_location="cpu", weights_only=True)`` or
safetensors, never arbitrary unpickling. It returns an ``ImportReport``: model keys loaded,
model keys *missing* (left as they were), source keys *skipped* with the reason (a documented
exclusion, or a part the target model does not have), and source keys *unexpected* (no rule
maps them: usually a different model or format). A shape mismatch is refused with a one-line
``WeightImportError`` naming the key and both shapes. Models built on the meta device
(``lfvila.build_model(cfg, "meta")``) are materialised straight from the checkpoint
(``load_state_dict(assign=True)``); others are copied into, cast to their own dtype. After
``load_official_checkpoint`` from real tensors, the parts of a meta-built model that the file
lacks get real memory and their fresh initialisation by the modules' own init code
(``lfvila.materialise_meta``), non-persistent index buffers (BERT's position_ids, in no file) are
recomputed, and a tensor still on meta is refused (``WeightImportError``); a shape-only (meta)
source leaves a shape-only model.

**(a) Swin-2D → HTWA (docs/method.md §2).** Accepts the original Swin release (``patch_embed.proj``,
``layers.{s}.blocks.{j}.attn.qkv``, ``layers.{s}.downsample``, ``norm``; optionally wrapped in
``{"model": ...}``) and ``transformers``' ``SwinModel`` (on-disk names
``embeddings.patch_embeddings.projection``, ``encoder.layers.{s}.blocks.{j}.attention.self.{query,key,value}``
(packed into qkv, rows q, k, v), ``attention.output.dense``, ``layernorm_before/after``,
``intermediate.dense``, ``output.dense``, ``layernorm``; and the in-memory 5.x names
``attention.{q,k,v,o}_proj``, ``attention.relative_position_bias.relative_position_bias_table``,
``mlp.fc1/fc2``; a ``swin.`` prefix is stripped). Rules:

* the source blocks, in order (stage, then block), map onto ours in order (Swin-B's 24 onto the
  base encoder's 24); the source's PatchMerging layers, in order, onto our merges (after layers
  0, 1, 4 for the base encoder);
* the 2-D patch kernel [C, 3, 4, 4] becomes [C, 3, 1, 8, 8]: tiled 2×2 and divided by 4 (the
  authors' ``repeat(…, 2, 2) / 4``), so a frame whose every 8×8 patch is its 4×4 patch tiled
  2×2 embeds exactly as the 4×4 patch did. ``patch_inflation="nearest"`` repeats each kernel
  weight 2×2 instead (÷4), so a frame upsampled 2× (nearest) embeds exactly as the original;
* each 2-D relative-position table [(2w−1)², nH] is resized bicubically (align_corners=False)
  to the layer's spatial (2Wh−1)×(2Ww−1) and repeated for each of its 2Wt−1 time offsets, so
  the bias does not depend on the time offset (the authors' rule);
* the clip-feature head (``clip_merge``, ``clip_norm``; the release's ``local_feat_proj``,
  ``norm_local``) starts from the source merge mapped to our first merge after
  ``clip_feature_layer`` (Swin-B's third, 512→1024) and the final ``norm``, as the authors did;
* skipped: ``relative_position_index``, ``attn_mask``, the classifier (``head``,
  ``classifier``), ``mask_token`` and absolute position embeddings (Swin-B has none).

With T identical frames, attention over a window of Wt copies of the same tokens with a bias
independent of the time offset equals 2-D window attention (each key's weight is split evenly
over its copies), so the inflated encoder reproduces the 2-D Swin exactly on such input
(``tests/test_weights.py``).

**(b) BERT.** Text and cross-modal layers come from one BERT. By construction:
``TextEncoderConfig.model`` (a hub id or directory) loads it with ``AutoModel.from_pretrained``,
and the text encoder then initialises the paragraph position table (400 rows) from BERT's
position table (rows 0..399; tiled past BERT's end). ``load_bert_weights`` does the same for a
model built with random or meta weights, from a BERT / BertForPreTraining / BertForMaskedLM
state dict (``bert.`` prefix optional, old ``LayerNorm.gamma/beta`` names accepted): it loads
``text_encoder.bert.*`` (layers the model does not keep are skipped), re-initialises the
paragraph positions from the loaded table, and starts the MLM head from BERT's pretraining head
(``cls.predictions.*``; the decoder from the word embeddings when the checkpoint ties them).
BERT's next-sentence head is skipped: its labels (0 = is next) are not VTM's (1 = matched).

**(c) The authors' checkpoints** (microsoft/XPretrain LF-VILA: stage 1, stage 2, retrieval, QA
multiple-choice, QA classification; flat fp16 state dicts, no ``module.`` prefix — fp32, a
``module.`` prefix, and ``{"module"|"model"|"state_dict": ...}`` wrappers are accepted too).
Name rules (``OFFICIAL_KEY_MAP``, longest prefix wins; ours ← theirs):

    video_encoder.clip_merge.*              video_encoder.local_feat_proj.*
    video_encoder.clip_norm.*               video_encoder.norm_local.*
    video_encoder.*                         video_encoder.*
    text_encoder.bert.*                     text_encoder.bert.*
    text_encoder.paragraph_embedding.position_embeddings.*   sent_embedding.position_embeddings.*
                                            (rows 0..399 of 512; rows ≥ 400 are never read)
    text_encoder.paragraph_embedding.sentence_embeddings.*   sent_embedding.segment_embeddings.*
    text_encoder.paragraph_embedding.norm.* sent_embedding.norm.*
    fusion.video_tokens.spatial_embedding   video_token_pos.s_pos_embed
    fusion.video_tokens.temporal_embedding  video_token_pos.t_pos_embed
    fusion.video_tokens.norm.*              video_token_pos.norm.*
    fusion.video_tokens.input_proj.*        video_token_pos.input_proj.*  (ours only: a video
                                            encoder narrower than the text model; not in the release)
    projections.video.linear.*              video_global_proj.*
    projections.paragraph.linear.*          text_global_proj.*
    projections.clip.linear.*               video_local_proj.*
    projections.sentence.linear.*           text_local_proj.*
    mlm_head.transform.*                    text_encoder.cls.predictions.transform.*
    mlm_head.decoder.weight                 text_encoder.cls.predictions.decoder.weight
    mlm_head.bias                           text_encoder.cls.predictions.bias
    vtm_head.classifier.*                   text_encoder.seq_relationship.*
    multiple_choice_head.classifier.*       text_encoder.classifier.*   (multiple-choice model)
    classification_head.classifier.*        text_encoder.classifier.*   (classification model)
    multiple_choice_head.span_classifier.*  text_encoder.span_classifier.*

The release's clip head (``local_feat_proj``, ``norm_local``) was never trained (its forward
reset ``local_feat`` at every layer; docs/method.md §7): with ``video.clip_features="final"``
(the release's behaviour) those keys are *skipped* with that reason; with ``"intra"`` they are
loaded into ``clip_merge`` / ``clip_norm`` and the report notes that they are untrained (set
``clip_features: final`` to evaluate released weights).

Exclusions (``OFFICIAL_EXCLUSIONS``; skipped, never loaded): ``*.relative_position_index``
(index buffers, recomputed from the window), ``*.attn_mask`` (absent from the release; shift
masks are recomputed), ``text_encoder.bert.embeddings.position_ids`` / ``token_type_ids`` and
``sent_embedding.position_ids`` (index buffers), ``text_encoder.cls.predictions.decoder.bias``
(the same tensor as ``cls.predictions.bias``, saved twice), ``*.sparse_self_attention.master_layout``
(DeepSpeed sparse attention, not used by the released commands). Keys of parts the target model
does not have (e.g. ``cls``/``seq_relationship``/projections when a QA model loads a stage-2
file, layers 12–23 when a stage-1 model loads it) are *skipped* with that reason; the heads the
file lacks are *missing* and keep their fresh initialisation — what the authors' own
``strict=False`` loading did.

``export_official_state_dict`` writes the inverse: our weights under the release's names and
shapes (fp16 by default), with the position table padded back to BERT's 512 rows from BERT's
table (how the release initialised it), the tied MLM bias under both names and the index buffers
recomputed — the exact key set of the authors' files.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LfvilaError
from .video_encoder import VideoEncoderConfig, relative_position_index

log = logging.getLogger(__name__)

Source = Union[str, Path, Mapping[str, torch.Tensor]]


class WeightImportError(LfvilaError):
    """A checkpoint that cannot be read or does not fit the model (one line: file, key, shapes)."""


# ---------------------------------------------------------------------------------------------
# Report and reading
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did. Keys of ``loaded``/``missing`` are model keys, the others source keys."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # transformations applied

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors; {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.skipped)} skipped"
        )

    def log(self, logger: logging.Logger = log) -> None:
        logger.info(self.summary())
        for note in self.notes:
            logger.info("  %s", note)
        if self.missing:
            logger.warning("  missing (left as initialised): %s", _abbreviate(self.missing))
        if self.unexpected:
            logger.warning("  unexpected (no rule maps them): %s", _abbreviate(self.unexpected))
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            logger.info("  skipped %d: %s", count, reason)

    def check(self, allow_missing: Iterable[str] = ()) -> "ImportReport":
        """Raise unless nothing is unexpected and only keys matching ``allow_missing`` (regexes)
        are missing; returns self for chaining."""
        patterns = [re.compile(p) for p in allow_missing]
        missing = [k for k in self.missing if not any(p.search(k) for p in patterns)]
        if self.unexpected or missing:
            parts = []
            if missing:
                parts.append(f"{len(missing)} model keys missing ({_abbreviate(missing)})")
            if self.unexpected:
                parts.append(f"{len(self.unexpected)} unexpected keys ({_abbreviate(self.unexpected)})")
            raise WeightImportError(f"{self.source}: incomplete import: " + "; ".join(parts))
        return self


def _abbreviate(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … {len(keys) - limit} more" if len(keys) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def checkpoint_file(source: str | Path) -> Path:
    """The file ``read_state_dict`` reads for a path: the path itself, or in a directory
    ``model.safetensors`` then ``pytorch_model.bin`` (one-line error when there is none)."""
    path = Path(source)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise WeightImportError(f"{path}: directory holds neither model.safetensors nor pytorch_model.bin")
    if not path.is_file():
        raise WeightImportError(f"{path}: no such checkpoint file")
    return path


def read_state_dict(source: Source) -> tuple[dict[str, torch.Tensor], str]:
    """A flat {name: tensor} dict and a label for messages, from a mapping or a file.

    Files: ``*.safetensors`` through safetensors, anything else through
    ``torch.load(weights_only=True)`` (a pickle holding anything but tensors and plain
    containers is refused). A directory is searched for ``model.safetensors`` then
    ``pytorch_model.bin``. One ``{"module"|"model"|"state_dict": {...}}`` wrapper and a
    ``module.`` prefix on every key are removed.
    """
    if isinstance(source, Mapping):
        state, label = dict(source), "state dict"
    else:
        path = checkpoint_file(source)
        label = str(path)
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(str(path), device="cpu")
            except (SafetensorError, OSError) as exc:
                raise WeightImportError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                raise WeightImportError(
                    f"{path}: refused: the file holds objects other than tensors ({_first_line(exc)})"
                ) from None
            except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
                raise WeightImportError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, Mapping):
        raise WeightImportError(f"{label}: expected a mapping of tensors, got {type(state).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        wrapped = [k for k in ("module", "model", "state_dict") if isinstance(state.get(k), Mapping)]
        if not wrapped:
            raise WeightImportError(f"{label}: holds no state dict (keys: {_abbreviate(sorted(map(str, state)))})")
        state = dict(state[wrapped[0]])
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, label


def _load_into(
    module: nn.Module,
    converted: dict[str, tuple[str, torch.Tensor]],
    report: ImportReport,
    assign: Optional[bool],
) -> ImportReport:
    """Shape-check ``converted`` ({model key: (source key, tensor)}) and load it into ``module``."""
    own = module.state_dict()
    state = {}
    for key, (source_key, tensor) in converted.items():
        target = own[key]
        if tuple(tensor.shape) != tuple(target.shape):
            named = f"'{source_key}'" + (f" (for '{key}')" if source_key != key else "")
            raise WeightImportError(
                f"{report.source}: {named} has shape {list(tensor.shape)} in the checkpoint "
                f"but {list(target.shape)} in the model"
            )
        if tensor.is_floating_point() and tensor.dtype != target.dtype:
            tensor = tensor.to(target.dtype)
        state[key] = tensor
    if assign is None:
        assign = any(t.is_meta for t in own.values())
    module.load_state_dict(state, strict=False, assign=assign)
    report.loaded = sorted(state)
    report.missing = sorted(set(own) - set(state))
    return report


def _match(rules: Iterable[tuple[str, str]], key: str) -> Optional[str]:
    for pattern, reason in rules:
        if re.search(pattern, key):
            return reason
    return None


# ---------------------------------------------------------------------------------------------
# (a) Swin-2D -> HTWA video encoder
# ---------------------------------------------------------------------------------------------

# transformers' SwinModel names (on disk, and the 5.x in-memory names) -> the original release's.
_SWIN_BLOCK = r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\."
SWIN_HF_RENAMES: list[tuple[str, str]] = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (_SWIN_BLOCK + r"layernorm_before\.", r"layers.\1.blocks.\2.norm1."),
    (_SWIN_BLOCK + r"layernorm_after\.", r"layers.\1.blocks.\2.norm2."),
    (_SWIN_BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table$",
     r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_SWIN_BLOCK + r"attention\.(?:self\.)?(?:relative_position_bias\.)?relative_position_index$",
     r"layers.\1.blocks.\2.attn.relative_position_index"),
    (_SWIN_BLOCK + r"attention\.(?:self\.query|q_proj)\.", r"layers.\1.blocks.\2.attn.q."),
    (_SWIN_BLOCK + r"attention\.(?:self\.key|k_proj)\.", r"layers.\1.blocks.\2.attn.k."),
    (_SWIN_BLOCK + r"attention\.(?:self\.value|v_proj)\.", r"layers.\1.blocks.\2.attn.v."),
    (_SWIN_BLOCK + r"attention\.(?:output\.dense|o_proj)\.", r"layers.\1.blocks.\2.attn.proj."),
    (_SWIN_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (_SWIN_BLOCK + r"(?:output\.dense|mlp\.fc2)\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.layers\.(\d+)\.downsample\.", r"layers.\1.downsample."),
    (r"^layernorm\.", "norm."),
]

SWIN_EXCLUSIONS: list[tuple[str, str]] = [
    (r"\.relative_position_index$", "index buffer derived from the window size; recomputed"),
    (r"\.attn_mask$", "shifted-window mask buffer; recomputed"),
    (r"^(head|classifier)\.", "the ImageNet classifier has no counterpart"),
    (r"^(embeddings\.mask_token|mask_token)$", "masked-image-modelling token has no counterpart"),
    (r"^(absolute_pos_embed|embeddings\.position_embeddings)$", "absolute position embedding has no counterpart"),
]

_BLOCK_PARTS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                "mlp.fc2.weight", "mlp.fc2.bias")
_MERGE_PARTS = ("norm.weight", "norm.bias", "reduction.weight")


def canonical_swin2d(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Either Swin-2D layout -> the original release's names with packed qkv; plus skipped keys.

    Returns ({original-layout name: tensor}, {source key: reason skipped}).
    """
    canonical: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    separate: dict[str, dict[str, torch.Tensor]] = {}  # "layers.s.blocks.j.attn.{weight,bias}" -> {q,k,v}
    for key, tensor in state.items():
        name = key[len("swin."):] if key.startswith("swin.") else key
        for pattern, replacement in SWIN_HF_RENAMES:
            if re.search(pattern, name):
                name = re.sub(pattern, replacement, name)
                break
        reason = _match(SWIN_EXCLUSIONS, name)
        if reason is not None:
            skipped[key] = reason
            continue
        found = re.match(r"^(layers\.\d+\.blocks\.\d+\.attn)\.([qkv])\.(weight|bias)$", name)
        if found:
            separate.setdefault(f"{found[1]}.qkv.{found[3]}", {})[found[2]] = tensor
            continue
        canonical[name] = tensor
    for name, parts in separate.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightImportError(f"Swin checkpoint: {name} has only {sorted(parts)} of query/key/value")
        canonical[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # rows q, k, v
    return canonical, skipped


def inflate_patch_kernel(
    weight: torch.Tensor, patch_size: list[int], mode: Literal["tile", "nearest"] = "tile"
) -> torch.Tensor:
    """2-D patch kernel (C, in, ph', pw') -> (C, in, pt, ph, pw), ph / ph' and pw / pw' integers.

    "tile": the kernel repeated (ph/ph')×(pw/pw') times side by side (the authors' rule);
    "nearest": each weight repeated into a (ph/ph')×(pw/pw') block. Both divide by the number of
    copies (and by pt), so a constant patch gives the same response as in 2-D.
    """
    pt, ph, pw = patch_size
    fh, fw = ph // weight.shape[2], pw // weight.shape[3]
    if fh * weight.shape[2] != ph or fw * weight.shape[3] != pw:
        raise WeightImportError(
            f"Swin checkpoint: a {weight.shape[2]}x{weight.shape[3]} patch kernel cannot be inflated to "
            f"{ph}x{pw} (config key 'video.patch_size' must be an integer multiple)"
        )
    if mode == "tile":
        kernel = weight.repeat(1, 1, fh, fw)
    elif mode == "nearest":
        kernel = weight.repeat_interleave(fh, dim=2).repeat_interleave(fw, dim=3)
    else:
        raise ValueError(f"patch_inflation must be 'tile' or 'nearest', got {mode!r}")
    kernel = kernel / (fh * fw)
    return kernel.unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt  # (C, in, pt, ph, pw)


def inflate_relative_position_table(table: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """2-D table [(2w−1)², nH] -> 3-D table [(2Wt−1)(2Wh−1)(2Ww−1), nH]: bicubic resize to
    (2Wh−1)×(2Ww−1) (skipped when the size already matches), then the same plane for every
    time offset (rows t-major, as the model indexes them)."""
    rows, heads = table.shape
    side = math.isqrt(rows)
    if side * side != rows:
        raise WeightImportError(f"Swin checkpoint: relative_position_bias_table has {rows} rows, not a square window")
    wt, wh, ww = window
    size = (2 * wh - 1, 2 * ww - 1)
    plane = table.t().reshape(1, heads, side, side)  # (1, nH, 2w−1 (h), 2w−1 (w))
    if (side, side) != size:
        plane = F.interpolate(plane.float(), size=size, mode="bicubic", align_corners=False)
    plane = plane.reshape(heads, size[0] * size[1]).t()  # ((2Wh−1)(2Ww−1), nH), h-major
    return plane.repeat(2 * wt - 1, 1)


def inflate_swin2d(
    state: Mapping[str, torch.Tensor],
    config: VideoEncoderConfig,
    patch_inflation: Literal["tile", "nearest"] = "tile",
    label: str = "Swin checkpoint",
) -> tuple[dict[str, tuple[str, torch.Tensor]], ImportReport]:
    """Map a Swin-2D state dict (either layout) onto ``VideoEncoder(config)`` keys.

    Returns ({encoder key: (source key, tensor)}, report with skipped/unexpected/notes filled).
    """
    report = ImportReport(source=label)
    canonical, report.skipped = canonical_swin2d(state)
    used: set[str] = set()
    out: dict[str, tuple[str, torch.Tensor]] = {}

    def take(name: str, target: str, tensor: Optional[torch.Tensor] = None) -> None:
        if name not in canonical:
            return
        used.add(name)
        out[target] = (name, canonical[name] if tensor is None else tensor)

    source_blocks = sorted(
        {(int(m[1]), int(m[2])) for k in canonical if (m := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.", k))}
    )
    target_blocks = [(i, j) for i, depth in enumerate(config.depths) for j in range(depth)]
    if len(source_blocks) != len(target_blocks):
        raise WeightImportError(
            f"{label}: {len(source_blocks)} Swin blocks but the video encoder has {len(target_blocks)} "
            f"(config key 'video.depths' = {config.depths})"
        )
    source_merges = sorted({int(m[1]) for k in canonical if (m := re.match(r"^layers\.(\d+)\.downsample\.", k))})
    target_merges = sorted(config.merge_after)
    if len(source_merges) != len(target_merges):
        raise WeightImportError(
            f"{label}: {len(source_merges)} PatchMerging layers but the video encoder has {len(target_merges)} "
            f"(config key 'video.merge_after' = {config.merge_after})"
        )

    if "patch_embed.proj.weight" in canonical:
        weight = canonical["patch_embed.proj.weight"]
        take("patch_embed.proj.weight", "patch_embed.proj.weight", inflate_patch_kernel(weight, config.patch_size, patch_inflation))
        report.notes.append(
            f"patch_embed.proj.weight: {list(weight.shape[2:])} kernel {patch_inflation}-inflated to {config.patch_size}"
        )
    for part in ("patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias", "norm.weight", "norm.bias"):
        take(part, part)

    resized = set()
    for (s, j), (i, b) in zip(source_blocks, target_blocks):
        src, dst = f"layers.{s}.blocks.{j}.", f"layers.{i}.blocks.{b}."
        for part in _BLOCK_PARTS:
            take(src + part, dst + part)
        table = src + "attn.relative_position_bias_table"
        if table in canonical:
            window = (config.temporal_windows[i], *config.spatial_window)
            take(table, dst + "attn.relative_position_bias_table", inflate_relative_position_table(canonical[table], window))
            side = math.isqrt(canonical[table].shape[0])
            plane = f"{2 * window[1] - 1}x{2 * window[2] - 1}"
            how = f"{side}x{side} kept" if plane == f"{side}x{side}" else f"{side}x{side} resized (bicubic) to {plane}"
            resized.add(f"{how}, repeated for {2 * window[0] - 1} time offsets")
    if resized:
        report.notes.append("relative_position_bias_table: " + "; ".join(sorted(resized)))
    for s, i in zip(source_merges, target_merges):
        for part in _MERGE_PARTS:
            take(f"layers.{s}.downsample.{part}", f"layers.{i}.downsample.{part}")

    # Clip-feature head: the merge that follows the clip-feature layer, and the final norm (as the authors).
    after = [(s, i) for s, i in zip(source_merges, target_merges) if i >= config.clip_feature_layer]
    if config.clip_features == "intra" and after:
        s, i = after[0]
        clip_width = 2 * config.output_dim(config.clip_feature_layer)  # our clip_merge norm is 4C wide, 2C out
        source_norm = canonical.get(f"layers.{s}.downsample.norm.weight")
        if source_norm is not None and source_norm.shape[0] == 2 * clip_width:
            for part in _MERGE_PARTS:
                take(f"layers.{s}.downsample.{part}", f"clip_merge.{part}")
            report.notes.append(f"clip_merge <- layers.{s}.downsample (also our layers.{i}.downsample)")
        final = canonical.get("norm.weight")
        if final is not None and final.shape[0] == clip_width:
            take("norm.weight", "clip_norm.weight")
            take("norm.bias", "clip_norm.bias")
            report.notes.append("clip_norm <- norm (the final LayerNorm)")
    report.unexpected = sorted(set(canonical) - used)
    return out, report


def load_swin2d(
    encoder: nn.Module,
    source: Source,
    patch_inflation: Literal["tile", "nearest"] = "tile",
    assign: Optional[bool] = None,
) -> ImportReport:
    """Initialise a ``VideoEncoder`` from a Swin-2D checkpoint (file or state dict) per docs/method.md §2."""
    state, label = read_state_dict(source)
    converted, report = inflate_swin2d(state, encoder.config, patch_inflation, label)
    _load_into(encoder, converted, report, assign)
    report.log()
    return report


# ---------------------------------------------------------------------------------------------
# (b) BERT
# ---------------------------------------------------------------------------------------------

BERT_EXCLUSIONS: list[tuple[str, str]] = [
    (r"embeddings\.(position_ids|token_type_ids)$", "index buffer, not a weight"),
    (r"^cls\.predictions\.decoder\.bias$", "the same tensor as cls.predictions.bias"),
    (r"^cls\.seq_relationship\.", "BERT's next-sentence head: label 0 means 'is next', not VTM's 'mismatched'"),
]


def _paragraph_positions(model: nn.Module, table: torch.Tensor) -> torch.Tensor:
    """The text encoder's paragraph table initialised from a BERT position table (tiled past its end)."""
    embeddings = model.text_encoder.bert.embeddings
    padding_idx = getattr(embeddings, "padding_idx", None)
    start = padding_idx + 1 if padding_idx is not None else 0
    table = table[start:]
    rows = model.text_encoder.paragraph_embedding.position_embeddings.num_embeddings
    return table[torch.arange(rows, device=table.device) % table.shape[0]]


def resolve_pretrained_file(source: str | Path) -> Path:
    """A hub id or local directory/file of a ``transformers`` model -> its weight file.

    Hub ids resolve through the local Hugging Face cache (nothing is downloaded under
    HF_HUB_OFFLINE=1)."""
    path = Path(source)
    if path.exists():
        return path
    from transformers.utils import cached_file

    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            found = cached_file(str(source), name, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError) as exc:
            raise WeightImportError(f"{source}: cannot resolve BERT weights ({_first_line(exc)})") from None
        if found:
            return Path(found)
    raise WeightImportError(
        f"{source}: no model.safetensors or pytorch_model.bin (not a local path, and not in the "
        "Hugging Face cache or downloadable)"
    )


def load_bert_weights(
    model: nn.Module, source: Source, mlm_head: bool = True, assign: Optional[bool] = None
) -> ImportReport:
    """Load BERT weights into ``model.text_encoder.bert`` (and the MLM head), then initialise
    the paragraph position table from BERT's (see the module docstring, (b))."""
    if not isinstance(source, Mapping):
        source = resolve_pretrained_file(source)
    state, label = read_state_dict(source)
    report = ImportReport(source=label)
    own = model.state_dict()
    converted: dict[str, tuple[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        name = name[len("bert."):] if name.startswith("bert.") else name
        reason = _match(BERT_EXCLUSIONS, name)
        if reason is not None:
            report.skipped[key] = reason
            continue
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            target = "text_encoder.bert." + name
        elif name.startswith("cls.predictions."):
            rest = name[len("cls.predictions."):]
            target = "mlm_head." + rest
            if not mlm_head:
                report.skipped[key] = "MLM head not requested (mlm_head=False)"
                continue
        else:
            report.unexpected.append(key)
            continue
        if target in own:
            converted[target] = (key, tensor)
        else:
            reason = _absent_part(model, target)
            if reason is None:
                report.unexpected.append(key)
            else:
                report.skipped[key] = reason
    table_key = "text_encoder.bert.embeddings.position_embeddings.weight"
    if table_key in converted:
        source_key, table = converted[table_key]
        converted["text_encoder.paragraph_embedding.position_embeddings.weight"] = (
            source_key, _paragraph_positions(model, table)
        )
        report.notes.append("text_encoder.paragraph_embedding.position_embeddings.weight <- BERT's position table (docs/method.md §3)")
    decoder = "mlm_head.decoder.weight"
    word = "text_encoder.bert.embeddings.word_embeddings.weight"
    if mlm_head and decoder in own and decoder not in converted and "mlm_head.bias" in converted and word in converted:
        converted[decoder] = converted[word]
        report.notes.append("mlm_head.decoder.weight <- the word embeddings (tied in the checkpoint)")
    report.unexpected.sort()
    _load_into(model, converted, report, assign)
    report.log()
    return report


# ---------------------------------------------------------------------------------------------
# (c) The authors' LF-VILA checkpoints
# ---------------------------------------------------------------------------------------------

# (theirs, ours). A name ending in "." is a prefix; otherwise the whole name. Longest match wins;
# two rules for one name: the first whose target the model has.
OFFICIAL_KEY_MAP: list[tuple[str, str]] = [
    ("video_encoder.local_feat_proj.", "video_encoder.clip_merge."),
    ("video_encoder.norm_local.", "video_encoder.clip_norm."),
    ("video_encoder.", "video_encoder."),
    ("text_encoder.bert.", "text_encoder.bert."),
    ("sent_embedding.position_embeddings.", "text_encoder.paragraph_embedding.position_embeddings."),
    ("sent_embedding.segment_embeddings.", "text_encoder.paragraph_embedding.sentence_embeddings."),
    ("sent_embedding.norm.", "text_encoder.paragraph_embedding.norm."),
    ("video_token_pos.s_pos_embed", "fusion.video_tokens.spatial_embedding"),
    ("video_token_pos.t_pos_embed", "fusion.video_tokens.temporal_embedding"),
    ("video_token_pos.norm.", "fusion.video_tokens.norm."),
    # Ours only (video width != text width; never in the release, where both are 1024).
    ("video_token_pos.input_proj.", "fusion.video_tokens.input_proj."),
    ("video_global_proj.", "projections.video.linear."),
    ("text_global_proj.", "projections.paragraph.linear."),
    ("video_local_proj.", "projections.clip.linear."),
    ("text_local_proj.", "projections.sentence.linear."),
    ("text_encoder.cls.predictions.transform.", "mlm_head.transform."),
    ("text_encoder.cls.predictions.decoder.weight", "mlm_head.decoder.weight"),
    ("text_encoder.cls.predictions.bias", "mlm_head.bias"),
    ("text_encoder.seq_relationship.", "vtm_head.classifier."),
    ("text_encoder.classifier.", "multiple_choice_head.classifier."),
    ("text_encoder.classifier.", "classification_head.classifier."),
    ("text_encoder.span_classifier.", "multiple_choice_head.span_classifier."),
]

OFFICIAL_EXCLUSIONS: list[tuple[str, str]] = [
    (r"\.relative_position_index$", "index buffer derived from the window size; recomputed"),
    (r"\.attn_mask$", "shifted-window mask buffer; recomputed"),
    (r"^text_encoder\.bert\.embeddings\.(position_ids|token_type_ids)$", "index buffer, not a weight"),
    (r"^sent_embedding\.position_ids$", "index buffer, not a weight"),
    (r"^text_encoder\.cls\.predictions\.decoder\.bias$", "the same tensor as text_encoder.cls.predictions.bias"),
    (r"\.sparse_self_attention\.master_layout$", "DeepSpeed sparse-attention layout buffer (dense attention here)"),
]

PARAGRAPH_POSITIONS = "text_encoder.paragraph_embedding.position_embeddings.weight"

# The release's clip-feature head. Its forward reset ``local_feat`` at every layer, so MTC read
# the final-layer features and these weights never received a gradient (video_encoder.py).
RELEASE_CLIP_HEAD = ("video_encoder.local_feat_proj.", "video_encoder.norm_local.")
CLIP_HEAD_UNUSED = (
    "the release never used its clip head: its forward reset local_feat each layer "
    "(video.clip_features: final reads the final-layer features, as the release did)"
)
CLIP_HEAD_UNTRAINED = (
    "video_encoder.local_feat_proj.* / norm_local.* -> clip_merge / clip_norm: the release never "
    "trained these weights (its forward reset local_feat each layer, so MTC used the final-layer "
    "features); to evaluate released weights set video.clip_features: final"
)

# Top-level parts -> the config key that adds them (for "skipped" reasons).
_PART_KEYS = {
    "mlm_head.decoder": "heads.tie_mlm_decoder",
    "fusion": "fusion",
    "projections": "heads.projections",
    "mlm_head": "heads.mlm",
    "vtm_head": "heads.vtm",
    "multiple_choice_head": "heads.multiple_choice",
    "classification_head": "heads.num_labels",
}


def _rename(rules: list[tuple[str, str]], name: str) -> list[str]:
    """All candidate names for ``name`` under the longest matching rule(s)."""
    best, candidates = -1, []
    for src, dst in rules:
        hit = name.startswith(src) if src.endswith(".") else name == src
        if not hit:
            continue
        if len(src) > best:
            best, candidates = len(src), []
        if len(src) == best:
            candidates.append(dst + name[len(src):])
    return candidates


def _absent_part(model: nn.Module, key: str) -> Optional[str]:
    """Why ``key`` has no place in ``model`` if a part is deliberately absent, else None."""
    module, walked = model, []
    for part in key.split(".")[:-1]:
        walked.append(part)
        if isinstance(module, nn.ModuleList) and part.isdigit():
            if int(part) >= len(module):
                where = ".".join(walked[:-1])
                hint = " (config key 'text.keep_layers')" if where.endswith("encoder.layer") else ""
                return f"the model holds {len(module)} entries of {where}{hint}"
            module = module[int(part)]
            continue
        # A part left out by the config is None: registered as None, or a plain None attribute.
        child = module._modules[part] if part in module._modules else getattr(module, part, module)
        if child is module:
            return None
        if child is None:
            config_key = _PART_KEYS.get(".".join(walked)) or _PART_KEYS.get(walked[0], "heads")
            return f"the model has no {'.'.join(walked)} (config key '{config_key}')"
        module = child
    return None


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module, label: str = "state dict"
) -> tuple[dict[str, tuple[str, torch.Tensor]], ImportReport]:
    """The authors' names -> this model's keys (see the module docstring, (c))."""
    report = ImportReport(source=label)
    own = model.state_dict()
    converted: dict[str, tuple[str, torch.Tensor]] = {}
    video_config = getattr(getattr(model, "video_encoder", None), "config", None)
    clip_mode = getattr(video_config, "clip_features", None)
    for key, tensor in state.items():
        reason = _match(OFFICIAL_EXCLUSIONS, key)
        if reason is not None:
            report.skipped[key] = reason
            continue
        if key.startswith(RELEASE_CLIP_HEAD) and clip_mode == "final":
            report.skipped[key] = CLIP_HEAD_UNUSED
            continue
        candidates = _rename(OFFICIAL_KEY_MAP, key)
        if not candidates:
            report.unexpected.append(key)
            continue
        target = next((c for c in candidates if c in own), None)
        if target is None:
            reasons = [r for r in (_absent_part(model, c) for c in candidates) if r is not None]
            if len(reasons) == len(candidates):
                report.skipped[key] = reasons[0]
            else:
                report.unexpected.append(key)
            continue
        if target == PARAGRAPH_POSITIONS:
            rows = own[target].shape[0]
            if tensor.shape[0] > rows and tuple(tensor.shape[1:]) == tuple(own[target].shape[1:]):
                report.notes.append(
                    f"{key}: rows 0..{rows - 1} of {tensor.shape[0]} (the paragraph table here has "
                    f"max_sentences x max_tokens = {rows} rows; rows >= {rows} are never read)"
                )
                tensor = tensor[:rows]
        converted[target] = (key, tensor)
    if clip_mode == "intra" and any(source.startswith(RELEASE_CLIP_HEAD) for source, _ in converted.values()):
        report.notes.append(CLIP_HEAD_UNTRAINED)
    bias, twin = "text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.decoder.bias"
    if bias in state and twin in state and not (state[bias].is_meta or state[twin].is_meta):
        if not torch.equal(state[bias], state[twin]):
            report.notes.append(f"{twin} differs from {bias}; {bias} was used")
    report.unexpected.sort()
    return converted, report


def load_official_checkpoint(
    model: nn.Module, source: Source, strict: bool = False, assign: Optional[bool] = None, label: Optional[str] = None
) -> ImportReport:
    """Import one of the authors' released LF-VILA checkpoints into ``model`` (an LfvilaModel).

    ``strict``: raise unless every model key was loaded and no key was unexpected (skipped keys
    are fine). Shape mismatches always raise. ``label`` names an already-read state dict in
    messages (its file).

    The model then pools its video feature as the release did (``video.global_pooling:
    release``, recorded in its config and so in the config.json it is saved with): released
    weights compute the feature they were trained with (docs/method.md §7).
    """
    state, read_label = read_state_dict(source)
    label = label or read_label
    converted, report = convert_official_state_dict(state, model, label)
    _load_into(model, converted, report, assign)
    video_config = getattr(getattr(model, "config", None), "video", None)
    if video_config is not None and hasattr(video_config, "global_pooling"):
        video_config.global_pooling = "release"
        report.notes.append("video.global_pooling set to release: the video feature max-pools each frame's map (2×3, stride 1) first, as the release's")
    if not any(t.is_meta for t in state.values()):  # a shape-only (meta) source gives a shape-only model
        _materialise_after_load(model, report)
    report.log()
    if strict:
        report.check()
    return report


def _materialise_after_load(model: nn.Module, report: ImportReport) -> None:
    """After loading real tensors into a model built on meta: the parts the file lacks get real
    memory and their fresh initialisation; anything still on meta is refused."""
    from .lfvila import materialise_meta, meta_tensor_names

    if not meta_tensor_names(model):
        return
    real = next((t for t in (*model.parameters(), *model.buffers()) if not t.is_meta), None)
    device = real.device if real is not None else torch.device("cpu")
    fresh = materialise_meta(model, device)
    if fresh:
        report.notes.append(
            f"{len(fresh)} model tensors the file lacks got their fresh initialisation ({_abbreviate(fresh)})"
        )
    left = meta_tensor_names(model)
    if left:
        raise WeightImportError(
            f"{report.source}: {len(left)} model tensors are still on the meta device after the import "
            f"and have no initialisation rule ({_abbreviate(left)})"
        )


def export_official_state_dict(model: nn.Module, dtype: Optional[torch.dtype] = torch.float16) -> dict[str, torch.Tensor]:
    """This model's weights under the authors' names and shapes (fp16 by default, like theirs).

    The paragraph position table is padded back to BERT's row count with BERT's own rows (the
    release's initialisation; those rows are never read); the MLM bias is written under both of
    its release names; the index buffers are recomputed.
    """
    inverse = [(dst, src) for src, dst in OFFICIAL_KEY_MAP]
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in own.items():
        names = _rename(inverse, key)
        if not names:
            raise WeightImportError(f"export: no release name for model key '{key}'")
        if key == PARAGRAPH_POSITIONS:
            bert_table = own["text_encoder.bert.embeddings.position_embeddings.weight"]
            if bert_table.shape[0] > tensor.shape[0]:
                tensor = torch.cat([tensor, bert_table[tensor.shape[0]:].to(tensor.device)], dim=0)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[names[0]] = tensor
    if "text_encoder.cls.predictions.bias" in out:
        out["text_encoder.cls.predictions.decoder.bias"] = out["text_encoder.cls.predictions.bias"]
        if "text_encoder.cls.predictions.decoder.weight" not in out:  # tied decoder
            out["text_encoder.cls.predictions.decoder.weight"] = out["text_encoder.bert.embeddings.word_embeddings.weight"]
    positions = own["text_encoder.bert.embeddings.position_embeddings.weight"].shape[0]
    out["text_encoder.bert.embeddings.position_ids"] = torch.arange(positions)[None]
    out["sent_embedding.position_ids"] = torch.arange(out["sent_embedding.position_embeddings.weight"].shape[0])[None]
    video = model.video_encoder
    for i, layer in enumerate(video.layers):
        window = layer.table_window
        index = relative_position_index(window, window, torch.device("cpu"))
        for j in range(len(layer.blocks)):
            out[f"video_encoder.layers.{i}.blocks.{j}.attn.relative_position_index"] = index.clone()
    return out
