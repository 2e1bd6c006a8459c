"""LF-VILA video encoder: a Swin-style 3-D transformer with HTWA, hierarchical temporal window
attention (docs/method.md §2): 3-D windows whose temporal extent doubles from layer to layer,
from a few frames of one clip up to the whole video. Where it departs from the paper or the
authors' release (clamped-window bias, global top layer, clip features, padding, pooling, input
checks): docs/method.md §7.

Shapes: B batch, T frames, H×W pixels, h×w the token map, C channels, nH heads, N tokens per
window, nW windows per sample, M = T / frames_per_clip clips.

    VideoEncoderConfig   sizes and windows (defaults: the paper's base model); ``check_frames(T)``
                         refuses a frame count the windows cannot tile (``InputShapeError``)
    VideoEncoder         frames (B, T, 3, H, W), ImageNet-normalised -> ``VideoEncoderOutput``:
                         tokens (B, T, h, w, C), global_feature (B, C) = mean of the final tokens
                         (``global_pooling: release``: the authors' max-pool first),
                         clip_features (B, M, C_clip), clip_tokens (B, T, h', w', C_clip)
    EncoderLayer         (B, T, h, w, C) -> same, or (B, T, ⌈h/2⌉, ⌈w/2⌉, 2C) after its merge:
                         ``depth`` blocks alternating plain and spatially shifted windows
    WindowBlock          pre-norm block: x + window attention, x + MLP (stochastic depth)
    WindowAttention3D    (B, T, h, w, C) -> same: attention inside (t, h, w) windows, learned
                         relative-position bias per head; three paths (``attention``): sdpa on
                         partitioned windows, flex (FlexAttention, block mask over the whole
                         map), dense (the explicit-mask reference)
    PatchEmbed3D         (B, 3, T, H, W) -> (B, T, H/8, W/8, C): 1×8×8 patches, LayerNorm
    PatchMerging         (B, T, h, w, C) -> (B, T, ⌈h/2⌉, ⌈w/2⌉, 2C): 2×2 concat, LN, linear
    window_partition / window_reverse   (B, T, h, w, C) <-> (B, nW, N, C)
    relative_position_index, window_mask   (N, N) bias-table index; (nW, N, N) blocked keys
    window_labels, dense_block_mask        (3, L) window of each token; (L, L) who sees whom
    flex_windows                           the flex path's window order and block mask

Read top to bottom: small pieces first, then window attention, a block, a layer, the encoder.

Parameter names (ours ← the authors' ``video_encoder.*`` keys; shapes are identical, so the
base preset has exactly the authors' 89,229,448 parameters):

    patch_embed.proj.{weight,bias}, patch_embed.norm.*       ← same names
    layers.{i}.blocks.{j}.norm1.*, .attn.qkv.*, .attn.proj.*,
        .attn.relative_position_bias_table, .norm2.*, .mlp.fc1.*, .mlp.fc2.*   ← same names
    layers.{i}.blocks.{j}.attn.relative_position_index      ← (buffer in the release; drop it)
    layers.{i}.downsample.{norm,reduction}.*                 ← same names (after layers 0, 1, 4)
    norm.*                                                   ← norm.*
    clip_merge.{norm,reduction}.*                            ← local_feat_proj.{norm,reduction}.*
    clip_norm.*                                              ← norm_local.*

``qkv`` is packed with rows in q, k, v order; bias tables are [(2Wt−1)(2Wh−1)(2Ww−1), nH] for
the nominal window of the layer, indexed as t·(2Wh−1)(2Ww−1) + h·(2Ww−1) + w after offsetting
each coordinate difference by W−1 — the Video-Swin layout. For Swin-B initialisation (docs/method.md §2)
its 24 blocks ``layers.{s}.blocks.{j}`` map in order onto our 24 blocks, its three
``layers.{s}.downsample`` onto ours after layers 0, 1 and 4.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import check
from ..errors import LfvilaError

Window = tuple[int, int, int]  # (t, h, w)

# Added to the logits of keys a query must not see. Finite, so that a padded query whose
# whole window is masked still gets a (discarded) finite row instead of NaN; exp(-1e4)
# underflows to exactly 0, so masked keys contribute nothing.
MASK_VALUE = -1.0e4


class InputShapeError(LfvilaError, ValueError):
    """Frames whose shape the encoder cannot take (frame count, resolution)."""


# ---------------------------------------------------------------------------------------------
# Config and output
# ---------------------------------------------------------------------------------------------


@dataclass
class VideoEncoderConfig:
    """The HTWA video encoder. Defaults are the paper's base model (docs/method.md §2 table)."""

    in_chans: int = 3
    patch_size: list[int] = field(default_factory=lambda: [1, 8, 8])  # (t, h, w); t must be 1
    embed_dim: int = 128
    depths: list[int] = field(default_factory=lambda: [2, 2, 14, 2, 2, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 16, 16, 32])
    temporal_windows: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 16, 32])
    spatial_window: list[int] = field(default_factory=lambda: [3, 5])  # (h, w), every layer
    merge_after: list[int] = field(default_factory=lambda: [0, 1, 4])  # PatchMerging after these
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.2  # stochastic depth, linear 0 → rate over all blocks
    frames_per_clip: int = 8
    global_top_layer: bool = True  # last layer attends over the whole video, any frame count
    clip_feature_layer: int = 2  # last intra-clip layer; feeds the clip-feature head
    clip_features: Literal["intra", "final"] = "intra"  # "final": the release's behaviour
    gradient_checkpointing: bool = False
    # "sdpa": windows partitioned, scaled_dot_product_attention; "flex": FlexAttention with a
    # block mask (GPUs; on CPU inference only); "dense": slow full-sequence reference;
    # "sdpa_per_sample": the sdpa path with its bias copied per sample, as before the broadcast
    # (a reference for tests and benchmarks)
    attention: Literal["sdpa", "flex", "dense", "sdpa_per_sample"] = "sdpa"
    # How the final tokens become global_feature: "mean" of all of them (models trained here), or
    # "release": each frame's map max-pooled with a (2, 3) window, stride 1, then the mean, as the
    # authors' wrapper computes it (set by the release importer; docs/method.md §7)
    global_pooling: Literal["mean", "release"] = "mean"

    def __post_init__(self) -> None:
        n = len(self.depths)
        check(self.in_chans >= 1, "in_chans", f"must be >= 1, got {self.in_chans}")
        check(
            len(self.patch_size) == 3 and all(p >= 1 for p in self.patch_size),
            "patch_size", f"expected 3 positive sizes (t, h, w), got {self.patch_size}",
        )
        check(
            self.patch_size[0] == 1, "patch_size",
            "the temporal patch size must be 1: one token per frame keeps clips aligned to windows",
        )
        check(self.embed_dim >= 1, "embed_dim", f"must be >= 1, got {self.embed_dim}")
        check(n >= 1 and all(d >= 1 for d in self.depths), "depths", f"expected positive block counts, got {self.depths}")
        for key in ("num_heads", "temporal_windows"):
            value = getattr(self, key)
            check(len(value) == n, key, f"expected one entry per layer ({n}, as in depths), got {value}")
        for i, (dim, heads) in enumerate(zip(self.layer_dims, self.num_heads)):
            check(heads >= 1 and dim % heads == 0, "num_heads", f"layer {i}: width {dim} is not divisible by {heads} heads")
        check(
            len(self.spatial_window) == 2 and all(w >= 1 for w in self.spatial_window),
            "spatial_window", f"expected 2 positive sizes (h, w), got {self.spatial_window}",
        )
        check(
            all(0 <= i < n for i in self.merge_after) and len(set(self.merge_after)) == len(self.merge_after),
            "merge_after", f"expected distinct layer indices in 0..{n - 1}, got {self.merge_after}",
        )
        check(self.mlp_ratio > 0, "mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        check(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        fpc = self.frames_per_clip
        check(fpc >= 1, "frames_per_clip", f"must be >= 1, got {fpc}")
        for i, w in enumerate(self.temporal_windows):
            # Windows must tile clips exactly: inside one clip, or a whole number of clips.
            ok = w >= 1 and (fpc % w == 0 if w <= fpc else w % fpc == 0)
            check(
                ok, "temporal_windows",
                f"layer {i}: a window of {w} frames must divide frames_per_clip={fpc} or be a multiple of it",
            )
        check(self.global_pooling in ("mean", "release"), "global_pooling", f"expected mean or release, got {self.global_pooling!r}")
        if self.attention == "flex":
            missing = flex_attention_missing()
            check(missing is None, "attention", f"flex: {missing}; use sdpa")
        k = self.clip_feature_layer
        check(0 <= k < n, "clip_feature_layer", f"expected a layer index in 0..{n - 1}, got {k}")
        check(
            all(w <= fpc for w in self.temporal_windows[: k + 1])
            and not (self.global_top_layer and k == n - 1),
            "clip_feature_layer",
            f"layer {k} and all below it must stay inside one clip (temporal window <= {fpc} frames)",
        )

    # Derived values (computed, never stored).

    @property
    def num_layers(self) -> int:
        return len(self.depths)

    @property
    def layer_dims(self) -> list[int]:
        """Width of each layer's blocks; a PatchMerging doubles it for the next layer."""
        dims, dim = [], self.embed_dim
        for i in range(len(self.depths)):
            dims.append(dim)
            if i in self.merge_after:
                dim *= 2
        return dims

    def output_dim(self, layer: int) -> int:
        """Width of a layer's output (after its PatchMerging, if any)."""
        return self.layer_dims[layer] * (2 if layer in self.merge_after else 1)

    @property
    def num_features(self) -> int:
        """Width C of the final tokens and of ``global_feature``."""
        return self.output_dim(self.num_layers - 1)

    @property
    def clip_feature_dim(self) -> int:
        """Width C_clip of ``clip_features``."""
        if self.clip_features == "final":
            return self.num_features
        return 2 * self.output_dim(self.clip_feature_layer)

    def temporal_window(self, layer: int, frames: int) -> int:
        """The temporal window a layer actually uses for a video of ``frames`` frames."""
        if self.global_top_layer and layer == self.num_layers - 1:
            return frames
        return min(self.temporal_windows[layer], frames)

    def frames_allowed(self, frames: int) -> bool:
        """Whether the windows tile a video of ``frames`` frames exactly.

        Allowed: a positive multiple of ``frames_per_clip`` that every non-global temporal
        window either divides or covers entirely (then the window shrinks to the video).
        """
        if frames < 1 or frames % self.frames_per_clip:
            return False
        last = self.num_layers - 1
        return all(
            frames <= w or frames % w == 0
            for i, w in enumerate(self.temporal_windows)
            if not (self.global_top_layer and i == last)
        )

    def check_frames(self, frames: int) -> None:
        """Raise ``InputShapeError`` naming the frame counts nearby that would work."""
        if self.frames_allowed(frames):
            return
        if frames < 1 or frames % self.frames_per_clip:
            why = f"it is not a positive multiple of frames_per_clip={self.frames_per_clip}"
        else:
            last = self.num_layers - 1
            i, w = next(
                (i, w) for i, w in enumerate(self.temporal_windows)
                if not (self.global_top_layer and i == last) and frames > w and frames % w
            )
            why = f"layer {i}'s temporal window of {w} frames neither divides nor covers it"
        nearby = [t for t in range(1, 4 * max(frames, max(self.temporal_windows)) + 1) if self.frames_allowed(t)]
        nearby = sorted(nearby, key=lambda t: (abs(t - frames), t))[:4]
        raise InputShapeError(
            f"video encoder: cannot take {frames} frames: {why}; nearest allowed frame counts: "
            + ", ".join(map(str, sorted(nearby)))
        )


@dataclass
class VideoEncoderOutput:
    """What the encoder returns.

    tokens:         (B, T, h, w, C)   final tokens after the last LayerNorm
    global_feature: (B, C)            mean of all final tokens (video-paragraph contrast)
    clip_features:  (B, M, C_clip)    one feature per clip of ``frames_per_clip`` frames (MTC)
    clip_tokens:    (B, T, h', w', C_clip) the map ``clip_features`` averages
    """

    tokens: torch.Tensor
    global_feature: torch.Tensor
    clip_features: torch.Tensor
    clip_tokens: Optional[torch.Tensor] = None


# ---------------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples, rescale the survivors."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed3D(nn.Module):
    """Non-overlapping (1, 8, 8) patches → C channels, then LayerNorm. No temporal down-sampling."""

    def __init__(self, patch_size: list[int], in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, 3, T, H, W) -> (B, C, T, H/8, W/8)
        x = x.permute(0, 2, 3, 4, 1)  # (B, T, h, w, C)
        return self.norm(x)


class PatchMerging(nn.Module):
    """2×2 spatial neighbours → concat (4C) → LayerNorm → Linear 4C→2C (no bias); time untouched.

    Odd maps are zero-padded at the bottom/right first (Swin's convention). The concat order
    (x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]) is Swin's, which pretrained
    ``norm``/``reduction`` weights depend on.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2], x.shape[3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # (B, T, H+H%2, W+W%2, C)
        x = torch.cat(
            [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1
        )  # (B, T, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, T, H/2, W/2, 2C)


# ---------------------------------------------------------------------------------------------
# Window bookkeeping: partition, relative positions, masks
# ---------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: Window) -> torch.Tensor:
    """(B, T, H, W, C) with T, H, W multiples of the window -> (B, nW, N, C)."""
    B, T, H, W, C = x.shape
    wt, wh, ww = window
    x = x.reshape(B, T // wt, wt, H // wh, wh, W // ww, ww, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T/wt, H/wh, W/ww, wt, wh, ww, C)
    return x.reshape(B, -1, wt * wh * ww, C)  # (B, nW, N, C)


def window_reverse(windows: torch.Tensor, window: Window, size: Window) -> torch.Tensor:
    """(B, nW, N, C) -> (B, T, H, W, C); the inverse of ``window_partition``."""
    B, C = windows.shape[0], windows.shape[-1]
    T, H, W = size
    wt, wh, ww = window
    x = windows.reshape(B, T // wt, H // wh, W // ww, wt, wh, ww, C)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, T/wt, wt, H/wh, wh, W/ww, ww, C)
    return x.reshape(B, T, H, W, C)


def offsets_to_table_index(offsets, table_window: Window) -> torch.Tensor:
    """(3, ...) coordinate differences (t, h, w) -> index into a (2Wt−1)(2Wh−1)(2Ww−1) table.

    Offsets beyond the table's reach are clamped to its edge; inside the model this happens only
    on the time axis of a global top layer that is longer than its table. ``offsets`` may also be
    a sequence of three equally shaped tensors: the flex path's score modification calls this on
    scalar indices, hence elementwise arithmetic with Python-number limits only (no tensor made
    inside what torch.compile turns into a kernel).
    """
    shifted = [offsets[a].clamp(1 - w, w - 1) + (w - 1) for a, w in enumerate(table_window)]  # in [0, 2W−2]
    _, Wh, Ww = table_window
    return shifted[0] * (2 * Wh - 1) * (2 * Ww - 1) + shifted[1] * (2 * Ww - 1) + shifted[2]


def grid_coords(size: Window) -> torch.Tensor:
    """(3, T·H·W) coordinates of a T×H×W grid in row-major (t, h, w) order."""
    axes = [torch.arange(s) for s in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)


def _cached(fn):
    """Memoise a tensor-building function. Built outside inference mode: a cached inference
    tensor used later in training would raise "Inference tensors cannot be saved for backward"."""
    cached = functools.lru_cache(maxsize=64)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        with torch.inference_mode(False):
            return cached(*args)

    wrapper.cache_clear = cached.cache_clear
    return wrapper


@_cached
def relative_position_index(window: Window, table_window: Window, device: torch.device) -> torch.Tensor:
    """(N, N) table index for the offset of query i from key j inside an actual ``window``.

    The window may be smaller than ``table_window`` (clamped to a small map): its own offsets
    are used (docs/method.md §7), not the corner of the full window's index.
    """
    coords = grid_coords(window)  # (3, N)
    offsets = coords[:, :, None] - coords[:, None, :]  # (3, N, N)
    return offsets_to_table_index(offsets, table_window).to(device)


@_cached
def window_mask(size: Window, window: Window, shift: Window, device: torch.device) -> Optional[torch.Tensor]:
    """Keys each query must not see in the windowed path: (nW, N, N) bool, or None if none.

    Swin's shifted-window mask, built in rolled coordinates: along an axis with a shift s, the
    last window holds two pieces that were not neighbours before the roll ([Lp−w, Lp−s) and the
    wrapped [Lp−s, Lp)), so tokens of different pieces must not attend. Padded keys (the map
    padded up to a window multiple) are masked too, so padding never changes a real token.
    """
    padded = [math.ceil(s / w) * w for s, w in zip(size, window)]
    if padded == list(size) and not any(shift):
        return None
    region = torch.zeros(padded, dtype=torch.long)  # region id per token, rolled coordinates
    for axis, (length, w, s) in enumerate(zip(padded, window, shift)):
        if s == 0:
            continue
        ids = torch.zeros(length, dtype=torch.long)
        ids[length - w: length - s] = 1
        ids[length - s:] = 2
        region = region * 3 + ids.view([-1 if a == axis else 1 for a in range(3)])
    real = torch.zeros(padded, dtype=torch.bool)
    real[: size[0], : size[1], : size[2]] = True
    real = torch.roll(real, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    region = window_partition(region[None, ..., None], window)[0, ..., 0]  # (nW, N)
    real = window_partition(real[None, ..., None], window)[0, ..., 0]  # (nW, N)
    blocked = (region[:, :, None] != region[:, None, :]) | ~real[:, None, :]  # (nW, N, N)
    return blocked.to(device)


def window_labels(size: Window, window: Window, shift: Window) -> torch.Tensor:
    """(3, L) per axis, the (shifted) window each token of a T×H×W map falls in, row-major order.

    Derived independently of rolling and padding: shifted by s, the windows along an axis are
    [s + k·w, s + (k+1)·w) in the original coordinates (k may be −1, the wrapped piece), so a
    token at p is in window ⌊(p − s) / w⌋. On a map that is not a window multiple the last window
    is cut short, as the windowed path's padded keys are masked.
    """
    coords = grid_coords(size)  # (3, L)
    w = torch.tensor(window).view(3, 1)
    s = torch.tensor(shift).view(3, 1)
    return torch.div(coords - s, w, rounding_mode="floor")  # (3, L)


def dense_block_mask(size: Window, window: Window, shift: Window) -> torch.Tensor:
    """The same attention pattern over the whole map: (L, L) bool, True where i may see j, i.e.
    where the two tokens' ``window_labels`` agree on every axis."""
    label = window_labels(size, window, shift)  # (3, L)
    return (label[:, :, None] == label[:, None, :]).all(0)  # (L, L)


# FlexAttention's tile: the block mask says, per tile of FLEX_BLOCK queries × FLEX_BLOCK keys,
# whether it is skipped, computed with the mask (partial) or computed without it (full).
FLEX_BLOCK = 128


class FlexAttentionUnavailable(LfvilaError, RuntimeError):
    """``attention: flex`` asked for where FlexAttention cannot run."""


def flex_attention_missing() -> Optional[str]:
    """Why ``attention: flex`` cannot run with the installed torch, or None if it can."""
    import importlib.util

    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (it needs torch >= 2.5)"
    return None


@functools.cache
def flex_attention_kernel(device_type: str):
    """FlexAttention for a device: compiled on CUDA, where only the compiled form is the fused
    block-sparse kernel (eager FlexAttention computes every score); eager elsewhere, where torch
    offers no backward anyway (docs/engineering.md §3)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if device_type == "cuda" else flex_attention


@dataclass(frozen=True)
class FlexWindows:
    """One layer's (shifted) windows as the flex path sees them (``flex_windows``).

    The map's L tokens are reordered so that each window is a contiguous run: a tile of
    FLEX_BLOCK queries then meets one or two runs of keys, which makes the block mask sparse
    (in row-major order a window's tokens spread over whole frames). ``coords`` and
    ``window_id`` are padded to whole tiles (window −1), so no kernel reads past their end.
    """

    order: torch.Tensor  # (L,) map token at each position of the window-ordered sequence
    restore: torch.Tensor  # (L,) the inverse permutation
    coords: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (t, h, w) of each position, (L_tiles,) each
    window_id: torch.Tensor  # (L_tiles,) the window of each position
    block_mask: object  # torch's BlockMask over (L, L)


@_cached
def flex_windows(size: Window, window: Window, shift: Window, device: torch.device) -> FlexWindows:
    """The window order, coordinates and block mask of a T×H×W map (``FlexWindows``).

    The same windows as ``dense_block_mask``; the block mask is built from the windows directly,
    in O(L + tiles²), instead of from an evaluated (L, L) mask (gigabytes at the base preset).
    """
    from torch.nn.attention.flex_attention import BlockMask

    labels = window_labels(size, window, shift) + 1  # (3, L), >= 0: the wrapped piece is −1
    counts = labels.amax(dim=1) + 1
    window_id = (labels[0] * counts[1] + labels[1]) * counts[2] + labels[2]  # (L,)
    order = torch.argsort(window_id, stable=True)  # windows contiguous, row-major inside each
    window_id = window_id[order]
    L = window_id.numel()
    tiles = math.ceil(L / FLEX_BLOCK)
    pad = tiles * FLEX_BLOCK - L

    # Window ids are sorted, so a tile holds the windows first..last and two tiles share a
    # window iff those ranges overlap; a pair of tiles inside one and the same window is full.
    starts = torch.arange(tiles) * FLEX_BLOCK
    ends = torch.clamp(starts + FLEX_BLOCK, max=L)  # exclusive
    first, last = window_id[starts], window_id[ends - 1]
    shares = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])  # (tiles, tiles)
    whole = (first == last) & (ends - starts == FLEX_BLOCK)
    full = whole[:, None] & whole[None, :] & (first[:, None] == first[None, :])
    partial = shares & ~full

    def kv_blocks(tile_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (tiles, tiles) bool -> (1, 1, tiles) counts and (1, 1, tiles, tiles) key-tile indices,
        # the tiles to compute first in each row, as torch's create_block_mask lays them out.
        num = tile_mask.sum(dim=-1, dtype=torch.int32)
        indices = torch.argsort((~tile_mask).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
        return num[None, None].to(device), indices[None, None].to(device)

    padded_id = torch.cat([window_id, window_id.new_full((pad,), -1)]).to(device)
    coords = grid_coords(size)[:, order]  # (3, L)
    coords = torch.cat([coords, coords.new_zeros(3, pad)], dim=1).to(device)

    def same_window(b, h, q, kv):
        return padded_id[q] == padded_id[kv]

    block_mask = BlockMask.from_kv_blocks(
        *kv_blocks(partial), *kv_blocks(full),
        BLOCK_SIZE=FLEX_BLOCK, mask_mod=same_window, seq_lengths=(L, L),
    )
    return FlexWindows(order.to(device), torch.argsort(order).to(device), tuple(coords.unbind(0)), padded_id, block_mask)


# ---------------------------------------------------------------------------------------------
# Attention, block, layer
# ---------------------------------------------------------------------------------------------


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3-D windows with a learned relative-position bias.

    ``table_window`` is the layer's nominal window (Wt, Wh, Ww); it fixes the bias table,
    [(2Wt−1)(2Wh−1)(2Ww−1), nH]. The window actually used per call may be smaller (clamped to
    the map) or, for a global top layer, longer in time.
    """

    def __init__(self, dim: int, num_heads: int, table_window: Window, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.table_window = table_window
        Wt, Wh, Ww = table_window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * Wt - 1) * (2 * Wh - 1) * (2 * Ww - 1), num_heads)
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # The bias table is drawn by the encoder's init pass (``VideoEncoder._init_weights``),
        # after the linear layers, as the release did: not here.

    def reset_parameters(self) -> None:
        """The bias table: truncated normal, std 0.02 (the release's init)."""
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, window: Window) -> torch.Tensor:
        """(nH, N, N) bias for query i, key j of an actual window."""
        index = relative_position_index(window, self.table_window, self.relative_position_bias_table.device)
        N = index.shape[0]
        bias = self.relative_position_bias_table[index.view(-1)].view(N, N, self.num_heads)
        return bias.permute(2, 0, 1)  # (nH, N, N)

    def forward(self, x: torch.Tensor, window: Window, shift: Window, impl: str = "sdpa") -> torch.Tensor:
        """(B, T, H, W, C) normalised map -> (B, T, H, W, C) attention output (after proj)."""
        if impl == "dense":
            return self.forward_dense(x, window, shift)
        if impl == "flex":
            return self.forward_flex(x, window, shift)
        B, T, H, W, C = x.shape
        pad = [(-n) % w for n, w in zip((T, H, W), window)]
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))  # (B, Tp, Hp, Wp, C)
        padded = (T + pad[0], H + pad[1], W + pad[2])
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        x = window_partition(x, window)  # (B, nW, N, C)
        nW, N, nH, hd = x.shape[1], x.shape[2], self.num_heads, self.head_dim

        qkv = self.qkv(x).view(B, nW, N, 3, nH, hd)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, nH, N, hd)
        attn_bias = self.relative_position_bias(window)[None]  # (1, nH, N, N): the same in every window
        blocked = window_mask((T, H, W), window, shift, x.device)
        # Fused SDPA kernels take 4-D inputs only, and the bias must broadcast over the batch,
        # never be copied per sample (docs/engineering.md §3): a bias shared by all windows
        # pairs with q/k/v (B·nW, nH, N, hd); a shift/pad mask differs per window, so the windows
        # fold into the head axis, q/k/v (B, nW·nH, N, hd) against a (1, nW·nH, N, N) bias.
        fold = 1
        if blocked is not None:
            attn_bias = attn_bias + blocked[:, None].to(attn_bias.dtype) * MASK_VALUE  # (nW, nH, N, N)
            if impl == "sdpa_per_sample":  # the reference: the bias copied for every sample
                attn_bias = attn_bias.expand(B, -1, -1, -1, -1).reshape(B * nW, nH, N, N)
            else:
                fold = nW
        # Folding copies q/k/v (nW and nH are not adjacent in memory): the copies go straight into
        # SDPA, so that none outlives it.
        out = F.scaled_dot_product_attention(
            *(t.reshape(B * nW // fold, fold * nH, N, hd) for t in (q, k, v)),
            attn_mask=attn_bias.reshape(-1, fold * nH, N, N).to(q.dtype), scale=self.scale,
        )  # (B·nW/fold, fold·nH, N, hd)
        out = out.reshape(B, nW, nH, N, hd).transpose(2, 3).reshape(B, nW, N, C)  # (B, nW, N, nH·hd)
        out = self.proj(out)

        out = window_reverse(out, window, padded)  # (B, Tp, Hp, Wp, C)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        return out[:, :T, :H, :W]

    def forward_dense(self, x: torch.Tensor, window: Window, shift: Window) -> torch.Tensor:
        """Reference: softmax(QKᵀ·scale + bias + mask)V over the whole map, explicit (L, L) mask.

        O(L²) memory and time; for tests and the benchmark only.
        """
        B, T, H, W, C = x.shape
        L = T * H * W
        coords = grid_coords((T, H, W)).to(x.device)  # (3, L)
        index = offsets_to_table_index(coords[:, :, None] - coords[:, None, :], self.table_window)  # (L, L)
        bias = self.relative_position_bias_table[index.view(-1)].view(L, L, self.num_heads).permute(2, 0, 1)
        allowed = dense_block_mask((T, H, W), window, shift).to(x.device)  # (L, L)

        qkv = self.qkv(x.reshape(B, L, C)).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nH, L, hd)
        logits = (q @ k.transpose(-2, -1)) * self.scale + bias  # (B, nH, L, L)
        logits = logits.masked_fill(~allowed, float("-inf"))  # every query sees itself: no empty rows
        out = logits.softmax(dim=-1) @ v  # (B, nH, L, hd)
        out = out.transpose(1, 2).reshape(B, T, H, W, C)
        return self.proj(out)

    def forward_flex(self, x: torch.Tensor, window: Window, shift: Window) -> torch.Tensor:
        """FlexAttention over the whole map: the windows as a block mask, the bias as a score
        modification (its table gets gradients through it). No padding, no roll: the mask cuts
        windows exactly where the windowed path's padding and shift mask do. docs/method.md §2.
        """
        B, T, H, W, C = x.shape
        L = T * H * W
        windows = flex_windows((T, H, W), window, shift, x.device)
        x = x.reshape(B, L, C)[:, windows.order]  # (B, L, C), each window contiguous
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nH, L, hd)

        table, table_window = self.relative_position_bias_table, self.table_window
        t, h, w = windows.coords

        def add_bias(score, b, head, q_idx, kv_idx):
            offsets = (t[q_idx] - t[kv_idx], h[q_idx] - h[kv_idx], w[q_idx] - w[kv_idx])
            return score + table[offsets_to_table_index(offsets, table_window), head]

        try:
            out = flex_attention_kernel(x.device.type)(
                q, k, v, score_mod=add_bias, block_mask=windows.block_mask, scale=self.scale
            )  # (B, nH, L, hd)
        except NotImplementedError as exc:
            # torch refuses some device/mode pairs this way (on the CPU: the backward); say so in
            # one line naming the setting
            raise FlexAttentionUnavailable(f"video encoder, attention: flex on {x.device.type}: {exc} (attention: sdpa runs everywhere)") from exc
        out = out.transpose(1, 2).reshape(B, L, C)[:, windows.restore]  # (B, L, C), map order
        return self.proj(out.view(B, T, H, W, C))


