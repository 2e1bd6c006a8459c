"""The FlexAttention path of the HTWA video encoder (``attention: flex``) against the dense
reference: outputs and gradients (the bias table's included) with shifts, padding-sized maps, a
global top layer longer than its table and batches; its block mask against torch's own
construction; the whole encoder against the SDPA path; and its errors (docs/engineering.md §3).

torch 2.13 refuses FlexAttention's backward on CPU with a device check made before anything
runs; its eager backward itself (the reference the compiled GPU kernel is tested against in
torch) runs on CPU. The gradient tests lift that check (``cpu_flex_backward``) so that the
score modification's gradients into the bias table are checked here, not first on a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

flex_module = pytest.importorskip(
    "torch.nn.attention.flex_attention", reason="this torch has no FlexAttention (torch >= 2.5)"
)

from lfvila_cli.errors import ConfigError  # noqa: E402
from lfvila_cli.model import video_encoder  # noqa: E402
from lfvila_cli.model.video_encoder import (  # noqa: E402
    FLEX_BLOCK,
    EncoderLayer,
    FlexAttentionUnavailable,
    VideoEncoder,
    VideoEncoderConfig,
    WindowAttention3D,
    dense_block_mask,
    flex_windows,
)

CPU = torch.device("cpu")

# The tiny encoder of tests/test_video_encoder.py: the base layout of windows, merges and clips.
TINY = dict(embed_dim=16, depths=[1, 1, 2, 1, 1, 1], num_heads=[1, 2, 2, 2, 2, 4], spatial_window=[2, 3], drop_path_rate=0.0)


@pytest.fixture(autouse=True)
def quiet_unfused_warning():
    # Eager FlexAttention warns (once per process) that it is not the fused kernel: true, expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


@pytest.fixture
def cpu_flex_backward(monkeypatch):
    """Let FlexAttention's eager backward run on CPU (see the module docstring)."""
    if not hasattr(flex_module, "_validate_device"):
        pytest.skip("this torch checks FlexAttention's device elsewhere; nothing to lift")
    monkeypatch.setattr(flex_module, "_validate_device", lambda query, key, value: None)


def tiny_encoder(seed: int = 0, **overrides) -> VideoEncoder:
    torch.manual_seed(seed)
    return VideoEncoder(VideoEncoderConfig(**{**TINY, **overrides}))


CASES = [
    ((4, 4, 6), (2, 2, 3), None),  # no padding; shifted blocks shift (0, 1, 1)
    ((4, 5, 7), (2, 2, 3), None),  # the windowed path pads H 5→6, W 7→9
    ((8, 6, 9), (4, 3, 5), None),  # pad W 9→10, shift (0, 1, 2): padding and wrap meet
    ((6, 4, 4), (4, 3, 3), None),  # pad T 6→8 and H, W 4→6
    ((3, 2, 2), (2, 3, 5), None),  # spatial window clamped to the map, T padded
    ((5, 2, 3), (2, 3, 5), (5, 2, 3)),  # global in time beyond the table: offsets clamped
    ((8, 12, 20), (4, 3, 5), None),  # 1920 tokens, 15 tiles of 128: a really sparse block mask
    ((7, 11, 13), (4, 3, 5), None),  # padded on every axis, the last tile cut short (1001 tokens)
]


def layer_window(size, table_window, window):
    layer = EncoderLayer(12, 2, 3, table_window, 4.0, True, [0.0, 0.0], merge=False, is_global=False)
    auto_window, shift = layer.window_and_shift(size)
    return window or auto_window, shift


