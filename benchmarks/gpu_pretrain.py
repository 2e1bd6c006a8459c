"""GPU figures for ``lfvila-base`` stage 1 (VPC + MTC): samples/s and peak memory at 32 frames of
192×320 in bf16, and the largest micro-batch that fits.

Self-contained: no dataset, no hub download. Random frames ``(B, 32, 3, 192, 320)`` (standard
normal, as ImageNet-normalised frames roughly are) and random sentences ``(B, 4, 50)`` (``[CLS]``,
random word ids, ``[SEP]``, padding; every slot holds a sentence as MTC requires) are made on the
device once per micro-batch size, so the rates are model + optimizer only, no data loading. The
model is ``get_preset("lfvila-base", "stage1", text_model="random")`` (BERT-large architecture,
random weights) with ``set_trainable("stage1")``; each step is ``stage1_loss`` forward,
backward, gradient clipping at 1.0 and an AdamW step over the two parameter groups the Trainer
uses (no weight decay on biases, norms and position tables), then the loss read back.

Precision (``--precision``):

  bf16-master  (default) what ``Trainer`` with ``train.precision=bf16`` runs on DeepSpeed,
               re-created in plain torch: weights, activations and gradients in bf16, fp32
               master weights and fp32 AdamW moments (16 bytes per trained parameter). An
               approximation of DeepSpeed's memory: no ZeRO flat buffers or bucket slack.
  autocast     fp32 weights and AdamW, ``torch.autocast(dtype=bfloat16)`` for the forward.

The micro-batch doubles from ``--start-batch`` until a step runs out of memory
(``torch.cuda.OutOfMemoryError``: the cache is emptied and the search goes on), then the gap
between the last size that fitted and the first that did not is bisected. Each size: ``--warmup``
untimed steps, then ``--steps`` timed ones between ``torch.cuda.synchronize()`` calls; peak memory
is ``torch.cuda.max_memory_allocated`` since the size began (weights and optimizer state
included). A size "fits" when all its steps ran in this process; after an out-of-memory error
the allocator's fragmentation can make a size near the limit fail that would fit in a fresh
process, so the largest fitting size is a lower bound. ``--budget-s`` stops the search early
(reported as such) so the script stays within ~5 minutes on one H100.

    python benchmarks/gpu_pretrain.py                       # one CUDA GPU; prints a table and JSON
    python benchmarks/gpu_pretrain.py --json gpu.json --precision autocast
    python benchmarks/gpu_pretrain.py --device cpu --preset lfvila-tiny --frames 16 --height 64 --width 96
    python benchmarks/gpu_pretrain.py --device cpu --activations --frames 8   # activation memory, no GPU needed

Without a CUDA device (and without ``--device cpu``) it prints "no CUDA device: nothing measured"
and exits 0. The CPU path is for checking the code end to end with the tiny preset (no memory
figures; ``--max-batch`` defaults to 2 there). ``--activations`` measures, on any device, only
the bytes the forward keeps for the backward at micro-batch 1 and 2 (``saved_for_backward``): the
per-sample activation memory the README's memory formula uses.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lfvila_cli.errors import LfvilaError  # noqa: E402
from lfvila_cli.model.lfvila import build_model, count_parameters  # noqa: E402
from lfvila_cli.model.presets import get_preset  # noqa: E402
from lfvila_cli.train.pretrain import stage1_loss  # noqa: E402
from lfvila_cli.train.schedule import parameter_groups  # noqa: E402

# bert-base/large-uncased ids: [PAD] 0, [CLS] 101, [SEP] 102; ordinary word pieces from 1996 on.
PAD, CLS, SEP, FIRST_WORD = 0, 101, 102, 1996
GIB = 1024**3


def random_batch(batch: int, frames: int, height: int, width: int, clips: int, tokens: int, vocab: int,
                 dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> dict:
    """frames (B, T, 3, H, W); input_ids, attention_mask (B, M, L) with 5..L tokens per sentence."""
    # Made on the device: at 64 × 32 × 192×320 a host-side tensor would be 1.5 GB to fill and copy.
    video_gen = torch.Generator(device=device).manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    video = torch.randn(batch, frames, 3, height, width, generator=video_gen, device=device, dtype=dtype)
    lengths = torch.randint(min(5, tokens), tokens + 1, (batch, clips, 1), generator=gen)
    position = torch.arange(tokens).view(1, 1, tokens)
    ids = torch.randint(FIRST_WORD, vocab, (batch, clips, tokens), generator=gen)
    ids[..., 0] = CLS
    ids = torch.where(position == lengths - 1, torch.full_like(ids, SEP), ids)
    ids = torch.where(position >= lengths, torch.full_like(ids, PAD), ids)
    mask = (position < lengths).long()
    return {"frames": video, "input_ids": ids.to(device), "attention_mask": mask.to(device)}


class Stage1Step:
    """One optimizer step of stage 1 (see the module docstring for the two precisions)."""

    def __init__(self, model, objectives, precision: str, lr: float, weight_decay: float, grad_clip: float) -> None:
        self.model, self.objectives, self.precision, self.grad_clip = model, objectives, precision, grad_clip
        groups = parameter_groups(model.named_parameters(), weight_decay)
        self.params = [p for g in groups for p in g["params"]]
        if precision == "bf16-master":
            model.to(torch.bfloat16)  # trained and frozen parts alike, as DeepSpeed's bf16 engine does
            self.master = [p.detach().float().clone() for p in self.params]
            masters = iter(self.master)
            opt_groups = [{"params": [next(masters) for _ in g["params"]], "weight_decay": g["weight_decay"]} for g in groups]
        else:
            self.master = self.params
            opt_groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups]
        self.optimizer = torch.optim.AdamW(opt_groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
        device_type = next(model.parameters()).device.type
        self.autocast = torch.autocast(device_type, dtype=torch.bfloat16) if precision == "autocast" else nullcontext()

    def __call__(self, batch: dict, step: int) -> float:
        with self.autocast:
            terms = stage1_loss(self.model, self.model, batch, step, self.objectives)
        terms["total"].backward()
        if self.master is not self.params:
            for master, param in zip(self.master, self.params):
                master.grad = param.grad.float() if param.grad is not None else None
                param.grad = None
        torch.nn.utils.clip_grad_norm_(self.master, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.master is not self.params:
            with torch.no_grad():
                for master, param in zip(self.master, self.params):
                    param.copy_(master)
        return float(terms["total"].detach().float())  # read back, as the Trainer does (a sync)

    def clear(self) -> None:
        """Drop gradients a failed step left behind."""
        self.optimizer.zero_grad(set_to_none=True)
        for param in self.params:
            param.grad = None


def measure(step_fn: Stage1Step, batch_size: int, args, shapes: dict, device: torch.device) -> dict:
    """Warm-up + timed steps at one micro-batch size; raises OutOfMemoryError if it does not fit."""
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(batch_size)
    dtype = torch.bfloat16 if args.precision == "bf16-master" else torch.float32
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    batch = random_batch(batch_size, dtype=dtype, device=device, gen=gen, **shapes)
    losses = []
    for i in range(args.warmup):
        losses.append(step_fn(batch, i))
    if cuda:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for i in range(args.steps):
        losses.append(step_fn(batch, args.warmup + i))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    result = {
        "micro_batch": batch_size,
        "fits": True,
        "samples_per_s": batch_size * args.steps / seconds,
        "step_ms": 1e3 * seconds / args.steps,
        "loss_finite": all(math.isfinite(x) for x in losses),
        "first_loss": losses[0] if losses else None,
    }
    if cuda:
        result.update(
            peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB,
            peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB,
            resident_before_gib=resident / GIB,
        )
    return result


def saved_for_backward(step_fn: Stage1Step, batch_size: int, args, shapes: dict, device: torch.device) -> int:
    """Bytes that the forward of one stage-1 micro-batch keeps for the backward (the activations):
    every tensor autograd saves, each storage counted once, the parameters left out (they are the
    weights). The same tensors are saved on any device, so the CPU can measure what a GPU holds
    (the allocator's rounding and the kernels' workspaces aside)."""
    gen = torch.Generator().manual_seed(batch_size)
    dtype = torch.bfloat16 if args.precision == "bf16-master" else torch.float32
    batch = random_batch(batch_size, **shapes, dtype=dtype, device=device, gen=gen)
    with saved_tensor_bytes(step_fn.model) as saved, step_fn.autocast:
        terms = stage1_loss(step_fn.model, step_fn.model, batch, 0, step_fn.objectives)
    del terms
    return sum(saved.values())


@contextmanager
def saved_tensor_bytes(model: torch.nn.Module) -> Iterator[dict[int, int]]:
    """Inside, records every tensor autograd saves for the backward: {storage address: bytes},
    each storage once (the graph keeps each alive, so no address repeats), the model's
    parameters left out (they are the weights)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def try_size(step_fn: Stage1Step, batch_size: int, args, shapes: dict, device: torch.device) -> dict:
    out_of_memory = False
    try:
        result = measure(step_fn, batch_size, args, shapes, device)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True
    if out_of_memory:  # outside the except block: the traceback's frames (activations) are gone
        step_fn.clear()
        gc.collect()
        torch.cuda.empty_cache()
        result = {"micro_batch": batch_size, "fits": False}
    return result


