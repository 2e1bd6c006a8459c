"""``lfvila env``: what this machine can do for lfvila, in the spirit of ``accelerate env`` and
``ds_report``: versions, CUDA devices and their capability, whether bf16 is supported and which
training precision that calls for, whether ONNX Runtime's CUDA provider really runs a graph,
DeepSpeed's ops, the video and frame decoders, and thread counts.

``environment_report()`` returns ``{section: {key: value}}`` (plain JSON data); ``report_lines``
renders it as text. Each section comes from one probe (``PROBES``); a probe that raises gives a
section holding only ``error`` and the others still run, so a broken library shows as a line, never
as a crash. Every probe imports its libraries itself (``lfvila --help`` imports none of them) and
keeps them quiet: DeepSpeed's import and op checks print nothing here.

The checks run the real code paths where that is cheap: ONNX Runtime runs a one-node graph built
in memory on its CUDA provider (``runtime.cuda_provider_runs``), PyAV writes a short H.264 file
that lfvila's decord reader reads back, and the frame codecs round-trip a frame. ONNX Runtime is
probed after torch is imported, as lfvila runs it (``search`` and ``index`` import torch through
transformers first): a CUDA build of torch loads CUDA libraries that ONNX Runtime then finds too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

GIB = 1024**3
PACKAGES = (
    "torch", "transformers", "tokenizers", "deepspeed", "onnxruntime-gpu", "onnxruntime", "onnx",
    "zarr", "numcodecs", "imagecodecs", "decord", "av", "numpy",
)
# The first compute capability of each generation (NVIDIA's numbering): what precision it trains in.
GENERATIONS = ((9, "Hopper or newer"), (8, "Ampere / Ada"), (7, "Volta / Turing"), (0, "older than Volta"))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _attempt(check: Callable[[], str]) -> str:
    """One sub-check of a section: its answer, or ``failed: <error>`` (never raises)."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a probe reports whatever went wrong
        return f"failed: {_first_line(exc)}"


# ------------------------------------------------------------------------------------ the probes


def probe_lfvila() -> dict[str, Any]:
    return {
        "lfvila": _version("lfvila"),
        "package": str(Path(__file__).resolve().parent),
        "python": f"{platform.python_version()} ({platform.python_implementation()}) {sys.executable}",
        "platform": platform.platform(),
    }


def probe_packages() -> dict[str, Any]:
    """Installed versions, read from the package metadata (nothing is imported)."""
    out = {name: _version(name) for name in PACKAGES}
    both = out["onnxruntime"] != "not installed" and out["onnxruntime-gpu"] != "not installed"
    if both:  # they share one import name: whichever was installed last wins (docs/engineering.md §4)
        out["warning"] = "onnxruntime and onnxruntime-gpu are both installed: uninstall both, then install one"
    return out


def probe_onnxruntime() -> dict[str, Any]:
    import onnxruntime as ort

    from .runtime import CUDA, cuda_provider_runs, gpu_present, ort_cuda_build

    runs, detail = cuda_provider_runs()
    listed = ort.get_available_providers()
    if runs:
        auto = "CUDA"
    elif CUDA not in listed:
        auto = "CPU"
    elif gpu_present():
        auto = "CPU, with a warning (a GPU is present but the CUDA provider does not run)"
    else:
        auto = "CPU, quietly (no GPU)"
    return {
        "version": ort.__version__,
        "built for CUDA": ort_cuda_build() or "no (a CPU-only package)",
        "providers listed": listed,
        "CUDA provider runs a graph": runs,
        "CUDA provider check": detail,
        "GPU visible (/dev/nvidia0 or nvidia-smi)": gpu_present(),
        "device auto (search, index) runs on": auto,
    }


def probe_torch() -> dict[str, Any]:
    import torch

    cuda_build = torch.version.cuda is not None
    return {
        "version": torch.__version__,
        "CUDA build": f"yes, CUDA {torch.version.cuda}" if cuda_build else "no (a CPU build)",
        "cuDNN": _attempt(lambda: str(torch.backends.cudnn.version())) if cuda_build else "none (a CPU build)",
        "CUDA available": torch.cuda.is_available(),
        "NCCL": _attempt(lambda: _nccl(torch)),
        "CPU bf16 autocast": _attempt(lambda: _cpu_bf16(torch)),
    }


