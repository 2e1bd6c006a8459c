"""The ``features`` stage: the frozen stage-1 video encoder's output tokens for stage 2, in a Zarr
feature store (``train/features.py``, ``data/featurestore.py``; docs/method.md §8).

Inputs: a ``cache`` artifact (the frames) and the ``pretrain1`` artifact whose video encoder stage
2 freezes. Key: ``views`` and the loader fields that shape a view (``loader_config.VIEW_FIELDS``);
with the inputs' keys, the store is addressed by the frame store and the stage-1 model it was
computed from. ``batch`` and ``device`` are policy. Resumable: rows fill in the partial directory
and a rerun encodes only the pending ones; under a multi-rank launch each rank encodes its own
rows (rank 0 creates the store and commits).

``pretrain2`` with ``features: true`` takes one as an input (``check_pretrain2`` refuses one made
from another frame store or stage-1 model, or with other view fields, before anything runs).
"""

from __future__ import annotations

from ..data.featurestore import STORE_NAME
from ..errors import ConfigError
from ..pipeline.artifacts import Artifact
from ..pipeline.plan import Planned
from ..pipeline.stage import Stage, StageContext
from ..train.config import FeaturesConfig
from .cache import corpus_of, frame_store_url

def feature_store_url(artifact: Artifact) -> str:
    """Where a features artifact's Zarr store lives."""
    return str(artifact.path / STORE_NAME)


def key_config(config: FeaturesConfig) -> dict:
    """``views`` and the loader's view fields: what the cached tokens depend on besides the inputs."""
    from ..data.loader_config import view_config

    return {"views": config.views, "loader": view_config(config.loader)}


def run(ctx: StageContext) -> dict:
    from ..train.features import build_features

    cache = ctx.inputs["cache"]
    return build_features(
        corpus_of(ctx.workdir, cache), frame_store_url(cache), ctx.inputs["pretrain1"].path, ctx.config,
        str(ctx.out_dir / STORE_NAME), rank=ctx.rank, world_size=ctx.world_size, progress=ctx.progress,
    )


def check(config: FeaturesConfig, inputs: dict) -> None:
    """Before anything runs: a store of clips whose frames are the stage-1 model's clips."""
    from .compat import model_facts, require_clip_frames, require_segment_mode

    require_segment_mode(inputs["cache"], "clips", "stage 2 draws windows of consecutive clips")
    require_clip_frames(inputs["cache"], model_facts(inputs["pretrain1"], fused=False), "segment")


def _same(a: Planned | None, b: Planned | None) -> bool:
    """The same input: the same artifact, or the same pipeline entry."""
    if a is None or b is None:
        return False
    if a.artifact is not None and b.artifact is not None:
        return a.artifact.key == b.artifact.key
    return a is b or (a.entry is not None and a.entry == b.entry)


def check_pretrain2(loader: dict, inputs: dict) -> None:
    """``pretrain2`` with ``features``: its feature input was made from the same frame store and
    stage-1 model, with the same view fields of the loader (``loader``: pretrain2's, as a dict)."""
    from ..data.loader_config import VIEW_FIELDS

    features = inputs["features"]
    for name in ("cache", "pretrain1"):
        if not _same(features.input(name), inputs[name]):
            made = features.input(name)
            raise ConfigError(
                f"input {features.label} holds the video tokens of {made.label if made else 'a gone ' + name}, "
                f"but this stage 2 reads {inputs[name].label}: run `lfvila features` on it"
            )
    theirs = features.config.get("loader") or {}
    for name in VIEW_FIELDS:
        if loader.get(name) != theirs.get(name):
            raise ConfigError(
                f"config key 'loader.{name}': {loader.get(name)!r} here, but input {features.label} drew its views with "
                f"{theirs.get(name)!r}: set the same in both"
            )


def describe(summary: dict) -> str:
    samples, rows = summary.get("samples") or {}, summary.get("rows") or {}
    parts = [f"{samples.get('train', '?')} train samples × {summary.get('views', '?')} views + {samples.get('val', 0)} val"]
    if summary.get("bytes_per_view"):
        parts.append(f"{summary['bytes_per_view'] / 1e3:.1f} kB per view (bf16)")
    if summary.get("views_per_s"):
        parts.append(f"{summary['encoded_this_run']} encoded at {summary['views_per_s']} views/s")
    elif rows:
        parts.append(f"{sum(rows.values())} rows")
    return ", ".join(parts)


STAGE = Stage(
    name="features",
    version=1,
    config_class=FeaturesConfig,
    run=run,
    inputs=("cache", "pretrain1"),
    key_config=key_config,
    policy_fields=("batch", "device"),
    resumable=True,
    describe=describe,
    check=check,
)
