"""A finished model directory: what pre-training and fine-tuning write and everything else reads.

    config.json          the ``LfvilaConfig`` (``lfvila_cli.config.to_dict``)
    model.safetensors    the state dict; a tensor shared under several names (tied weights) is
                         stored once, the other names are recorded as aliases in the metadata
    tokenizer/           the tokenizer the model was trained with (``data/tokenizer.py``)

``load_pretrained`` rebuilds the model strictly; ``load_stage1_into`` loads a stage-1 model into
a stage-2 model (strict on the stage-1 parts); ``load_pretrained_into`` copies the tensors a
task model shares with a pre-trained one. A missing, truncated or corrupt file is a one-line
``ArtifactError`` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import from_dict, to_dict
from ..errors import ArtifactError, LfvilaError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


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


def save_pretrained(model: torch.nn.Module, config: Any, model_dir: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` (float32) into ``model_dir``; the tokenizer
    is saved by whoever chose it."""
    model_dir = Path(model_dir)
    (model_dir / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2) + "\n", encoding="utf-8")
    save_weights(float_state(model), model_dir / WEIGHTS_FILE)


def read_config(model_dir: str | Path):
    """The ``LfvilaConfig`` of a model directory."""
    from .lfvila import LfvilaConfig

    model_dir = Path(model_dir)
    try:
        return from_dict(LfvilaConfig, json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8")))
    except OSError as exc:
        raise LfvilaError(f"{model_dir}: cannot read {CONFIG_FILE} ({exc.strerror or exc})") from None


def load_pretrained(model_dir: str | Path):
    """Rebuild a finished model: ``config.json`` + ``model.safetensors`` (strict)."""
    from .lfvila import build_model

    model_dir = Path(model_dir)
    model = build_model(read_config(model_dir))
    try:
        model.load_state_dict(load_weights(model_dir / WEIGHTS_FILE), strict=True)
    except RuntimeError as exc:  # torch lists every missing, unexpected and misshapen tensor
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise ArtifactError(f"{model_dir / WEIGHTS_FILE}: the weights do not fit the model {CONFIG_FILE} describes ({first[:200]})") from None
    return model


def load_stage1_into(model, stage1_dir: str | Path) -> dict[str, int]:
    """Load a stage-1 model directory's weights into a stage-2 ``model``: every tensor of the file
    must exist in the model with the same shape, and every tensor a stage-1 model of the same
    configuration has must be in the file (strict on the stage-1 parts)."""
    from .lfvila import build_model

    stage1_dir = Path(stage1_dir)
    weights = stage1_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise LfvilaError(f"--init-from {stage1_dir}: no {WEIGHTS_FILE} (is it a finished stage-1 artifact?)")
    state = load_weights(weights)
    expected = set(build_model(read_config(stage1_dir), device="meta").state_dict())
    own = model.state_dict()
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"not in the stage-2 model {len(unexpected)} (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"shape mismatch {len(wrong)} (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise LfvilaError(f"--init-from {stage1_dir}: the stage-1 weights do not fit this model: {'; '.join(parts)}")
    result = model.load_state_dict(state, strict=False)
    return {"loaded": len(state), "fresh": len(result.missing_keys)}


def load_pretrained_into(model, model_dir: str | Path) -> dict[str, Any]:
    """Copy a pre-trained model directory's weights into a task ``model``: every tensor both have
    (same name) must have the same shape; the directory's extra tensors (heads the task does not
    use) are left out and the task's own (new heads) stay freshly initialised. Returns counts
    and the fresh parameter groups."""
    model_dir = Path(model_dir)
    state = load_weights(model_dir / WEIGHTS_FILE)
    own = model.state_dict()
    wrong = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if wrong:
        k = wrong[0]
        raise LfvilaError(
            f"{model_dir}: {len(wrong)} tensors do not fit the task model (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        )
    shared = {k: v for k, v in state.items() if k in own}
    if not shared:
        raise LfvilaError(f"{model_dir}: no tensor of the pre-trained model fits the task model")
    model.load_state_dict(shared, strict=False)
    fresh = sorted({k.split(".")[0] for k in own if k not in shared})  # top-level modules
    return {"loaded": len(shared), "left_out": len(state) - len(shared), "fresh": fresh}