def _nccl(torch) -> str:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        return "not available (multi-GPU training needs it; gloo serves CPU ranks)"
    version = torch.cuda.nccl.version()
    return "available, " + (".".join(map(str, version)) if isinstance(version, tuple) else str(version))


def _cpu_bf16(torch) -> str:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ones(4, 4) @ torch.ones(4, 4)
    return f"runs ({out.dtype})"


def generation(major: int) -> str:
    """The GPU generation of a compute capability's major number."""
    return next(name for first, name in GENERATIONS if major >= first)


def training_precision(cuda: bool, bf16: bool) -> str:
    """What ``train.precision`` to use here (lfvila never changes it on its own: the paper's recipes
    say bf16, the commands' CPU defaults fp32; ``train.engine.check_precision_supported`` refuses
    fp16 without a GPU)."""
    from .train.config import CPU_PRECISION

    if not cuda:
        return f"{CPU_PRECISION} or bf16 (no GPU: DeepSpeed refuses fp16 on the CPU; the commands' default is {CPU_PRECISION})"
    if bf16:
        return "bf16 (train.precision: bf16, as the paper recipes set it; no loss scaling needed)"
    return "fp16 (no bf16 on this GPU: --set <stage>.train.precision=fp16, trained with DeepSpeed's dynamic loss scale)"


def probe_cuda() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        why = "a CPU build of torch" if torch.version.cuda is None else "torch sees no GPU"
        return {"devices": f"none ({why})", "bf16 supported": False, "training precision": training_precision(False, False)}
    devices, majors = [], []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        majors.append(props.major)
        devices.append(
            f"cuda:{i} {props.name}, capability {props.major}.{props.minor} ({generation(props.major)}), "
            f"{props.total_memory / GIB:.1f} GiB, {props.multi_processor_count} SMs"
        )
    # bf16 in hardware from capability 8.0 (Ampere) on. torch.cuda.is_bf16_supported() also says
    # yes where bf16 is only emulated (a V100), which trains slowly: the precision follows the hardware.
    bf16 = min(majors) >= 8
    return {
        "devices": devices,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        "bf16 supported": bf16,
        "torch.cuda.is_bf16_supported() (emulation included)": _attempt(lambda: str(torch.cuda.is_bf16_supported())),
        "training precision": training_precision(True, bf16),
    }


