"""HTWA video encoder: windowed attention against dense references, the clip/global temporal
structure (docs/method.md §2 Decisions), the clamped-window bias, checkpointing, errors and shapes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lfvila_cli.config import from_dict
from lfvila_cli.errors import ConfigError
from lfvila_cli.model.video_encoder import (
    EncoderLayer,
    InputShapeError,
    VideoEncoder,
    VideoEncoderConfig,
    WindowAttention3D,
    relative_position_index,
    window_mask,
)

# Widths small enough for the CPU; the base layout of windows, merges and clips.
TINY = dict(
    embed_dim=16,
    depths=[1, 1, 2, 1, 1, 1],
    num_heads=[1, 2, 2, 2, 2, 4],
    spatial_window=[2, 3],
    drop_path_rate=0.0,
)


def tiny_encoder(seed: int = 0, **overrides) -> VideoEncoder:
    torch.manual_seed(seed)
    return VideoEncoder(VideoEncoderConfig(**{**TINY, **overrides})).eval()


def frames(batch: int, t: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def layer_outputs(model: VideoEncoder, video: torch.Tensor) -> tuple[list[torch.Tensor], object]:
    outs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o)) for layer in model.layers]
    try:
        with torch.no_grad():
            result = model(video)
    finally:
        for h in hooks:
            h.remove()
    return outs, result


# 1. Windowed (SDPA) attention == dense full-map attention with an explicit block mask -------


@pytest.mark.parametrize(
    "size, table_window, window",
    [
        ((4, 4, 6), (2, 2, 3), None),  # no padding; shifted blocks shift (0, 1, 1)
        ((4, 5, 7), (2, 2, 3), None),  # pad H 5→6, W 7→9 (the wrapped pieces meet only padding)
        ((8, 6, 9), (4, 3, 5), None),  # pad W 9→10, shift (0, 1, 2): padding and wrap meet
        ((6, 4, 4), (4, 3, 3), None),  # pad T 6→8 and H, W 4→6
        ((3, 2, 2), (2, 3, 5), None),  # spatial window clamped to the map, T padded
        ((5, 2, 3), (2, 3, 5), (5, 2, 3)),  # global in time beyond the table: offsets clamped
    ],
)
def test_window_attention_matches_dense_with_block_mask(size, table_window, window):
    torch.manual_seed(0)
    attn = WindowAttention3D(dim=12, num_heads=3, table_window=table_window, qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)  # make the bias matter
    layer = EncoderLayer(12, 2, 3, table_window, 4.0, True, [0.0, 0.0], merge=False, is_global=False)
    auto_window, shift = layer.window_and_shift(size)
    window = window or auto_window
    x = torch.randn(2, *size, 12)
    for block_shift in [(0, 0, 0), shift]:
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        windowed = attn(x1, window, block_shift, "sdpa")
        dense = attn(x2, window, block_shift, "dense")
        torch.testing.assert_close(windowed, dense, rtol=1e-5, atol=1e-5)
        grad_out = torch.randn_like(windowed)
        (g_windowed,) = torch.autograd.grad(windowed, x1, grad_out)
        (g_dense,) = torch.autograd.grad(dense, x2, grad_out)
        torch.testing.assert_close(g_windowed, g_dense, rtol=1e-4, atol=1e-5)


def test_encoder_sdpa_matches_dense_reference_with_padding_and_shifts():
    sdpa = tiny_encoder()
    dense = tiny_encoder(attention="dense")
    dense.load_state_dict(sdpa.state_dict())
    video = frames(2, 16, 40, 56)  # token map 5×7: padded and shifted windows in layer 0
    with torch.no_grad():
        a, b = sdpa(video), dense(video)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.clip_features, b.clip_features, rtol=1e-4, atol=1e-4)


def attention_pass(attn: WindowAttention3D, x: torch.Tensor, grad_out: torch.Tensor, window, shift, impl: str):
    """Output, input gradient and every parameter's gradient of one attention call."""
    attn.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = attn(x, window, shift, impl)
    out.backward(grad_out)
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in attn.named_parameters()}