@pytest.mark.parametrize("size, table_window, window", CASES)
def test_flex_matches_dense_outputs_and_gradients(size, table_window, window, cpu_flex_backward):
    torch.manual_seed(0)
    attn = WindowAttention3D(dim=12, num_heads=3, table_window=table_window, qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)  # make the bias matter
    window, shift = layer_window(size, table_window, window)
    x = torch.randn(2, *size, 12)
    params = [attn.relative_position_bias_table, attn.qkv.weight, attn.proj.weight]
    for block_shift in [(0, 0, 0), shift]:
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        flex = attn(x1, window, block_shift, "flex")
        dense = attn(x2, window, block_shift, "dense")
        torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
        grad_out = torch.randn_like(flex)
        g_flex = torch.autograd.grad(flex, [x1, *params], grad_out)
        g_dense = torch.autograd.grad(dense, [x2, *params], grad_out)
        for name, a, b in zip(["input", "bias table", "qkv", "proj"], g_flex, g_dense):
            assert b.abs().sum() > 0, name
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_flex_and_sdpa_agree_per_sample_in_a_batch():
    # B > 1: each sample equals the same sample run alone (no mixing through the shared mask).
    torch.manual_seed(0)
    attn = WindowAttention3D(dim=12, num_heads=3, table_window=(4, 3, 5), qkv_bias=True)
    torch.nn.init.normal_(attn.relative_position_bias_table, std=1.0)
    x = torch.randn(3, 7, 11, 13, 12)
    with torch.no_grad():
        batch = attn(x, (4, 3, 5), (0, 1, 2), "flex")
        alone = torch.cat([attn(x[i: i + 1], (4, 3, 5), (0, 1, 2), "flex") for i in range(3)])
        sdpa = attn(x, (4, 3, 5), (0, 1, 2), "sdpa")
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, table_window, window", CASES)
def test_block_mask_is_the_dense_mask_in_window_order(size, table_window, window):
    window, shift = layer_window(size, table_window, window)
    L = size[0] * size[1] * size[2]
    for block_shift in [(0, 0, 0), shift]:
        windows = flex_windows(size, window, block_shift, CPU)
        # The token-level rule is dense_block_mask's, read in window order.
        allowed = flex_module.create_mask(windows.block_mask.mask_mod, None, None, L, L, CPU)[0, 0]
        order = windows.order
        assert torch.equal(allowed, dense_block_mask(size, window, block_shift)[order][:, order])
        assert torch.equal(windows.order[windows.restore], torch.arange(L))
        # The tiles built from the windows are the ones torch derives from the full (L, L) mask.
        ours = windows.block_mask
        torch_built = flex_module.create_block_mask(ours.mask_mod, None, None, L, L, device=CPU, BLOCK_SIZE=FLEX_BLOCK)
        assert torch.equal(ours.to_dense(), torch_built.to_dense())
        assert torch.equal(ours.kv_num_blocks, torch_built.kv_num_blocks)
        assert torch.equal(ours.full_kv_num_blocks, torch_built.full_kv_num_blocks)


def test_window_order_makes_the_block_mask_sparse():
    # Layer 0 of lfvila-base at 32×96×160 (map 32×12×20, window 2×3×5, shifted): in row-major
    # order a window spreads over 2 frames × 3 rows, so a query tile meets more key tiles.
    size, window, shift = (32, 12, 20), (2, 3, 5), (0, 1, 2)
    ours = flex_windows(size, window, shift, CPU).block_mask
    L = 32 * 12 * 20
    label = video_encoder.window_labels(size, window, shift)

    def same_window_row_major(b, h, q, kv):
        return (label[0, q] == label[0, kv]) & (label[1, q] == label[1, kv]) & (label[2, q] == label[2, kv])

    row_major = flex_module.create_block_mask(same_window_row_major, None, None, L, L, device=CPU, BLOCK_SIZE=FLEX_BLOCK)
    computed, computed_row_major = ours.to_dense().sum().item(), row_major.to_dense().sum().item()
    # Seen: 148 of 3600 tiles in window order, 276 in row-major order.
    assert computed <= 3 * (L // FLEX_BLOCK)  # a query tile meets its own key tile and at most one beyond each end
    assert 3 * computed < 2 * computed_row_major


def test_block_masks_are_cached_per_map_window_shift_and_device():
    a = flex_windows((8, 6, 9), (4, 3, 5), (0, 1, 2), CPU)
    assert flex_windows((8, 6, 9), (4, 3, 5), (0, 1, 2), CPU) is a
    assert flex_windows((8, 6, 9), (4, 3, 5), (0, 0, 0), CPU) is not a


def test_encoder_flex_matches_sdpa_with_padding_and_shifts():
    sdpa = tiny_encoder().eval()
    flex = tiny_encoder(attention="flex").eval()
    flex.load_state_dict(sdpa.state_dict())
    video = torch.randn(2, 16, 3, 40, 56, generator=torch.Generator().manual_seed(1))  # map 5×7: padded, shifted
    with torch.no_grad():
        a, b = sdpa(video), flex(video)
    torch.testing.assert_close(b.tokens, a.tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.clip_features, a.clip_features, rtol=1e-4, atol=1e-4)


def test_encoder_flex_gradients_match_sdpa(cpu_flex_backward):
    video = torch.randn(2, 16, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    grads = []
    for attention in ("sdpa", "flex"):
        model = tiny_encoder(attention=attention).train()
        out = model(video)
        (out.tokens.square().mean() + out.clip_features.square().mean()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    tables = [n for n in grads[0] if n.endswith("relative_position_bias_table")]
    assert len(tables) == 7 and all(grads[1][n].abs().sum() > 0 for n in tables)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_with_flex_on_cpu_is_a_one_line_error():
    model = tiny_encoder(attention="flex").train()
    with pytest.raises(FlexAttentionUnavailable, match="attention: flex on cpu") as err:
        model(torch.randn(1, 8, 3, 16, 24))
    assert "\n" not in str(err.value) and "attention: sdpa" in str(err.value)


def test_flex_without_flex_attention_is_a_config_error(monkeypatch):
    monkeypatch.setattr(video_encoder, "flex_attention_missing", lambda: "torch 2.4 has no flex_attention")
    with pytest.raises(ConfigError, match="config key 'attention': flex: torch 2.4 has no flex_attention; use sdpa"):
        VideoEncoderConfig(attention="flex")
    VideoEncoderConfig(attention="sdpa")  # the other paths do not need it