@contextlib.contextmanager
def _silenced():
    """Swallow what a library prints while importing (DeepSpeed's logger writes to stdout), and
    point any log handler made meanwhile back at the real streams afterwards."""
    streams = {io.StringIO(): sys.stdout, io.StringIO(): sys.stderr}  # sink -> the stream it stands for
    sink_out, sink_err = streams
    with contextlib.redirect_stdout(sink_out), contextlib.redirect_stderr(sink_err):
        yield
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for handler in (h for logger in loggers for h in logger.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream in streams:
            handler.setStream(streams[handler.stream])


def probe_deepspeed() -> dict[str, Any]:
    """DeepSpeed's accelerator and ops as ``ds_report`` lists them: compatible ones can be
    JIT-built when used (lfvila uses none of the compiled ops: torch's AdamW, no shared-memory
    comm op); installed ones were built into the wheel."""
    import torch

    if not torch.cuda.is_available():  # as train.engine.init_distributed does: no accelerator detection noise
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with _silenced():
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import accelerator_name, installed_ops
        from deepspeed.ops.op_builder.all_ops import ALL_OPS
        from deepspeed.ops.op_builder.builder import probe_is_compatible
        from torch.utils.cpp_extension import is_ninja_available

        accelerator = get_accelerator()._name
        compatible = {name: bool(probe_is_compatible(builder, False)) for name, builder in ALL_OPS.items()}
        installed = sorted(n for n, ok in installed_ops.items() if ok and accelerator_name == accelerator)
    return {
        "version": deepspeed.__version__,
        "accelerator": accelerator,
        "ops compatible (JIT-buildable)": sorted(n for n, ok in compatible.items() if ok),
        "ops not compatible": sorted(n for n, ok in compatible.items() if not ok) or "none",
        "ops installed (prebuilt)": installed or "none",
        "ninja (for JIT builds)": bool(is_ninja_available()),
    }


def _video_round_trip() -> str:
    """PyAV writes an 8-frame H.264 file; lfvila's decord reader decodes 4 frames of it."""
    from .data.video import VideoDecoder, write_video

    frames = np.zeros((8, 64, 64, 3), np.uint8)
    frames[:, :, :32] = 200  # a bright half: a decoder returning zeros shows
    with tempfile.TemporaryDirectory(prefix="lfvila-env-") as tmp:
        path = Path(tmp) / "probe.mp4"
        write_video(path, frames, fps=8)
        with VideoDecoder(str(path), 64, 64) as decoder:
            out, _ = decoder.span(None, None, 4)
    if out.shape != (4, 64, 64, 3) or abs(float(out[:, :, :32].mean()) - 200) > 10:
        return f"wrong frames: shape {out.shape}, bright half mean {float(out[:, :, :32].mean()):.1f}"
    return "reads an H.264 mp4 written by PyAV (4 of 8 frames, lfvila's reader)"


def _codec_round_trip(codec: str) -> str:
    from .data.codecs import DEFAULT_QUALITY, decode, encode

    frames = np.tile(np.arange(64, dtype=np.uint8)[None, :, None, None] * 4, (1, 1, 64, 3))  # (1, 64, 64, 3)
    back = decode(encode(frames, codec, DEFAULT_QUALITY), codec, frames.shape)
    worst = int(np.abs(back.astype(int) - frames).max())
    return f"round trip at quality {DEFAULT_QUALITY}, max |difference| {worst}"


def probe_decoders() -> dict[str, Any]:
    return {
        "decord + PyAV": _attempt(_video_round_trip),
        "jpeg (imagecodecs)": _attempt(lambda: _codec_round_trip("jpeg")),
        "jpegxl (imagecodecs)": _attempt(lambda: _codec_round_trip("jpegxl")),
    }


def probe_threads() -> dict[str, Any]:
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "unknown"
    return {
        "os.cpu_count": os.cpu_count(),
        "cores this process may use (affinity)": affinity,
        "torch intra-op threads": torch.get_num_threads(),
        "torch inter-op threads": torch.get_num_interop_threads(),
        **{name: os.environ.get(name, "unset") for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


PROBES: dict[str, Callable[[], dict[str, Any]]] = {  # in order: torch is imported before ONNX Runtime runs
    "lfvila": probe_lfvila,
    "packages": probe_packages,
    "torch": probe_torch,
    "cuda": probe_cuda,
    "onnxruntime": probe_onnxruntime,
    "deepspeed": probe_deepspeed,
    "decoders": probe_decoders,
    "threads": probe_threads,
}


def environment_report() -> dict[str, dict[str, Any]]:
    """Every probe's section; a probe that raises gives ``{"error": ...}`` and the rest still run."""
    report = {}
    for name, probe in PROBES.items():
        try:
            report[name] = probe()
        except Exception as exc:  # noqa: BLE001 - a broken library is a line of the report
            report[name] = {"error": _first_line(exc)}
    return report


def report_lines(report: dict[str, dict[str, Any]]) -> list[str]:
    """The report as text: a heading per section, ``key: value`` lines, lists one item a line."""
    lines = []
    for section, values in report.items():
        lines.append(section)
        for key, value in values.items():
            if isinstance(value, list) and len(", ".join(map(str, value))) > 60:
                lines.append(f"  {key}:")
                lines.extend(f"    {item}" for item in value)
            else:
                shown = ", ".join(map(str, value)) if isinstance(value, list) else value
                lines.append(f"  {key}: {shown}")
    return lines
