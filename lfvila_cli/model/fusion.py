"""Cross-modal (fusion) encoder: the upper BERT layers (12..23 of BERT-large) run single-stream
self-attention over [paragraph tokens ; video tokens] with one joint key mask (docs/method.md §3;
stage 2 and the QA tasks). Its pooled first token feeds the VTM and QA heads (``heads.py``).

Shapes: B batch, T frames, h×w the video encoder's final map, C its width, H the BERT width,
S = 2·3 = 6 video tokens per frame, Nt = 1 + M·L text tokens.

    CrossModalConfig     first_layer, num_layers, video_dim (C; None = H), max_frames (32),
                         the pooled grid (2×3), video_pooling
    CrossModalEncoder    text_states (B, Nt, H), text_mask (B, Nt), video_map (B, T, h, w, C)
                         -> ``CrossModalOutput``: sequence (B, Nt + T·S, H), pooled (B, H),
                         attention_mask (B, Nt + T·S); views text_states (B, Nt, H),
                         video_states (B, T·S, H), frame_states (B, T, H) (mean per frame)
    VideoTokenEmbedding  (B, T, h, w, C) -> (B, T, S, H): max-pool per frame, project C→H
                         (only when C ≠ H), + spatial (S) and temporal (T) embedding, LayerNorm
    Pooler               (B, N, H) -> (B, H): dense + tanh on the first token (only when the
                         BERT has no pooler of its own)
    adaptive_max_pool    ``F.adaptive_max_pool2d`` as one max per bin (exportable to ONNX)

Pooling. ``video_pooling="window"`` (default) is the authors' stride-1 ``MaxPool2d`` with
kernel ``(h-1, w-2)`` for a 2×3 grid, (2, 3) on the paper's 3×5 map (docs/method.md §3);
``"adaptive"`` is ``adaptive_max_pool2d`` (bins without overlap where they can). Maps smaller
than the grid always pool adaptively, which repeats cells.

Weight sharing. The BERT layers and pooler are *not* parameters of this module: it holds a
reference to the text encoder's ``bert`` (outside ``nn.Module`` registration), so the
weights are saved once, under the text encoder's names, as in the authors' checkpoints. The
owner of the text encoder must be part of the same model (``.to()``, ``state_dict()`` and
optimisers go through it). The layers and the pooler are called as modules, so hooks put on
them by their owner (e.g. DeepSpeed's) still run; ZeRO-2, the paper setting, needs none.

Parameter names here (prefix ``<this module>.``) against the authors' checkpoint keys:

    video_tokens.spatial_embedding   [1, 1, 6, H]    video_token_pos.s_pos_embed  [1, 1, 6, 1024]
    video_tokens.temporal_embedding  [1, 32, 1, H]   video_token_pos.t_pos_embed  [1, 32, 1, 1024]
    video_tokens.norm.{weight,bias}  (eps 1e-5)      video_token_pos.norm.{weight,bias}
    video_tokens.input_proj.*        (only if C≠H)   (none: C = H = 1024 there)
    (layers, pooler)                                 text_encoder.bert.encoder.layer.{12..23}.*,
                                                     text_encoder.bert.pooler.dense.*  (shared)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check
from ..errors import ConfigError
from .text_encoder import attention_bias, run_layer


# The spatial and temporal embeddings start at the scale of the tokens they are added to: the
# video encoder's final LayerNorm output, about unit standard deviation per channel. BERT starts
# its position table at the scale of its word embeddings (both 0.02); the release started these
# tables at 0.02 too, but beside unit-scale video features, where a frame's position was 2% of
# its token: the cross-modal encoder could barely tell frames apart by when they are, and the
# How2QA span head never left ln 2 (docs/method.md §7). Imported weights replace the start.
TOKEN_EMBEDDING_STD = 1.0


@dataclass
class CrossModalConfig:
    first_layer: int = 12  # first BERT layer of the cross-modal encoder
    num_layers: int | None = None  # None: every layer from first_layer to the top of the BERT
    video_dim: int | None = None  # C of the video encoder's final map; None = the text width H
    max_frames: int = 32  # rows of the temporal embedding
    pooled_height: int = 2
    pooled_width: int = 3
    video_pooling: Literal["window", "adaptive"] = "window"

    def __post_init__(self) -> None:
        check(self.first_layer >= 1, "first_layer", f"must be >= 1 (text layers come first), got {self.first_layer}")
        check(self.num_layers is None or self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        check(self.video_dim is None or self.video_dim >= 1, "video_dim", f"must be >= 1, got {self.video_dim}")
        check(self.max_frames >= 1, "max_frames", f"must be >= 1, got {self.max_frames}")
        check(self.pooled_height >= 1, "pooled_height", f"must be >= 1, got {self.pooled_height}")
        check(self.pooled_width >= 1, "pooled_width", f"must be >= 1, got {self.pooled_width}")

    @property
    def tokens_per_frame(self) -> int:
        return self.pooled_height * self.pooled_width


@dataclass
class CrossModalOutput:
    """Fusion outputs; the sequence is [text (text_length) ; video (num_frames × tokens_per_frame)]."""

    sequence: torch.Tensor  # (B, text_length + video_length, H)
    pooled: torch.Tensor  # (B, H) pooler(first token) -> VTM / QA heads
    attention_mask: torch.Tensor  # (B, text_length + video_length) bool, the joint key mask
    text_length: int  # 1 + M·L
    video_length: int  # T · tokens_per_frame
    num_frames: int  # T

    @property
    def text_states(self) -> torch.Tensor:
        """(B, 1 + M·L, H): the summary token and the text tokens (MLM reads these)."""
        return self.sequence[:, : self.text_length]

    @property
    def video_states(self) -> torch.Tensor:
        """(B, T·S, H): the video tokens, frame by frame, S = tokens per frame."""
        return self.sequence[:, self.text_length :]

    @property
    def frame_states(self) -> torch.Tensor:
        """(B, T, H): mean of each frame's video tokens (the QA span head reads these)."""
        video = self.video_states
        return video.reshape(video.shape[0], self.num_frames, -1, video.shape[-1]).mean(dim=2)