@pytest.mark.parametrize(
    "size, table_window",
    [
        ((4, 4, 6), (2, 2, 3)),  # shift only
        ((4, 5, 7), (2, 2, 3)),  # shift and padding
        ((6, 4, 4), (4, 3, 3)),  # padding in time and space
    ],
)
def test_broadcast_bias_matches_the_per_sample_copy_and_dense(size, table_window):
    # The sdpa path folds the windows into the head axis so that one (1, nW·nH, N, N) bias
    # broadcasts over the batch; the reference copies it for every sample (B·nW, nH, N, N).
    torch.manual_seed(0)
    attn = WindowAttention3D(dim=12, num_heads=3, table_window=table_window, qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    layer = EncoderLayer(12, 2, 3, table_window, 4.0, True, [0.0, 0.0], merge=False, is_global=False)
    window, shift = layer.window_and_shift(size)
    assert window_mask(size, window, shift, torch.device("cpu")) is not None  # the folded layout runs
    x = torch.randn(3, *size, 12)
    grad_out = torch.randn(3, *size, 12)
    folded = attention_pass(attn, x, grad_out, window, shift, "sdpa")
    for reference, tolerance in [("sdpa_per_sample", {}), ("dense", dict(rtol=1e-4, atol=1e-5))]:
        out, grad_x, grads = attention_pass(attn, x, grad_out, window, shift, reference)
        torch.testing.assert_close(folded[0], out, **tolerance)
        torch.testing.assert_close(folded[1], grad_x, **tolerance)
        assert folded[2].keys() == grads.keys() and "relative_position_bias_table" in grads
        for name in grads:
            torch.testing.assert_close(folded[2][name], grads[name], msg=f"{reference}: {name}", **tolerance)
    assert folded[2]["relative_position_bias_table"].abs().sum() > 0
    with torch.no_grad():  # no gradient for the bias: CPU SDPA takes its flash kernel
        torch.testing.assert_close(attn(x, window, shift, "sdpa"), attn(x, window, shift, "sdpa_per_sample"))


def test_encoder_broadcast_bias_matches_the_per_sample_copy_in_gradients():
    video = frames(2, 16, 40, 56)  # token maps 5×7, 3×4: padded and shifted windows in layers 0 and 1
    results = []
    for impl in ("sdpa", "sdpa_per_sample"):
        model = tiny_encoder(attention=impl, depths=[2, 2, 2, 1, 1, 1]).train()
        out = model(video)
        (out.tokens.square().mean() + out.clip_features.square().mean()).backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a.tokens, b.tokens)
    torch.testing.assert_close(a.clip_features, b.clip_features)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    for i in (0, 1):  # the shifted blocks
        assert grads_a[f"layers.{i}.blocks.1.attn.relative_position_bias_table"].abs().sum() > 0


# 2. Windows covering the whole map == full space-time attention -----------------------------


def full_attention_forward(model: VideoEncoder, video: torch.Tensor) -> torch.Tensor:
    """The encoder with every block's attention replaced by plain global attention over all
    tokens: no windows, no shift, no mask, the bias read straight from each offset."""
    x = model.patch_embed(video.transpose(1, 2))
    for layer in model.layers:
        for block in layer.blocks:
            attn = block.attn
            B, T, H, W, C = x.shape
            h = block.norm1(x).reshape(B, T * H * W, C)
            q, k, v = attn.qkv(h).view(B, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            pos = torch.tensor(list(itertools.product(range(T), range(H), range(W))))  # (L, 3)
            d = pos[:, None, :] - pos[None, :, :] + (torch.tensor(attn.table_window) - 1)
            Wt, Wh, Ww = attn.table_window
            idx = d[..., 0] * (2 * Wh - 1) * (2 * Ww - 1) + d[..., 1] * (2 * Ww - 1) + d[..., 2]
            bias = attn.relative_position_bias_table[idx].permute(2, 0, 1)  # (nH, L, L)
            logits = q @ k.transpose(-1, -2) * attn.head_dim ** -0.5 + bias
            out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H, W, C)
            x = x + attn.proj(out)
            x = x + block.mlp(block.norm2(x))
        if layer.downsample is not None:
            x = layer.downsample(x)
    return model.norm(x)


def test_whole_map_windows_equal_full_attention():
    # 8 frames, 32×48 pixels: token maps 4×6, 2×3, 1×2 — every window covers its whole map.
    model = tiny_encoder(temporal_windows=[8] * 6, spatial_window=[4, 6])
    for block in (b for layer in model.layers for b in layer.blocks):
        torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)
    video = frames(1, 8, 32, 48)
    with torch.no_grad():
        htwa = model(video).tokens
        full = full_attention_forward(model, video)
    torch.testing.assert_close(htwa, full, rtol=1e-4, atol=1e-4)


# 3. Intra-clip layers never mix clips; the cross-clip layers do -----------------------------


