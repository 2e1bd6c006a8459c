"""The ``export`` stage: a model artifact to ONNX, each graph checked against PyTorch in ONNX
Runtime (``export.py``).

Input: the model artifact named by ``model`` (``pretrain1``, ``pretrain2`` or ``finetune``).
Key: the whole config, with ``frames``, ``height`` and ``width`` left at 0 replaced by what the
model was trained on (``complete``), so that stating them or not gives the same key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from ..config import check
from ..data.loader_config import LoaderConfig
from ..errors import ConfigError
from ..pipeline.artifacts import Artifact, Workdir
from ..pipeline.plan import Planned
from ..pipeline.stage import Stage, StageContext


# fp32, fp16: max |onnx − torch|; int8: max cosine deviation (1 − cos) from the fp32 graph's
# embeddings, whose own check against PyTorch keeps 1e-4 (docs/engineering.md §8).
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-2}


@dataclass
class ExportConfig:
    model: str = "pretrain1"  # the model artifact's stage: pretrain1 | pretrain2 | finetune (retrieval or QA)
    # The graph's fixed frame count (clips × frames per clip) and frame size; 0 = as the model was
    # trained (the export stage reads them from the model's frame store: stages/export.py).
    frames: int = 0
    height: int = 0
    width: int = 0
    opset: int = 18
    # fp16: fp16 weights and compute, float32 inputs / outputs (GPU serving); int8: the encoders'
    # MatMul weights in int8, dynamic quantization (CPU serving; docs/engineering.md §8)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    # parity: max |onnx − torch| (fp32, fp16), max 1 − cos against the fp32 graph (int8);
    # None = 1e-4 (fp32), 1e-2 (fp16), 1e-2 (int8)
    tolerance: Optional[float] = None

    def __post_init__(self) -> None:
        check(self.model in ("pretrain1", "pretrain2", "finetune"), "model", f"expected pretrain1, pretrain2 or finetune, got {self.model!r}")
        check(self.frames >= 0, "frames", f"must be >= 0 (0 = as the model was trained), got {self.frames}")
        check(self.height == 0 or self.height >= 8, "height", f"must be >= 8 (or 0 = as the model was trained), got {self.height}")
        check(self.width == 0 or self.width >= 8, "width", f"must be >= 8 (or 0 = as the model was trained), got {self.width}")
        check(17 <= self.opset <= 21, "opset", f"must be between 17 and 21, got {self.opset}")
        check(self.precision in DEFAULT_TOLERANCE, "precision", f"expected fp32, fp16 or int8, got {self.precision!r}")
        check(self.tolerance is None or self.tolerance > 0, "tolerance", f"must be > 0, got {self.tolerance}")

    @property
    def max_diff(self) -> float:
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE[self.precision]

    @property
    def graph_max_diff(self) -> float:
        """The tolerance of the graphs against PyTorch: int8 checks its fp32 graphs first, at fp32's."""
        return DEFAULT_TOLERANCE["fp32"] if self.precision == "int8" else self.max_diff


def input_names(cfg: ExportConfig) -> tuple[str, ...]:
    """The model artifact exported."""
    return (cfg.model,)


def trained_frames(workdir: Optional[Workdir], model: Artifact | Planned) -> dict[str, int]:
    """``{frames, height, width}`` a model (an artifact, or a pipeline entry not run yet) was
    trained on, from the frame store it was trained on: its frame size, and its frames per sample
    (chunks × frames per chunk for a task store, the training window's clips × frames per clip
    for a pre-training store)."""
    if isinstance(model, Artifact):
        model = Planned.of_artifact(workdir, model)
    cache = model.input("cache")
    if cache is None:
        raise ConfigError(
            f"config keys 'frames', 'height', 'width': the frame store {model.label} was trained on "
            "is gone, so its frame size is unknown; set them"
        )
    store = cache.config
    per_clip = int(store["frames_per_segment"])
    if store.get("segment_mode") == "chunks":
        clips = int(store["num_chunks"])
    else:
        clips = int((model.config.get("loader") or {}).get("clips_per_sample", LoaderConfig().clips_per_sample))
    return {"frames": clips * per_clip, "height": int(store["height"]), "width": int(store["width"])}


def complete(workdir: Workdir, config: ExportConfig, inputs: dict[str, Artifact]) -> ExportConfig:
    """The config with ``frames``, ``height`` and ``width`` left at 0 set to what the model was
    trained on."""
    unset = [name for name in ("frames", "height", "width") if not getattr(config, name)]
    if not unset:
        return config
    trained = trained_frames(workdir, inputs[config.model])
    return dataclasses.replace(config, **{name: trained[name] for name in unset})


def exported_frames(config: dict, model: Optional[Planned]) -> dict[str, int]:
    """``{frames, height, width}`` an export config (a dict) gives its graphs: those it sets, the
    rest (0) as the model was trained."""
    given = {name: int(config.get(name) or 0) for name in ("frames", "height", "width")}
    if all(given.values()):
        return given
    if model is None:
        raise ConfigError("config keys 'frames', 'height', 'width': the exported model is gone, so its frame size is unknown")
    trained = trained_frames(None, model)
    return {name: given[name] or trained[name] for name in given}


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
    line = (
        f"{what} ({summary.get('precision', 'fp32')}), {fixed.get('frames', '?')} frames at {fixed.get('height', '?')}×{fixed.get('width', '?')}, "
        f"parity max |diff| {worst:.1e} at batch {parity.get('batch', '?')}, "
        f"{'ranking' if 'same_ranking' in parity else 'predictions'} {'same' if agree else 'DIFFERENT'}"
    )
    int8 = summary.get("int8")
    if int8:  # the fp32 figures above are the fp32 graph's, which the int8 one is judged against
        line += (
            f"; int8 against fp32: max 1 − cos {max(int8['cosine_deviation'].values()):.1e}, "
            f"top-1 agreement {int8['top1_agreeing']}/{int8['batch']}"
        )
    return line


STAGE = Stage(
    name="export",
    version=2,
    config_class=ExportConfig,
    run=run,
    inputs=("pretrain1", "pretrain2", "finetune"),
    select_inputs=input_names,
    describe=describe,
    complete=complete,
)
