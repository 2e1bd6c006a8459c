"""The ``index`` stage: embed every video of a frame store for ``lfvila search`` (``search.py``).

Inputs: a ``cache`` artifact (``segment_mode=chunks``) and the encoders: an ``export``
artifact (``engine=onnx``) or a ``pretrain1`` model (``engine=torch``). Key: the config but
``batch`` and ``device``, and ``precision`` only for engine torch and not at fp32 (indexes made
before it existed ran in fp32). Resumable.
"""

from __future__ import annotations

from typing import Optional

from ..config import omit_when, to_dict
from ..errors import ConfigError
from ..pipeline.artifacts import KEY_CHARS, Workdir
from ..pipeline.runner import check_inputs
from ..pipeline.stage import Stage, StageContext
from ..search import IndexConfig
from .cache import frame_store_url


def input_names(cfg: IndexConfig) -> tuple[str, ...]:
    """The frames, and the encoders of the engine used."""
    return ("cache", "export") if cfg.engine == "onnx" else ("cache", "pretrain1")


def key_config(cfg: IndexConfig) -> dict:
    """The config as the key has it: ``precision`` left out for ONNX (the graphs run at their
    exported precision) and at fp32 (every index before the setting existed)."""
    own = to_dict(cfg)
    if cfg.engine == "onnx":
        del own["precision"]
    return omit_when(own, precision="fp32")


def run(ctx: StageContext) -> dict:
    """Embed a chunks frame store for search (ONNX Runtime or PyTorch), resumable. Under a
    multi-rank launch rank 0 indexes alone (the others wait for its commit): one ONNX Runtime
    process, and no two processes creating the same Zarr arrays."""
    from ..search import build_index

    if ctx.rank != 0:
        return {}
    source = ctx.inputs["export" if ctx.config.engine == "onnx" else "pretrain1"].path
    return build_index(frame_store_url(ctx.inputs["cache"]), source, ctx.config, ctx.out_dir, progress=ctx.progress)


def check(config: IndexConfig, inputs: dict) -> None:
    """Before anything runs: a chunks store whose videos the encoders take as they are (the ONNX
    graphs' fixed frame count and size; the PyTorch model's frames per clip)."""
    from .compat import model_facts, require_clip_frames, require_segment_mode
    from .export import exported_frames

    cache = inputs["cache"]
    require_segment_mode(cache, "chunks", "search indexes whole videos")
    k, n = int(cache.config.get("frames_per_segment", 0)), int(cache.config.get("num_chunks") or 0)
    size = (n * k, int(cache.config.get("height", 0)), int(cache.config.get("width", 0)))
    if config.engine == "onnx":
        export = inputs["export"]
        try:
            made = exported_frames(export.config, export.input(export.config.get("model", "pretrain1")))
        except ConfigError:
            return  # the export stage reports an export it cannot size
        if (made["frames"], made["height"], made["width"]) != size:
            raise ConfigError(
                f"input {export.label} takes {made['frames']} frames at {made['height']}×{made['width']}, but the frame store {cache.label} "
                f"gives {size[0]} at {size[1]}×{size[2]}: export with --set frames={size[0]} --set height={size[1]} --set width={size[2]}"
            )
    else:
        require_clip_frames(cache, model_facts(inputs["pretrain1"], fused=False), "chunk")


def describe(summary: dict) -> str:
    rate = summary.get("videos_per_s")
    return f"{summary.get('videos', '?')} videos indexed with {summary.get('engine', '?')}" + (f" ({rate} videos/s)" if rate else "")


def query_index(
    workdir: Workdir, ref: str, sentences: list[str], top_k: int, device: str = "auto", precision: Optional[str] = None,
) -> list[dict]:
    """``lfvila search``: the ``top_k`` videos of the index artifact ``ref`` that best match the
    paragraph ``sentences``, through the encoders it was built with (``search.query``) on
    ``device``, at ``precision`` (None: the index's own, ``search.query``)."""
    from ..search import query

    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    artifact = workdir.resolve("index", ref)
    engine = artifact.config.get("engine", "onnx")
    source = workdir.input_of(artifact, "export" if engine == "onnx" else "pretrain1")
    if source is None:
        raise ConfigError(f"the model the index {artifact.key[:KEY_CHARS]} was built with is gone")
    check_inputs({"index": artifact, source.stage: source})
    return query(artifact.path, source.path, engine, sentences, top_k, device, precision)


STAGE = Stage(
    name="index",
    version=1,
    config_class=IndexConfig,
    run=run,
    inputs=("cache", "export", "pretrain1"),
    select_inputs=input_names,
    key_config=key_config,
    policy_fields=("batch", "device"),
    resumable=True,
    describe=describe,
    check=check,
)
