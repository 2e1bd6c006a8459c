"""GPU inference for ``lfvila-base``: ONNX Runtime CUDA (fp32 and fp16 exports) against PyTorch
bf16 (autocast) for the video and text encoders, latency at batch 1 and throughput at batch 16.

Self-contained: no dataset, no hub download. The model is ``get_preset("lfvila-base", "stage1",
text_model="random")`` (BERT-large architecture, random weights) saved as a model artifact with a
small WordPiece tokenizer, then exported twice with ``export_onnx`` (fp32 and ``precision=fp16``,
32 frames at 192×320 by default; the exports and their parity checks run on the CPU, as
``lfvila export`` does). Each path is timed from host memory to host memory, as a serving process
sees it: PyTorch copies the inputs to the GPU and the outputs back; ONNX Runtime runs through
``runtime.OnnxGraph``, whose I/O binding copies the inputs in and the outputs out once per call.
Median of ``--repeats`` calls after two warm-up calls, ``torch.cuda.synchronize()`` after each
PyTorch call. Inputs: random frames ``(B, T, 3, H, W)``, random sentences ``(B, 4, L)`` (L the
model's max tokens: 50 for lfvila-base), two thirds of each sentence real tokens. If ONNX Runtime
cannot start its CUDA provider (``OnnxGraph(device="cuda")`` raises) the script says so and measures
nothing.

    python benchmarks/gpu_onnx.py                  # one CUDA GPU; prints a table and JSON
    python benchmarks/gpu_onnx.py --device cpu --preset lfvila-tiny --frames 16 --height 64 --width 96

Without a CUDA device (and without ``--device cpu``) it prints "no CUDA device: nothing measured"
and exits 0. The CPU path checks the script end to end (PyTorch bf16 autocast on CPU against ONNX
Runtime's CPU provider); its figures say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_onnx import median_time  # same folder: python benchmarks/gpu_onnx.py


def _model_dir(root: Path, preset: str) -> Path:
    from lfvila_cli.config import to_dict
    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.presets import get_preset
    from lfvila_cli.model.pretrained import save_weights

    torch.manual_seed(0)
    config = get_preset(preset, "stage1", text_model="random")
    path = root / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(to_dict(config)))
    save_weights(build_model(config).state_dict(), path / "model.safetensors")
    train_wordpiece_tokenizer(["a red circle grows", "the blue square moves left"], 60, path / "tokenizer")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--preset", default="lfvila-base")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return

    from lfvila_cli.export import TEXT_FILE, VIDEO_FILE, export_onnx
    from lfvila_cli.stages.export import ExportConfig
    from lfvila_cli.runtime import DeviceError, OnnxGraph
    from lfvila_cli.model.pretrained import load_pretrained

    root = Path(tempfile.mkdtemp(prefix="gpu_onnx_"))
    model_dir = _model_dir(root, args.preset)
    exports = {}
    for precision in ("fp32", "fp16"):
        t0 = time.perf_counter()
        summary = export_onnx(model_dir, root / precision, ExportConfig(frames=args.frames, height=args.height, width=args.width, precision=precision))
        parity = summary["parity"]
        print(f"export {precision}: {time.perf_counter() - t0:.0f}s, parity max |diff| {max(parity['max_abs_diff'].values()):.1e}, "
              f"ranking {'same' if parity['same_ranking'] else 'DIFFERENT'}")
        exports[precision] = root / precision

    device = torch.device(args.device)
    model = load_pretrained(model_dir).eval().to(device)
    try:  # device "cuda": ONNX Runtime's CUDA provider or a DeviceError, never a silent CPU run
        graphs = {p: (OnnxGraph(d / VIDEO_FILE, "video", args.device, max_batch=64), OnnxGraph(d / TEXT_FILE, "text", args.device, max_batch=64)) for p, d in exports.items()}
    except DeviceError as exc:
        print(f"ONNX Runtime cannot run on {args.device}: nothing measured ({exc})")
        return
    print(f"ONNX Runtime on {graphs['fp32'][0].device}; PyTorch on {device}")
    tokens = model.config.text.max_tokens
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = np.random.default_rng(0)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        frames = gen.standard_normal((batch, args.frames, 3, args.height, args.width)).astype(np.float32)
        ids = gen.integers(5, 60, (batch, 4, tokens)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[..., tokens * 2 // 3 :] = 0
        ids *= mask

        def torch_video():
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                out = model.encode_video(torch.from_numpy(frames).to(device))
                result = (out.global_embedding.float().cpu(), out.clip_embeddings.float().cpu())
            sync()
            return result

        def torch_text():
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                out = model.encode_text(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
                result = (out.paragraph_embedding.float().cpu(), out.sentence_embeddings.float().cpu())
            sync()
            return result

        row = {"batch": batch, "video": {"torch_bf16_s": median_time(torch_video, args.repeats, warmup=2)},
               "text": {"torch_bf16_s": median_time(torch_text, args.repeats, warmup=2)}}
        for precision, (video, text) in graphs.items():
            row["video"][f"onnx_{precision}_s"] = median_time(lambda: video(frames=frames), args.repeats, warmup=2)
            row["text"][f"onnx_{precision}_s"] = median_time(lambda: text(input_ids=ids, attention_mask=mask), args.repeats, warmup=2)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"{args.preset}, {args.frames} frames at {args.height}×{args.width}, text 4 × {tokens} tokens, median of {args.repeats}")
    print("| encoder | batch | PyTorch bf16 | ORT fp32 | ORT fp16 | fp32 speed-up | fp16 speed-up | ORT fp16 items/s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for encoder in ("video", "text"):
            r = row[encoder]
            print(f"| {encoder} | {row['batch']} | {1000 * r['torch_bf16_s']:.1f} ms | {1000 * r['onnx_fp32_s']:.1f} ms | "
                  f"{1000 * r['onnx_fp16_s']:.1f} ms | {r['torch_bf16_s'] / r['onnx_fp32_s']:.2f}× | "
                  f"{r['torch_bf16_s'] / r['onnx_fp16_s']:.2f}× | {row['batch'] / r['onnx_fp16_s']:.1f} |")
    report = {"preset": args.preset, "device": args.device, "providers": {p: g[0].device for p, g in graphs.items()}, "rows": rows}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
