"""The finished-model directory's files, below the model classes: ``config.json``'s lfvila keys,
the safetensors weights, where a directory comes from (a path or a hub id) and which device it
goes to; ``lfvila.LfvilaModel.from_pretrained`` / ``save_pretrained`` are built on them. The
format, and the functions that know the model classes: ``pretrained.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import from_dict, to_dict
from ..errors import ArtifactError, ConfigError, DeviceError
from ..hub import snapshot
from ..version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
MODEL_TYPE = "lfvila"
# The keys of config.json beside the LfvilaConfig's own (pretrained.py's docstring says what each holds).
MODEL_KEYS = ("model_type", "architectures", "lfvila_version", "torch_dtype", "task", "id2label", "preprocessing")


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, str]:
    """Save ``state`` with safetensors; a tensor shared under several names (tied weights) is
    stored once under its first name and the others are recorded as aliases in the metadata.
    Returns the aliases ``{alias: stored name}``."""
    from safetensors.torch import save_file

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = _storage_key(tensor) if tensor.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        stored[name] = tensor.to("cpu").contiguous().clone()
    save_file(stored, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases, sort_keys=True)})
    return aliases


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict written by ``save_weights``, aliases restored."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        for alias, name in aliases.items():
            state[alias] = state[name]
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such weights file") from None
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: unreadable weights file, truncated or corrupt ({detail})") from exc
    return state


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with floating-point tensors in float32 (how finished models are saved)."""
    return {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}


def model_info(architecture: str, task: Optional[str] = None, labels: Optional[list[str]] = None,
               preprocessing: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ``MODEL_KEYS`` of config.json for a model of class ``architecture``, with the task,
    classes and preprocessing where known (None: left out)."""
    info: dict[str, Any] = {"model_type": MODEL_TYPE, "architectures": [architecture], "lfvila_version": __version__, "torch_dtype": "float32"}
    if task:
        info["task"] = task
    if labels:
        info["id2label"] = {str(i): str(label) for i, label in enumerate(labels)}
    if preprocessing:
        info["preprocessing"] = dict(preprocessing)
    return info


def write_model(model: torch.nn.Module, config: Any, model_dir: Path, info: dict[str, Any]) -> None:
    """config.json (``info``'s keys first, then the config's) and model.safetensors (float32)."""
    (model_dir / CONFIG_FILE).write_text(json.dumps({**info, **to_dict(config)}, indent=2) + "\n", encoding="utf-8")
    save_weights(float_state(model), model_dir / WEIGHTS_FILE)


def read_config_json(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict: a JSON object whose ``model_type``, if any, is lfvila's."""
    path = model_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{model_dir}: cannot read {CONFIG_FILE} ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    model_type = data.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ArtifactError(f"{path}: model_type {model_type!r} is not an lfvila model ({MODEL_TYPE!r})")
    return data


def config_from(config_class: type, data: dict[str, Any]) -> Any:
    """The config of config.json's ``data``, the ``MODEL_KEYS`` set aside (every other key must
    be the config's own: ``from_dict`` is strict)."""
    return from_dict(config_class, {k: v for k, v in data.items() if k not in MODEL_KEYS})


def info_from(model_dir: Path, data: dict[str, Any], architecture: str) -> dict[str, Any]:
    """config.json's ``MODEL_KEYS`` for a model whose layout makes class ``architecture``; a
    directory written before they existed gets ``model_info(architecture)`` without a version
    (unknown, not made up). A class that contradicts the layout is an error."""
    info = model_info(architecture)
    info.pop("lfvila_version")
    info.update({k: data[k] for k in MODEL_KEYS if k in data})
    if info["architectures"] != [architecture]:
        raise ArtifactError(
            f"{model_dir / CONFIG_FILE}: architectures says {info['architectures']} but the heads and cross-modal encoder "
            f"it describes make a {architecture}"
        )
    return info


def load_strict(model: torch.nn.Module, model_dir: Path) -> torch.nn.Module:
    """``model`` with model.safetensors loaded, every tensor present and of its shape."""
    try:
        model.load_state_dict(load_weights(model_dir / WEIGHTS_FILE), strict=True)
    except RuntimeError as exc:  # torch lists every missing, unexpected and misshapen tensor
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise ArtifactError(f"{model_dir / WEIGHTS_FILE}: the weights do not fit the model {CONFIG_FILE} describes ({first[:200]})") from None
    return model


def resolve_model_dir(path_or_hub_id: str | Path, revision: Optional[str] = None) -> Path:
    """A local model directory: ``path_or_hub_id`` itself when it exists (a local path always
    wins), else the hub snapshot of that id (``hub.snapshot``: the local cache unless
    ``HF_HUB_OFFLINE=0``)."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ArtifactError(f"{path}: a file, not a model directory ({CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_DIR}/)")
        return path
    return snapshot(str(path_or_hub_id), revision=revision)


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``; None is the CPU. A CUDA device torch cannot use is a one-line error."""
    if device is None:
        return torch.device("cpu")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"a CPU build of torch {torch.__version__}" if torch.version.cuda is None else "torch sees no GPU"
            raise DeviceError(f"device {str(device)!r}: CUDA is not available here ({build}); use device 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r}: there are {torch.cuda.device_count()} CUDA devices")
    return resolved