def test_intra_clip_layers_ignore_other_clips():
    model = tiny_encoder()
    video = frames(1, 16, 48, 64)
    changed = video.clone()
    changed[:, 8:] = torch.randn(1, 8, 3, 48, 64)  # clip 2 only
    before, out_before = layer_outputs(model, video)
    after, out_after = layer_outputs(model, changed)
    for i in range(3):  # layers 0–2: temporal windows 2, 4, 8 frames
        assert torch.equal(before[i][:, :8], after[i][:, :8]), f"layer {i} mixed clips"
    assert torch.equal(out_before.clip_features[:, 0], out_after.clip_features[:, 0])
    for i in range(3, 6):  # windows of 16 frames and the global top layer span both clips
        assert (before[i][:, :8] - after[i][:, :8]).abs().max() > 1e-3, f"layer {i} ignored clip 2"
    assert not torch.allclose(out_before.tokens[:, :8], out_after.tokens[:, :8], atol=1e-3)


def test_final_clip_features_mix_clips_as_the_release_did():
    model = tiny_encoder(clip_features="final")
    video = frames(1, 16, 48, 64)
    changed = video.clone()
    changed[:, 8:] = 0.0
    with torch.no_grad():
        a, b = model(video).clip_features, model(changed).clip_features
    assert a.shape == (1, 2, model.config.num_features)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3


# 4. The top layer is global for any frame count (docs/method.md §7) -----------------------------


@pytest.mark.parametrize("global_top_layer", [True, False])
def test_top_layer_is_global_at_64_frames(global_top_layer):
    model = tiny_encoder(global_top_layer=global_top_layer)
    video = frames(1, 64, 16, 24)
    changed = video.clone()
    changed[:, 32:] = torch.randn(1, 32, 3, 16, 24)
    with torch.no_grad():
        a, b = model(video).tokens, model(changed).tokens
    diff = (a[:, :32] - b[:, :32]).abs().max().item()
    if global_top_layer:
        assert diff > 1e-3
    else:  # the authors' layout: two 32-frame top windows never meet
        assert diff == 0.0


# 5. Clamped windows read the bias at their own offsets (docs/method.md §7) ----------------------


def test_clamped_window_bias_uses_its_own_offsets():
    torch.manual_seed(0)
    table_window, window = (4, 3, 5), (2, 2, 3)
    attn = WindowAttention3D(dim=8, num_heads=2, table_window=table_window, qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table)
    Wt, Wh, Ww = table_window
    positions = list(itertools.product(*(range(w) for w in window)))
    expected = torch.empty(2, len(positions), len(positions))
    for (i, p), (j, q) in itertools.product(enumerate(positions), repeat=2):
        dt, dh, dw = (a - b for a, b in zip(p, q))
        row = (dt + Wt - 1) * (2 * Wh - 1) * (2 * Ww - 1) + (dh + Wh - 1) * (2 * Ww - 1) + (dw + Ww - 1)
        expected[:, i, j] = attn.relative_position_bias_table[row]
    got = attn.relative_position_bias(window)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # The release sliced the corner of the full window's index: a different, wrong bias.
    full = attn.relative_position_bias(table_window)
    N = len(positions)
    assert not torch.allclose(full[:, :N, :N], expected)


# 6. Gradient checkpointing changes memory, not gradients ------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients():
    video = frames(2, 16, 32, 48)
    grads, calls = [], []
    for use_checkpoint in (False, True):
        model = tiny_encoder(drop_path_rate=0.2, gradient_checkpointing=use_checkpoint).train()
        count = [0]
        # a pre-hook: non-reentrant checkpointing stops the recomputation early, before forward hooks
        model.layers[0].blocks[0].register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        torch.manual_seed(123)  # same stochastic-depth draws in both runs
        out = model(video)
        (out.tokens.square().mean() + out.clip_features.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        calls.append(count[0])
    # Checkpointing really happens: the block runs again during the backward pass.
    assert calls == [1, 2]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_inference_mode_first_then_training():
    relative_position_index.cache_clear()
    window_mask.cache_clear()
    model = tiny_encoder()
    video = frames(1, 8, 40, 56)
    with torch.inference_mode():
        model(video)
    model(video).tokens.sum().backward()  # cached index/mask tensors must not be inference tensors
    assert model.patch_embed.proj.weight.grad is not None


# 7. Clear errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t, overrides, message",
    [
        (12, {}, "not a positive multiple of frames_per_clip=8"),
        (24, {}, "layer 3's temporal window of 16 frames"),
        (48, {"global_top_layer": False}, "layer 5's temporal window of 32 frames"),
    ],
)
def test_frame_counts_the_windows_cannot_tile_are_refused(t, overrides, message):
    model = tiny_encoder(**overrides)
    with pytest.raises(InputShapeError, match="nearest allowed frame counts") as err:
        model(frames(1, t, 16, 24))
    assert message in str(err.value)


def test_allowed_frame_counts():
    cfg = VideoEncoderConfig(**TINY)
    assert [t for t in range(1, 100) if cfg.frames_allowed(t)] == [8, 16, 32, 48, 64, 80, 96]
    with pytest.raises(InputShapeError, match="multiple of the patch size"):
        tiny_encoder()(frames(1, 8, 20, 24))