def add_stage1_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that say which stage-1 steps run (shared with ``gpu_attention.py``)."""
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (debug path)")
    ap.add_argument("--preset", default="lfvila-base")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per sentence (default: min(50, the preset's))")
    ap.add_argument("--precision", choices=("bf16-master", "autocast"), default="bf16-master")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu path)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")


def stage1_config(ap: argparse.ArgumentParser, args) -> tuple:
    """The preset's stage-1 config (random text weights) and the ``random_batch`` shapes for
    ``args``; a frame count the windows cannot take is a usage error."""
    try:
        config = get_preset(args.preset, "stage1", text_model="random")
        config.video.check_frames(args.frames)
    except LfvilaError as exc:
        ap.error(str(exc))
    shapes = dict(frames=args.frames, height=args.height, width=args.width,
                  clips=args.frames // config.video.frames_per_clip,
                  tokens=args.tokens or min(50, config.text.max_tokens), vocab=config.text.bert_config["vocab_size"])
    return config, shapes


def print_and_save(summary: dict, path: Path | None) -> None:
    """The summary as JSON on stdout, and into ``path`` (``--json``) if given."""
    print(json.dumps(summary, indent=1))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage1_arguments(ap)
    ap.add_argument("--start-batch", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=None, help="stop doubling here (default 1024; cpu: 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per size")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per size")
    ap.add_argument("--no-bisect", action="store_true", help="powers of two only")
    ap.add_argument("--budget-s", type=float, default=240.0, help="start no new size after this many seconds")
    ap.add_argument("--activations", action="store_true",
                    help="measure only the activations a micro-batch of 1 and of 2 keeps for the backward (any device)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    max_batch = args.max_batch or (1024 if device.type == "cuda" else 2)

    torch.manual_seed(0)
    config, shapes = stage1_config(ap, args)
    clips, tokens = shapes["clips"], shapes["tokens"]
    model = build_model(config)
    trainable = model.set_trainable("stage1")
    parameters = count_parameters(model)
    model.to(device).train()
    step_fn = Stage1Step(model, config.objectives, args.precision, args.lr, weight_decay=0.05, grad_clip=1.0)
    setup_s = time.perf_counter() - started
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.preset} stage 1 on {name}: {parameters / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trained; "
          f"frames {args.frames} x {args.height}x{args.width}, {clips} sentences x {tokens} tokens; "
          f"precision {args.precision}; set up in {setup_s:.1f} s")
    if args.activations:
        one, two = (saved_for_backward(step_fn, b, args, shapes, device) for b in (1, 2))
        summary = {"device": name, "preset": args.preset, "parameters": parameters, "trainable_parameters": trainable,
                   "frames": args.frames, "height": args.height, "width": args.width, "sentences": clips, "tokens": tokens,
                   "precision": args.precision, "saved_for_backward_gib": {"micro_batch_1": one / GIB, "micro_batch_2": two / GIB},
                   "per_sample_gib": (two - one) / GIB}
        print(f"activations kept for the backward: {one / GIB:.3f} GiB at micro-batch 1, {two / GIB:.3f} GiB at 2: "
              f"{(two - one) / GIB:.3f} GiB per sample")
        print(json.dumps(summary, indent=1))
        return summary
    print(f"{'micro-batch':>11} {'fits':>5} {'samples/s':>10} {'step ms':>9} {'peak alloc GiB':>15} {'peak reserved GiB':>18}")

    rows: list[dict] = []
    stopped_by = None

    def run(batch_size: int) -> dict:
        r = try_size(step_fn, batch_size, args, shapes, device)
        r["elapsed_s"] = time.perf_counter() - started
        rows.append(r)
        if r["fits"]:
            mem = (f"{r['peak_allocated_gib']:15.2f} {r['peak_reserved_gib']:18.2f}" if "peak_allocated_gib" in r
                   else f"{'-':>15} {'-':>18}")
            print(f"{batch_size:11d} {'yes':>5} {r['samples_per_s']:10.2f} {r['step_ms']:9.0f} {mem}", flush=True)
        else:
            print(f"{batch_size:11d} {'OOM':>5}", flush=True)
        return r

    def out_of_time() -> bool:
        return time.perf_counter() - started > args.budget_s

    fit, fail = None, None
    size = args.start_batch
    while True:
        if out_of_time():
            stopped_by = "budget"
            break
        if run(size)["fits"]:
            fit = size
            if size >= max_batch:
                stopped_by = "max_batch"
                break
            size = min(size * 2, max_batch)
        else:
            fail = size
            stopped_by = "out_of_memory"
            break
    if stopped_by == "out_of_memory" and fit is not None and not args.no_bisect:
        while fail - fit > 1:
            if out_of_time():
                stopped_by = "budget (bisecting)"
                break
            mid = (fit + fail) // 2
            if run(mid)["fits"]:
                fit = mid
            else:
                fail = mid

    best = next((r for r in rows if r["fits"] and r["micro_batch"] == fit), None)
    summary = {
        "device": name,
        "torch": torch.__version__,
        "preset": args.preset,
        "variant": "stage1",
        "parameters": parameters,
        "trainable_parameters": trainable,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "sentences": clips,
        "tokens": tokens,
        "precision": args.precision,
        "optimizer": "torch AdamW (betas 0.9/0.98, wd 0.05 except biases/norms/positions), grad clip 1.0",
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "largest_micro_batch_that_fits": fit,
        "smallest_micro_batch_out_of_memory": fail,
        "stopped_by": stopped_by,
        "at_largest": best,
        "sizes": rows,
        "seconds": time.perf_counter() - started,
    }
    if device.type == "cpu":
        summary["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if fit is None:
        print("not even the first micro-batch fits")
    else:
        extra = f", peak {best['peak_allocated_gib']:.2f} GiB allocated" if best and "peak_allocated_gib" in best else ""
        bound = {"out_of_memory": "", "max_batch": " (the --max-batch cap; more may fit)"}
        bound = bound.get(stopped_by, f" (stopped: {stopped_by}; more may fit)")
        print(f"largest micro-batch that fits: {fit}{bound}; {best['samples_per_s']:.2f} samples/s there{extra}")
    print_and_save(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
