"""The nine stages, one module each: its config, inputs, key, checks, summary line and body.

    prepare    annotations -> corpus                       (prepare.py)
    cache      corpus -> Zarr frame store                  (cache.py)
    pretrain1  frames -> stage-1 model (VPC + MTC)         (pretrain.py)
    features   frames + stage-1 model -> video tokens      (features.py)
    pretrain2  frames + stage-1 model -> stage-2 model     (pretrain.py)
    finetune   task frames + pre-trained model -> task model (finetune.py)
    evaluate   task frames + model -> report               (evaluate.py)
    export     model -> ONNX graphs                        (export.py)
    index      frames + encoders -> search index           (index.py)

``STAGES`` lists them in pipeline order; the machinery that runs them is ``lfvila_cli.pipeline``.
Heavy libraries are imported inside the bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..pipeline import chain, status
from ..pipeline.artifacts import Workdir
from ..pipeline.stage import Stage, StageResult
from . import cache, evaluate, export, features, finetune, index, prepare, pretrain

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (prepare.STAGE, cache.STAGE, pretrain.STAGE1, features.STAGE, pretrain.STAGE2, finetune.STAGE, evaluate.STAGE, export.STAGE, index.STAGE)
}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage '{name}' (known: {', '.join(STAGES)})") from None


def run_pipeline(workdir: Workdir, path: str | Path, *, overrides=(), force: bool = False, dry_run: bool = False,
                 progress: bool = True, echo: Callable[[str], None] = print) -> list[StageResult]:
    """Run a pipeline file over these stages (``pipeline.chain.run_pipeline``)."""
    return chain.run_pipeline(workdir, path, STAGES, overrides=overrides, force=force, dry_run=dry_run, progress=progress, echo=echo)


def load_pipeline(path: str | Path) -> list[chain.Entry]:
    return chain.load_pipeline(path, STAGES)


def status_rows(workdir: Workdir) -> list[dict]:
    """``lfvila status``: every artifact of the work directory and whether it is current."""
    return status.status_rows(workdir, STAGES)


def artifact_state(workdir: Workdir, artifact) -> str:
    return status.artifact_state(workdir, artifact, STAGES)
