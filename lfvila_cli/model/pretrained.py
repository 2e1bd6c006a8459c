"""A finished model directory: what pre-training and fine-tuning write and everything else reads.

    config.json          the ``LfvilaConfig`` (``lfvila_cli.config.to_dict``) and, beside it, what a
                         loader needs to know without the pipeline (``MODEL_KEYS``):
                           model_type      "lfvila"
                           architectures   [the class: "LfvilaForRetrieval", ...]
                           lfvila_version  the version that wrote it
                           torch_dtype     "float32" (how the weights are stored)
                           task            the fine-tuning task ("how2qa", "anet-qa", ...), when known
                           id2label        {"0": answer, ...}: a classifier's classes, when known
                           preprocessing   image_mean, image_std (the normalisation the model was
                                           trained with); frames, height, width (its input)
    model.safetensors    the state dict; a tensor shared under several names (tied weights) is
                         stored once, the other names are recorded as aliases in the metadata
    tokenizer/           the tokenizer the model was trained with (``data/tokenizer.py``)

Directories written before those keys existed (the ``LfvilaConfig`` alone) still load: their
class follows from the layout (``lfvila.model_class``). ``load_pretrained`` rebuilds the model
strictly; every model class has ``from_pretrained`` (a local directory or a hub id, offline by
default: ``lfvila_cli.hub``) and ``save_pretrained`` (``lfvila.LfvilaModel``; the files
themselves are read and written in ``files.py``, below the model classes); ``load_stage1_into``
loads a stage-1 model into a stage-2 model (strict on the stage-1 parts); ``load_pretrained_into``
copies the tensors a task model shares with a pre-trained one. A missing, truncated or corrupt
file is a one-line ``ArtifactError`` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import LfvilaError
from .files import (  # noqa: F401  (the model directory's names, for its readers)
    CONFIG_FILE,
    MODEL_KEYS,
    MODEL_TYPE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    config_from,
    float_state,
    info_from,
    load_strict,
    load_weights,
    model_info,
    read_config_json,
    resolve_device,
    resolve_model_dir,
    save_weights,
    write_model,
)


def save_pretrained(
    model: torch.nn.Module, config: Any, model_dir: str | Path, *, task: Optional[str] = None,
    labels: Optional[list[str]] = None, preprocessing: Optional[dict[str, Any]] = None,
) -> None:
    """Write ``config.json`` (the ``MODEL_KEYS``: the class from the config's layout, the
    version, the task, a classifier's ``labels`` and the ``preprocessing`` where known; then the
    config) and ``model.safetensors`` (float32) into ``model_dir``; the tokenizer is saved by
    whoever chose it."""
    from .lfvila import model_class

    write_model(model, config, Path(model_dir), model_info(model_class(config).__name__, task, labels, preprocessing))


def read_config(model_dir: str | Path):
    """The ``LfvilaConfig`` of a model directory (the ``MODEL_KEYS`` set aside)."""
    from .lfvila import LfvilaConfig

    return config_from(LfvilaConfig, read_config_json(Path(model_dir)))


def read_model_info(model_dir: str | Path) -> dict[str, Any]:
    """The ``MODEL_KEYS`` of a model directory (``files.info_from``: old directories too)."""
    from .lfvila import model_class

    model_dir = Path(model_dir)
    return info_from(model_dir, read_config_json(model_dir), model_class(read_config(model_dir)).__name__)


def load_pretrained(model_dir: str | Path):
    """Rebuild a finished model: ``config.json`` + ``model.safetensors`` (strict), of the class its
    layout makes, in train mode on the CPU (``LfvilaModel.from_pretrained``: eval mode, a device,
    hub ids)."""
    from .lfvila import build_model

    model_dir = Path(model_dir)
    return load_strict(build_model(read_config(model_dir)), model_dir)


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


def choice_head_from_vtm(head, state: dict[str, torch.Tensor]) -> bool:
    """Start a multiple-choice ``head``'s candidate scorer as the video-text matching head of a
    pre-trained ``state``: the logit of "matched" minus that of "mismatched", so that before any
    fine-tuning each candidate scores as VTM judges it with the video. False (the head untouched)
    where the state has no VTM head (a retrieval model; a stage-1 model keeps an untrained one)."""
    weight, bias = state.get("vtm_head.classifier.weight"), state.get("vtm_head.classifier.bias")
    if weight is None or bias is None:
        return False
    with torch.no_grad():
        head.classifier.weight.copy_((weight[1] - weight[0])[None])
        head.classifier.bias.copy_((bias[1] - bias[0])[None])
    return True


def load_pretrained_into(model, model_dir: str | Path, choice_head_vtm: bool = False) -> dict[str, Any]:
    """Copy a pre-trained model directory's weights into a task ``model``: every tensor both have
    (same name) must have the same shape; the directory's extra tensors (heads the task does not
    use) are left out and the task's own (new heads) stay freshly initialised, except, with
    ``choice_head_vtm``, the multiple-choice scorer (``choice_head_from_vtm``). Returns counts
    and the fresh parameter groups (and with ``choice_head_vtm``, ``choice_head``: how it started)."""
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
    report = {"loaded": len(shared), "left_out": len(state) - len(shared), "fresh": fresh}
    if choice_head_vtm:
        from_vtm = choice_head_from_vtm(model.multiple_choice_head, state)
        report["choice_head"] = "vtm" if from_vtm else "fresh (the pre-trained model has no VTM head)"
    return report
