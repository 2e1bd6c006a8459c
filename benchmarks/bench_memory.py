"""Peak memory of training steps before and after the lean attention and MLM paths (CPU, fp32).

Two cases, each measured with the old path ("before") and today's ("after") in the same run,
each row in a fresh subprocess with ``torch.set_num_threads(2)``:

(a) encoder  the ``lfvila-base`` video encoder, forward + backward at 32 × 96×160, micro-batch 4.
             before: ``attention: sdpa_per_sample``, the shift/pad bias copied per sample
             (B·nW, nH, N, N); after: ``attention: sdpa``, one (1, nW·nH, N, N) bias broadcast.
(b) stage2   an ``lfvila-base`` stage-2 training step (MLM + VTM through ``stage2_loss``, stage-2
             parameters trainable, the video encoder frozen) at micro-batch 8, 32 frames at
             96×160, 4 sentences × 50 tokens. before: the MLM head scores every text token
             (``score_every_token``) and the per-sample bias; after: the head scores only the
             masked tokens of matched pairs.

What the columns measure:
  peak MiB    peak resident set size during the first step minus the RSS just before it
              (``ru_maxrss``, as ``bench_htwa.py``; weights and inputs excluded, allocator slack
              included; workers run with ``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB, see ``run``).
              RSS, not allocator bytes: torch's CPU allocator has no peak counter.
  saved MiB   bytes of the activations autograd keeps for backward (``saved_tensor_bytes`` of
              ``gpu_pretrain.py``: each storage counted once, parameters left out): exact.
  loss        the step's loss; before and after must agree to fp32 rounding, as must every
              parameter's gradient (the summary gives the largest relative difference of the
              per-parameter gradient norms, leaving out gradients that are rounding noise).

    python benchmarks/bench_memory.py                  # both cases, ~4 min on 2 cores
    python benchmarks/bench_memory.py --cases encoder --encoder-batch 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_htwa, when imported as a module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_htwa import _rss_kib  # noqa: E402
from gpu_pretrain import saved_tensor_bytes  # noqa: E402


# --------------------------------------------------------------------------------------------
# One measurement (runs in its own process so peak RSS belongs to it alone)
# --------------------------------------------------------------------------------------------


def encoder_step(spec: dict):
    """The base video encoder and a fwd+bwd step on random frames."""
    import torch

    from lfvila_cli.model.video_encoder import VideoEncoder, VideoEncoderConfig

    attention = "sdpa_per_sample" if spec["path"] == "before" else "sdpa"
    model = VideoEncoder(VideoEncoderConfig(attention=attention, drop_path_rate=0.0)).train()
    h, w = spec["size"]
    frames = torch.randn(spec["batch"], spec["frames"], 3, h, w, generator=torch.Generator().manual_seed(1))

    def step() -> torch.Tensor:
        out = model(frames)
        loss = out.tokens.square().mean() + out.clip_features.square().mean()
        loss.backward()
        return loss

    return model, step


def stage2_step(spec: dict):
    """The base stage-2 model and one training step through ``stage2_loss`` (MLM + VTM)."""
    import torch

    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.presets import get_preset
    from lfvila_cli.objectives import ObjectiveConfig
    from lfvila_cli.train.pretrain import stage2_loss

    before = spec["path"] == "before"
    config = get_preset("lfvila-base", "stage2", text_model="random")
    config.video.attention = "sdpa_per_sample" if before else "sdpa"
    model = build_model(config).train()
    model.set_trainable("stage2")
    words = [f"word{i}" for i in range(400)]
    tokenizer = train_wordpiece_tokenizer([" ".join(words[i: i + 20]) for i in range(0, 400, 20)], 1000, tempfile.mkdtemp())
    g = torch.Generator().manual_seed(1)
    b, m, length = spec["batch"], spec["sentences"], spec["tokens"]
    ids = torch.randint(len(tokenizer.all_special_ids) + 1, len(tokenizer), (b, m, length), generator=g)
    ids[..., 0], ids[..., -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    h, w = spec["size"]
    batch = {
        "frames": torch.randn(b, spec["frames"], 3, h, w, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
    }

    def step() -> torch.Tensor:
        loss = stage2_loss(model, model, batch, 0, ObjectiveConfig(), tokenizer, score_every_token=before)["total"]
        loss.backward()
        return loss

    return model, step


def measure(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model, step = (encoder_step if spec["case"] == "encoder" else stage2_step)(spec)
    torch.manual_seed(2)  # the same dropout and stochastic-depth draws before and after
    rss_before = _rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with saved_tensor_bytes(model) as saved:
        loss = step()
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **spec,
        "peak_mib": (max(peak_after, peak_before) - rss_before) / 1024,
        "saved_mib": sum(saved.values()) / 2**20,
        "loss": float(loss),
        "grad_norms": {n: float(p.grad.norm()) for n, p in model.named_parameters() if p.grad is not None},
    }


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def run(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True,
        # A fixed mmap threshold returns every freed block of 1 MiB or more to the system at once,
        # so RSS follows live memory: with glibc's moving threshold the same step's peak varied by
        # hundreds of MiB from run to run.
        env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MALLOC_MMAP_THRESHOLD_": str(2**20)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gradient_agreement(after: dict, before: dict) -> str:
    """How far the per-parameter gradient norms of two rows differ, relative to each norm.

    Parameters whose gradient is only rounding noise (norm below 1e-6 of the largest, such as
    attention key biases: softmax ignores a constant added to every logit of a row) are counted
    apart: their relative differences say nothing.
    """
    a, b = after["grad_norms"], before["grad_norms"]
    assert a.keys() == b.keys(), "the two paths train different parameters"
    floor = 1e-6 * max(b.values())
    relative = {n: abs(a[n] - b[n]) / b[n] for n in b if b[n] > floor}
    worst = max(relative, key=relative.get)
    return (f"gradient norms of {len(relative)} parameters differ by at most {relative[worst]:.1e} (relative; {worst}), "
            f"{len(b) - len(relative)} more with gradients below 1e-6 of the largest")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cases", nargs="+", choices=["encoder", "stage2"], default=["encoder", "stage2"])
    ap.add_argument("--encoder-batch", type=int, default=4)
    ap.add_argument("--stage2-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write all rows here")
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    common = dict(threads=args.threads, frames=32, size=[96, 160])
    cases = {
        "encoder": dict(case="encoder", batch=args.encoder_batch),
        "stage2": dict(case="stage2", batch=args.stage2_batch, sentences=4, tokens=50),
    }
    print(f"torch threads = {args.threads}, fp32, 32 frames at 96x160, lfvila-base")
    print(f"{'case':<8} {'batch':>5} {'path':<7} {'peak MiB':>9} {'saved MiB':>10} {'loss':>14}")
    results = []
    for name in args.cases:
        rows = {}
        for path in ("before", "after"):
            r = rows[path] = run({**common, **cases[name], "path": path})
            results.append(r)
            print(f"{name:<8} {r['batch']:>5} {path:<7} {r['peak_mib']:9.0f} {r['saved_mib']:10.1f} {r['loss']:14.7f}", flush=True)
        before, after = rows["before"], rows["after"]
        print(f"  {name}: peak {after['peak_mib']:.0f} / {before['peak_mib']:.0f} MiB = {after['peak_mib'] / before['peak_mib']:.2f}, "
              f"saved {after['saved_mib']:.1f} / {before['saved_mib']:.1f} MiB; loss |diff| {abs(after['loss'] - before['loss']):.1e}, "
              f"{gradient_agreement(after, before)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
