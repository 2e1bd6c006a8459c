"""ONNX Runtime for the exported graphs: reading their metadata, one session factory, batched runs.

Imports numpy, onnx and onnxruntime only (no torch), so a serving process can use it alone.

* ``read_metadata(path)``: the ``lfvila.*`` metadata ``lfvila export`` stores in each file
  (graph, preprocessing, fixed sizes, precision, versions); a corrupt file or one lfvila did not
  export is a one-line ``OnnxFileError``.
* ``create_session(path, graph, device)``: ``device`` "auto" (the default) runs on CUDA when
  ONNX Runtime's CUDA provider really starts — decided from the created session's providers,
  since onnxruntime-gpu lists CUDA in ``get_available_providers()`` on machines without a GPU —
  and on the CPU otherwise; "cuda" / "cuda:N" requires CUDA (a one-line ``DeviceError`` where it
  cannot run, never a silent CPU run); "cpu" never tries CUDA. One log line says which. The
  fallback of "auto" is a warning (once per process) only where a GPU is present
  (``gpu_present``: broken CUDA libraries are worth saying); on a machine without one it is an
  INFO line, so CPU users of onnxruntime-gpu see nothing.
* ``cuda_provider_runs()``: whether the CUDA provider runs a tiny graph built in memory (``lfvila env``).
* ``OnnxGraph``: a session plus batched inference: inputs of any batch size are run in chunks of
  ``max_batch`` and the outputs concatenated. On CUDA each chunk goes through I/O binding (inputs
  copied to the GPU once as ``OrtValue``s, outputs allocated on the GPU and copied back once);
  ``session.run`` is the reference path, and ``io_binding=True`` forces binding on CPU too so the
  two can be compared anywhere (tests/test_export_qa.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import ConfigError, DeviceError, LfvilaError  # noqa: F401 (DeviceError: imported from here too)

log = logging.getLogger(__name__)


_warned_fallback = False


class OnnxFileError(LfvilaError):
    """An ONNX file that is unreadable, corrupt, or not the graph the caller expects."""


DEVICES = "auto, cpu, cuda or cuda:N"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> (kind, index); anything else is a
    one-line ``ConfigError``. Torch-free: the ONNX Runtime and the PyTorch paths both read it."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return kind, int(index or 0)
    raise ConfigError(f"device {device!r}: expected {DEVICES}")


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this machine: its device file or ``nvidia-smi`` (loads no CUDA
    library, so it is cheap enough to ask before every warning)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def ort_cuda_build() -> Optional[str]:
    """The CUDA version this ONNX Runtime was built for (None: a CPU-only package)."""
    from onnxruntime.capi import build_and_package_info

    return getattr(build_and_package_info, "cuda_version", None) or None


def _cuda_missing() -> str:
    """Why CUDA cannot run on ONNX Runtime here, in words (for a one-line error)."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu instead of onnxruntime)"
    where = "a GPU is present" if gpu_present() else "no NVIDIA GPU is visible (no /dev/nvidia0, no nvidia-smi)"
    return f"ONNX Runtime's CUDA provider (built for CUDA {ort_cuda_build()}) cannot start: {where}; `lfvila env` says more"


def cuda_provider_runs(device_id: int = 0) -> tuple[bool, str]:
    """Whether ONNX Runtime's CUDA provider really runs a graph: a one-node graph (y = x + x) built
    in memory, run with the CUDA provider alone and checked. Returns (runs, what happened)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if CUDA not in ort.get_available_providers():
        return False, "no CUDA provider in this build"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = _quiet_session(model.SerializeToString(), [(CUDA, {"device_id": str(device_id)})])
    used = session.get_providers()[0]
    (out,) = session.run(None, {"x": np.arange(4, dtype=np.float32)})
    if used != CUDA:
        return False, f"the session fell back to {used}"
    if not np.array_equal(out, 2 * np.arange(4, dtype=np.float32)):
        return False, f"wrong result on {used}: {out.tolist()}"
    return True, f"a graph ran on {used} (device {device_id})"


def _quiet_session(model, providers: list):
    """An InferenceSession whose CUDA provider, if it cannot start, logs nothing: the caller
    reports that once, in its own words. Errors of the session itself still raise."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    finally:
        ort.set_default_logger_severity(3)


