"""ONNX Runtime for the exported graphs: reading their metadata, one session factory, batched runs.

Imports numpy, onnx and onnxruntime only (no torch), so a serving process can use it alone.

* ``read_metadata(path)``: the ``lfvila.*`` metadata ``lfvila export`` stores in each file
  (graph, preprocessing, fixed sizes, precision, versions); a corrupt file or one lfvila did not
  export is a one-line ``OnnxFileError``.
* ``create_session(path, graph)``: CUDA when a GPU is really usable — decided from the created
  session's providers, since onnxruntime-gpu lists CUDA in ``get_available_providers()`` on
  machines without a GPU — and CPU otherwise, with one log line saying which (a warning when
  CUDA was asked for and could not start).
* ``OnnxGraph``: a session plus batched inference: inputs of any batch size are run in chunks of
  ``max_batch`` and the outputs concatenated. On CUDA each chunk goes through I/O binding (inputs
  copied to the GPU once as ``OrtValue``s, outputs allocated on the GPU and copied back once);
  ``session.run`` is the reference path, and ``io_binding=True`` forces binding on CPU too so the
  two can be compared anywhere (tests/test_export_qa.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import LfvilaError

log = logging.getLogger(__name__)


_warned_fallback = False


class OnnxFileError(LfvilaError):
    """An ONNX file that is unreadable, corrupt, or not the graph the caller expects."""


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


def create_session(path: str | Path, graph: Optional[str] = None, prefer_gpu: bool = True):
    """An ONNX Runtime session for an exported file: CUDA when a GPU is really usable, decided
    from the created session's providers, else CPU; one log line says which. ``graph``
    ("video", "text", "multiple_choice", "classification"): refuse a file of another graph."""
    import onnxruntime as ort

    global _warned_fallback
    if not Path(path).is_file():
        raise OnnxFileError(f"{path}: no such ONNX file")
    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # A CUDA provider that cannot start (no GPU, no CUDA libraries) logs an error per session; it
    # is reported once below instead. Errors of the session itself still raise.
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        read_metadata(path)  # a file that is not ONNX at all gets that one-line error
        raise OnnxFileError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    finally:
        ort.set_default_logger_severity(3)
    meta = session_metadata(session, path)  # from the session: the file is not parsed a second time
    if graph is not None and meta["graph"] != graph:
        raise OnnxFileError(f"{path}: holds the {meta['graph']} graph, not the {graph} graph")
    on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    if on_cuda or len(providers) == 1:
        log.info("%s: ONNX Runtime on %s", Path(path).name, "CUDA" if on_cuda else "CPU")
    else:  # CUDA was asked for and could not start: worth a warning (docs/engineering.md §4), once per process
        (log.info if _warned_fallback else log.warning)("%s: ONNX Runtime on CPU (the CUDA provider is installed but cannot run on this machine)", Path(path).name)
        _warned_fallback = True
    return session


class OnnxGraph:
    """One exported graph in ONNX Runtime, run in batches (I/O binding on CUDA)."""

    def __init__(self, path: str | Path, graph: Optional[str] = None, prefer_gpu: bool = True, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.path = Path(path)
        self.session = create_session(self.path, graph, prefer_gpu)
        self.metadata = session_metadata(self.session, self.path)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
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
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, self.device, 0))
        for name in self.output_names:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