@pytest.mark.parametrize(
    "data, key",
    [
        ({"temporal_windows": [3, 4, 8, 16, 16, 32]}, "temporal_windows"),
        ({"temporal_windows": [2, 4, 8, 12, 16, 32]}, "temporal_windows"),
        ({"clip_feature_layer": 3}, "clip_feature_layer"),
        ({"num_heads": [4, 8, 16]}, "num_heads"),
        ({"num_heads": [3, 8, 16, 16, 16, 32]}, "num_heads"),
        ({"patch_size": [2, 8, 8]}, "patch_size"),
        ({"merge_after": [0, 6]}, "merge_after"),
        ({"attention": "flash"}, "attention"),
    ],
)
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(VideoEncoderConfig, data)


# 8. Base preset: parameters and shapes ------------------------------------------------------


@pytest.mark.slow
def test_base_encoder_shapes_and_parameters():
    torch.manual_seed(0)
    model = VideoEncoder(VideoEncoderConfig()).eval()
    # Same count and table sizes as the authors' SwinTransformer3D (stage-1 checkpoint keys).
    assert sum(p.numel() for p in model.parameters()) == 89_229_448
    tables = [model.layers[i].blocks[0].attn.relative_position_bias_table.shape for i in range(6)]
    assert tables == [(135, 4), (315, 8), (675, 16), (1395, 16), (1395, 16), (2835, 32)]
    state = model.state_dict()
    assert state["clip_merge.reduction.weight"].shape == (1024, 2048)
    assert state["layers.4.downsample.norm.weight"].shape == (2048,)
    assert not any("relative_position_index" in k for k in state)

    with torch.no_grad():
        out = model(torch.randn(1, 32, 3, 96, 160))
    assert out.tokens.shape == (1, 32, 2, 3, 1024)  # 12×20 → 6×10 → 3×5 → 2×3
    assert out.global_feature.shape == (1, 1024)
    assert out.clip_features.shape == (1, 4, 1024)
    assert out.clip_tokens.shape == (1, 32, 2, 3, 1024)  # layer-2 map 3×5, merged
    torch.testing.assert_close(out.global_feature, out.tokens.mean(dim=(1, 2, 3)))
    assert torch.isfinite(out.tokens).all()


# The release's video feature (docs/method.md §7) -----------------------------------------------


def _release_pooling_brute_force(tokens: torch.Tensor) -> torch.Tensor:
    """Each frame's map max-pooled by hand with a (2, 3) window at stride 1 (clamped to a smaller
    map), every cell of every frame averaged: (B, T, h, w, C) -> (B, C)."""
    B, T, h, w, C = tokens.shape
    kh, kw = min(2, h), min(3, w)
    cells = [
        tokens[:, :, i : i + kh, j : j + kw].amax(dim=(2, 3))  # (B, T, C)
        for i in range(h - kh + 1)
        for j in range(w - kw + 1)
    ]
    return torch.stack(cells, dim=2).mean(dim=(1, 2))


@pytest.mark.parametrize("h, w", [(3, 5), (1, 2), (2, 3), (4, 4)])
def test_release_global_feature_equals_a_brute_force_max_pool(h, w):
    from lfvila_cli.model.video_encoder import release_global_feature

    tokens = torch.randn(2, 4, h, w, 8, generator=torch.Generator().manual_seed(h * 10 + w))
    assert torch.allclose(release_global_feature(tokens), _release_pooling_brute_force(tokens), atol=1e-6)


def test_global_pooling_switch_computes_the_release_feature():
    """global_pooling: release gives the brute-force release feature of the encoder's own final
    tokens (3×5 map, as the paper's at 192×320); mean (the default) the plain mean; nothing else
    changes."""
    video = frames(1, 8, 192, 320)
    mean_model, release_model = tiny_encoder(), tiny_encoder(global_pooling="release")
    release_model.load_state_dict(mean_model.state_dict())
    with torch.no_grad():
        plain, released = mean_model(video), release_model(video)
    assert released.tokens.shape[2:4] == (3, 5)
    assert torch.equal(plain.tokens, released.tokens) and torch.equal(plain.clip_features, released.clip_features)
    assert torch.allclose(plain.global_feature, plain.tokens.mean(dim=(1, 2, 3)))
    assert torch.allclose(released.global_feature, _release_pooling_brute_force(released.tokens), atol=1e-6)
    relative = (released.global_feature - plain.global_feature).norm() / plain.global_feature.norm()
    assert relative > 0.05  # a different feature, not a rounding of the same one
    with pytest.raises(ConfigError, match="global_pooling"):
        VideoEncoderConfig(global_pooling="max")