def _parse_metadata(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith("lfvila."):
            try:
                out[key[len("lfvila."):]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[len("lfvila."):]] = value
    if "graph" not in out:
        raise OnnxFileError(f"{path}: an ONNX file without lfvila metadata (not exported by lfvila export)")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``lfvila.*`` metadata of an exported file; a corrupt file is a one-line error.
    (Parses the whole file, weights included; an open session has it: ``session_metadata``.)"""
    import onnx

    if not Path(path).is_file():
        raise OnnxFileError(f"{path}: no such ONNX file")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise OnnxFileError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    return _parse_metadata({entry.key: entry.value for entry in graph.metadata_props}, path)


def session_metadata(session, path: str | Path = "the session's model") -> dict[str, Any]:
    """The ``lfvila.*`` metadata of an open ONNX Runtime session's model."""
    return _parse_metadata(dict(session.get_modelmeta().custom_metadata_map), path)


def create_session(path: str | Path, graph: Optional[str] = None, device: str = "auto"):
    """An ONNX Runtime session for an exported file on ``device`` ("auto", "cpu", "cuda",
    "cuda:N"; see the module docstring), decided from the created session's providers; one log
    line says which. ``graph`` ("video", "text", "multiple_choice", "classification"): refuse a
    file of another graph."""
    import onnxruntime as ort

    global _warned_fallback
    kind, index = parse_device(device)
    if not Path(path).is_file():
        raise OnnxFileError(f"{path}: no such ONNX file")
    listed = CUDA in ort.get_available_providers()
    if kind == "cuda" and not listed:
        raise DeviceError(f"device {device!r}: {_cuda_missing()}")
    providers = [(CUDA, {"device_id": str(index)}), CPU] if kind != "cpu" and listed else [CPU]
    try:
        session = _quiet_session(str(path), providers)
    except Exception as exc:
        read_metadata(path)  # a file that is not ONNX at all gets that one-line error
        raise OnnxFileError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    meta = session_metadata(session, path)  # from the session: the file is not parsed a second time
    if graph is not None and meta["graph"] != graph:
        raise OnnxFileError(f"{path}: holds the {meta['graph']} graph, not the {graph} graph")
    on_cuda = session.get_providers()[0] == CUDA
    if kind == "cuda" and not on_cuda:
        raise DeviceError(f"device {device!r}: {_cuda_missing()}")
    name = Path(path).name
    if on_cuda or len(providers) == 1:
        log.info("%s: ONNX Runtime on %s", name, f"CUDA device {index}" if on_cuda else "CPU")
    elif gpu_present() and not _warned_fallback:  # a GPU that CUDA cannot use: worth a warning, once (docs/engineering.md §4)
        log.warning("%s: ONNX Runtime on CPU: a GPU is present but the CUDA provider cannot start (CUDA %s libraries?); `lfvila env` says more", name, ort_cuda_build())
        _warned_fallback = True
    else:  # no GPU here: the CPU is what "auto" means, onnxruntime-gpu installed or not
        log.info("%s: ONNX Runtime on CPU (no usable GPU)", name)
    return session


class OnnxGraph:
    """One exported graph in ONNX Runtime, run in batches (I/O binding on CUDA)."""

    def __init__(self, path: str | Path, graph: Optional[str] = None, device: str = "auto", max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.path = Path(path)
        self.session = create_session(self.path, graph, device)
        self.metadata = session_metadata(self.session, self.path)
        on_cuda = self.session.get_providers()[0] == CUDA
        self.device = "cuda" if on_cuda else "cpu"
        self.device_id = parse_device(device)[1] if on_cuda else 0
        self.max_batch = max_batch
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, io_binding: Optional[bool] = None, **inputs: np.ndarray) -> list[np.ndarray]:
        """Named inputs sharing a batch axis 0 -> the outputs, in ``output_names`` order.
        ``io_binding``: None = on CUDA only."""
        missing = sorted(set(self.input_names) - set(inputs))
        extra = sorted(set(inputs) - set(self.input_names))
        if missing or extra:
            raise ValueError(f"{self.path.name} takes inputs {self.input_names}; missing {missing}, unexpected {extra}")
        sizes = {name: value.shape[0] for name, value in inputs.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{self.path.name}: inputs disagree on the batch size: {sizes}")
        total = next(iter(sizes.values()))
        bound = self.device == "cuda" if io_binding is None else io_binding
        chunks = []
        for start in range(0, total, self.max_batch):
            part = {name: np.ascontiguousarray(value[start : start + self.max_batch]) for name, value in inputs.items()}
            chunks.append(self._run_bound(part) if bound else self.session.run(self.output_names, part))
        if not chunks:
            raise ValueError(f"{self.path.name}: an empty batch")
        return [np.concatenate([chunk[i] for chunk in chunks]) if len(chunks) > 1 else chunks[0][i] for i in range(len(self.output_names))]

    def _run_bound(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, self.device, self.device_id))
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