class WindowBlock(nn.Module):
    """Pre-norm transformer block: x + (window attention), then x + MLP, each with DropPath."""

    def __init__(self, dim: int, num_heads: int, table_window: Window, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, table_window, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, window: Window, shift: Window, impl: str) -> torch.Tensor:
        """(B, T, H, W, C) -> (B, T, H, W, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), window, shift, impl))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class EncoderLayer(nn.Module):
    """One HTWA layer: ``depth`` blocks on a fixed window (plain, shifted, plain, …), then an
    optional PatchMerging.

    The temporal window is ``table_window[0]`` frames, or the whole video for a global layer;
    spatially the window is clamped to the map. Odd blocks shift by ⌊window/2⌋ in space only —
    never in time, so the intra-clip layers never mix clips — and not along an axis the window
    already covers.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        table_window: Window,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: list[float],
        merge: bool,
        is_global: bool,
    ):
        super().__init__()
        self.table_window = table_window
        self.is_global = is_global
        self.blocks = nn.ModuleList(
            WindowBlock(dim, num_heads, table_window, mlp_ratio, qkv_bias, drop_path[j]) for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if merge else None

    def window_and_shift(self, size: Window) -> tuple[Window, Window]:
        """The window used on a T×H×W map and the spatial shift of the shifted blocks."""
        T, H, W = size
        Wt, Wh, Ww = self.table_window
        window = (T if self.is_global else min(Wt, T), min(Wh, H), min(Ww, W))
        shift = (0, Wh // 2 if H > Wh else 0, Ww // 2 if W > Ww else 0)
        return window, shift

    def forward(self, x: torch.Tensor, impl: str = "sdpa", use_checkpoint: bool = False) -> torch.Tensor:
        """(B, T, H, W, C) -> (B, T, H, W, C), or (B, T, ⌈H/2⌉, ⌈W/2⌉, 2C) after a merge."""
        window, shift = self.window_and_shift(tuple(x.shape[1:4]))
        for j, block in enumerate(self.blocks):
            block_shift = shift if j % 2 else (0, 0, 0)
            if use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, window, block_shift, impl, use_reentrant=False)
            else:
                x = block(x, window, block_shift, impl)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


RELEASE_POOL = (2, 3)  # the authors' wrapper: MaxPool2d((2, 3), stride 1) on each frame's final map


def release_global_feature(tokens: torch.Tensor) -> torch.Tensor:
    """The authors' video feature: (B, T, h, w, C) final tokens -> (B, C), each frame's map
    max-pooled with a (2, 3) window at stride 1 (3×5 -> 2×3 on the paper's map), then the mean of
    every pooled cell of every frame. A map smaller than the window pools with the window clamped
    to it (lfvila-tiny's 1×2 map: one max per frame); the release never met one."""
    B, T, h, w, C = tokens.shape
    kernel = (min(RELEASE_POOL[0], h), min(RELEASE_POOL[1], w))
    x = tokens.permute(0, 1, 4, 2, 3).reshape(B * T, C, h, w)
    pooled = F.max_pool2d(x, kernel_size=kernel, stride=1)  # (B·T, C, h', w')
    return pooled.reshape(B, T, C, -1).mean(dim=(1, 3))


# ---------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------


class VideoEncoder(nn.Module):
    """HTWA video encoder: patch embedding, the windowed layers, final LayerNorm, a clip head."""

    def __init__(self, config: VideoEncoderConfig):
        super().__init__()
        self.config = config
        cfg = config
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()  # works under a meta device context
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(cfg.layer_dims, cfg.depths)):
            start = sum(cfg.depths[:i])
            self.layers.append(
                EncoderLayer(
                    dim=dim,
                    depth=depth,
                    num_heads=cfg.num_heads[i],
                    table_window=(cfg.temporal_windows[i], *cfg.spatial_window),
                    mlp_ratio=cfg.mlp_ratio,
                    qkv_bias=cfg.qkv_bias,
                    drop_path=rates[start: start + depth],
                    merge=i in cfg.merge_after,
                    is_global=cfg.global_top_layer and i == cfg.num_layers - 1,
                )
            )
        self.norm = nn.LayerNorm(cfg.num_features)
        if cfg.clip_features == "intra":
            self.clip_merge = PatchMerging(cfg.output_dim(cfg.clip_feature_layer))
            self.clip_norm = nn.LayerNorm(cfg.clip_feature_dim)
        self.apply(self._init_weights)

    def check_input(self, frames: torch.Tensor) -> None:
        if frames.dim() != 5 or frames.shape[2] != self.config.in_chans:
            raise InputShapeError(
                f"video encoder: expected frames shaped (B, T, {self.config.in_chans}, H, W), got {tuple(frames.shape)}"
            )
        _, T, _, H, W = frames.shape
        _, ph, pw = self.config.patch_size
        if H % ph or W % pw:
            raise InputShapeError(f"video encoder: frame size {H}x{W} must be a multiple of the patch size {ph}x{pw}")
        self.config.check_frames(T)

    def forward(self, frames: torch.Tensor) -> VideoEncoderOutput:
        """frames (B, T, 3, H, W), ImageNet-normalised -> VideoEncoderOutput:

        tokens (B, T, h, w, C), global_feature (B, C), clip_features (B, M, C_clip),
        clip_tokens (B, T, h', w', C_clip), where (h, w) is (H/8, W/8) halved, rounding up, at
        each merge and C = ``config.num_features``, C_clip = ``config.clip_feature_dim``.
        Base preset, 32 × 192×320: tokens (B, 32, 3, 5, 1024), clip_features (B, 4, 1024).
        """
        self.check_input(frames)
        cfg = self.config
        B, T = frames.shape[:2]
        use_checkpoint = cfg.gradient_checkpointing
        x = self.patch_embed(frames.transpose(1, 2))  # (B, T, 3, H, W) -> (B, T, H/8, W/8, C)
        intra = None
        for i, layer in enumerate(self.layers):
            x = layer(x, cfg.attention, use_checkpoint)  # (B, T, h_i, w_i, C_i)
            if i == cfg.clip_feature_layer:
                intra = x
        tokens = self.norm(x)  # (B, T, h, w, C)
        global_feature = release_global_feature(tokens) if cfg.global_pooling == "release" else tokens.mean(dim=(1, 2, 3))  # (B, C)

        if cfg.clip_features == "intra":
            clip_tokens = self.clip_norm(self.clip_merge(intra))  # (B, T, h', w', C_clip)
        else:
            clip_tokens = tokens
        M = T // cfg.frames_per_clip
        per_clip = clip_tokens.reshape(B, M, cfg.frames_per_clip, *clip_tokens.shape[2:])  # (B, M, F, h', w', C_clip)
        clip_features = per_clip.mean(dim=(2, 3, 4))  # (B, M, C_clip)
        return VideoEncoderOutput(tokens, global_feature, clip_features, clip_tokens)

    def _init_weights(self, module: nn.Module) -> None:
        """The release's init of one submodule (applied to every one when built, after PyTorch's
        defaults): truncated normal (std 0.02) for Linear weights and bias tables, zero Linear
        biases, unit LayerNorms; the Conv3d patch kernel keeps PyTorch's default."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, WindowAttention3D):
            module.reset_parameters()