class Pooler(nn.Module):
    """BERT pooler (dense + tanh on the first token); used only when the BERT has none."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(sequence[:, 0]))


def adaptive_max_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d`` over (N, C, h, w) written as one max per bin (the same bins:
    rows ``[floor(i·h/oh), ceil((i+1)·h/oh))``, columns likewise). The bins come from the static
    map size, so the ONNX exporter traces it to slices and maxima: it cannot export
    ``adaptive_max_pool2d`` whose input size is symbolic (a dynamic batch), and ONNX has no
    adaptive pooling. Equal to ``F.adaptive_max_pool2d`` (tests/test_text_fusion_heads.py)."""
    height, width = x.shape[-2:]
    out_h, out_w = size

    def bins(n: int, out: int) -> list[tuple[int, int]]:
        return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]

    cells = [
        x[..., r0:r1, c0:c1].amax(dim=(-2, -1)) for r0, r1 in bins(int(height), out_h) for c0, c1 in bins(int(width), out_w)
    ]
    return torch.stack(cells, dim=-1).unflatten(-1, (out_h, out_w))


class VideoTokenEmbedding(nn.Module):
    """Final video map -> fusion tokens: max-pool per frame, project, + space/time embedding, LN.

    Authors' name: ``video_token_pos`` (``VideoTokenPos``), plus their ``video_downsample``
    (``MaxPool2d((2, 3), stride 1)``, no parameters).
    """

    def __init__(
        self,
        video_dim: int,
        hidden_size: int,
        max_frames: int = 32,
        pooled_height: int = 2,
        pooled_width: int = 3,
        pooling: Literal["window", "adaptive"] = "window",
    ) -> None:
        super().__init__()
        self.pooled = (pooled_height, pooled_width)
        self.pooling = pooling
        self.max_frames = max_frames
        self.input_proj = nn.Linear(video_dim, hidden_size) if video_dim != hidden_size else nn.Identity()
        tokens = pooled_height * pooled_width
        self.spatial_embedding = nn.Parameter(torch.empty(1, 1, tokens, hidden_size))
        self.temporal_embedding = nn.Parameter(torch.empty(1, max_frames, 1, hidden_size))
        self.norm = nn.LayerNorm(hidden_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The two embeddings: ``TOKEN_EMBEDDING_STD``·N(0, 1) (spatial, then temporal)."""
        for table in (self.spatial_embedding, self.temporal_embedding):
            table.copy_(TOKEN_EMBEDDING_STD * torch.randn(table.shape, device=table.device))

    def pool(self, video_map: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w, C) -> (B, T, S, C), S = pooled_height·pooled_width, cells row-major."""
        batch, frames, height, width, channels = video_map.shape
        x = video_map.permute(0, 1, 4, 2, 3).reshape(batch * frames, channels, height, width)
        out_h, out_w = self.pooled
        if self.pooling == "window" and height >= out_h and width >= out_w:
            x = F.max_pool2d(x, kernel_size=(height - out_h + 1, width - out_w + 1), stride=1)
        else:
            x = adaptive_max_pool(x, self.pooled)
        # (B·T, C, oh, ow) -> (B, T, oh·ow, C)
        return x.reshape(batch, frames, channels, out_h * out_w).transpose(2, 3)

    def forward(self, video_map: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w, C) final video map -> (B, T, S, H) video tokens."""
        frames = video_map.shape[1]
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames exceed max_frames={self.max_frames} of the temporal embedding")
        x = self.input_proj(self.pool(video_map))  # (B, T, S, H)
        x = x + self.spatial_embedding + self.temporal_embedding[:, :frames]
        return self.norm(x)


class CrossModalEncoder(nn.Module):
    """Single-stream fusion of paragraph and video tokens through the upper BERT layers."""

    def __init__(self, cfg: CrossModalConfig, bert: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        total = len(bert.encoder.layer)
        last = total if cfg.num_layers is None else cfg.first_layer + cfg.num_layers
        if cfg.first_layer >= total or last > total:
            raise ConfigError(
                f"config key 'first_layer': cross-modal layers [{cfg.first_layer}, {last}) do not fit "
                f"in a BERT of {total} layers (keep all layers of the text model for stage 2 and QA)"
            )
        self.layer_range = (cfg.first_layer, last)
        # A tuple keeps the shared BERT out of this module's parameters (see module docstring).
        self._shared_bert = (bert,)
        hidden = bert.config.hidden_size
        self.video_tokens = VideoTokenEmbedding(
            cfg.video_dim or hidden,
            hidden,
            max_frames=cfg.max_frames,
            pooled_height=cfg.pooled_height,
            pooled_width=cfg.pooled_width,
            pooling=cfg.video_pooling,
        )
        self.pooler = Pooler(hidden) if getattr(bert, "pooler", None) is None else None

    @property
    def bert(self) -> nn.Module:
        return self._shared_bert[0]

    def forward(
        self, text_states: torch.Tensor, text_mask: torch.Tensor, video_map: torch.Tensor
    ) -> CrossModalOutput:
        """Fuse text and video.

        text_states (B, Nt, H) and text_mask (B, Nt): the text encoder's ``token_states`` and
        ``token_mask`` (Nt = 1 + M·L). video_map (B, T, h, w, C): the video encoder's final map.
        For VTM negatives, shuffle ``video_map`` along B before calling.
        Returns ``CrossModalOutput`` with a (B, Nt + T·6, H) sequence and a (B, H) pooled vector.
        """
        video = self.video_tokens(video_map)  # (B, T, S, H)
        batch, frames, per_frame, hidden_size = video.shape
        video = video.reshape(batch, frames * per_frame, hidden_size)  # (B, T·S, H)
        hidden = torch.cat([text_states, video.to(text_states.dtype)], dim=1)  # (B, Nt + T·S, H)
        mask = torch.cat([text_mask.to(torch.bool), text_mask.new_ones(batch, frames * per_frame, dtype=torch.bool)], dim=1)
        bias = attention_bias(mask, hidden.dtype)
        first, last = self.layer_range
        for layer in self.bert.encoder.layer[first:last]:
            hidden = run_layer(layer, hidden, bias)
        pooler = self.pooler if self.pooler is not None else self.bert.pooler
        return CrossModalOutput(
            sequence=hidden,
            pooled=pooler(hidden),
            attention_mask=mask,
            text_length=text_states.shape[1],
            video_length=frames * per_frame,
            num_frames=frames,
        )
