"""The ``export`` stage: a model artifact to ONNX, each graph checked against PyTorch in ONNX
Runtime (``export.py``).

Input: the model artifact named by ``model`` (``pretrain1``, ``pretrain2`` or ``finetune``).
Key: the whole config.
"""

from __future__ import annotations

from ..export import ExportConfig
from ..pipeline.stage import Stage, StageContext


def input_names(cfg: ExportConfig) -> tuple[str, ...]:
    """The model artifact exported."""
    return (cfg.model,)


def run(ctx: StageContext) -> dict:
    """ONNX export of a model artifact (encoders or the QA model), parity-checked in ONNX Runtime."""
    from ..export import export_onnx

    return export_onnx(ctx.inputs[ctx.config.model].path, ctx.out_dir, ctx.config)


def describe(summary: dict) -> str:
    """What was exported, at which size, and how close ONNX Runtime came to PyTorch."""
    parity = summary.get("parity") or {}
    diffs = parity.get("max_abs_diff") or {}
    worst = max(diffs.values()) if diffs else float("nan")
    graphs = summary.get("graphs") or {}
    fixed = next((g.get("fixed") for g in graphs.values() if g.get("fixed")), {})
    what = "video + text encoders" if "video" in graphs else f"{next(iter(graphs), '?').replace('_', '-')} QA model"
    agree = parity.get("same_ranking", parity.get("same_predictions"))
    return (
        f"{what} ({summary.get('precision', 'fp32')}), {fixed.get('frames', '?')} frames at {fixed.get('height', '?')}×{fixed.get('width', '?')}, "
        f"parity max |diff| {worst:.1e} at batch {parity.get('batch', '?')}, "
        f"{'ranking' if 'same_ranking' in parity else 'predictions'} {'same' if agree else 'DIFFERENT'}"
    )


STAGE = Stage(
    name="export",
    version=2,
    config_class=ExportConfig,
    run=run,
    inputs=("pretrain1", "pretrain2", "finetune"),
    select_inputs=input_names,
    describe=describe,
)
