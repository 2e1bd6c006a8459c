"""Stages as data, and the runner that keys, skips, writes and commits them.

A stage declares its contract (docs/engineering.md §1): name, version (bumped by hand when the meaning of
its output changes), config dataclass, input stages, raw-input fingerprints and a ``run``
function. ``run_stage`` computes the key, reports a hit in one line, or runs the stage into a
temporary (or, for resumable stages, a ``.partial``) directory and commits it atomically.
``run_pipeline`` runs a YAML chain of stages, each fed by the previous stage's artifact.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .artifacts import KEY_CHARS, Artifact, Workdir, compute_key, file_checksums, file_digest, remove_temp_files, verify_files, work_key
from .config import from_dict, load_yaml, parse_override, to_dict
from .errors import ArtifactError, ConfigError, LfvilaError
from .locks import FileLock, describe_holder, holder_gone

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    workdir: Workdir
    config: Any
    inputs: dict[str, Artifact]
    out_dir: Path
    key: str
    rank: int = 0
    world_size: int = 1
    progress: bool = True
    force: bool = False  # rebuilding an artifact of this key: resumable stages start their partial work afresh
    key_payload: dict = field(default_factory=dict)  # what the key was computed from (its fingerprints included)


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    config_path: str  # "module:Class", imported lazily so `lfvila --help` stays instant
    run_path: str  # "module:function(ctx) -> summary dict"
    inputs: tuple[str, ...] = ()
    fingerprints_path: str | None = None  # "module:function(config, inputs) -> dict"
    key_config_path: str | None = None  # "module:function(config) -> dict"; default: whole config
    policy_fields: tuple[str, ...] = ()  # config fields that do not change the output
    resumable: bool = False  # keep the partial directory across runs and resume in it
    verify_path: str | None = None  # "module:function(artifact) -> problem | None", checked on a hit
    fixed: dict = field(default_factory=dict)  # config values the stage itself sets (pretrain1: stage=1)
    # one-line summary of an artifact: a callable, or "module:function(summary) -> str" imported lazily
    describe: Callable[[dict], str] | str = field(default=lambda summary: "")
    # "module:function(config) -> tuple of input stage names" when the inputs depend on the config
    # (finetune: the pre-training stage it starts from, or none); default: ``inputs``.
    inputs_path: str | None = None

    @property
    def config_cls(self) -> type:
        return _load(self.config_path)

    def summary_line(self, summary: dict) -> str:
        describe = _load(self.describe) if isinstance(self.describe, str) else self.describe
        return describe(summary)

    def input_names(self, config: Any) -> tuple[str, ...]:
        return tuple(_load(self.inputs_path)(config)) if self.inputs_path else self.inputs

    def key_payload(self, config: Any, inputs: dict[str, Artifact]) -> dict:
        if self.key_config_path:
            own = _load(self.key_config_path)(config)
        else:
            own = to_dict(config)
        for name in self.policy_fields:
            own.pop(name, None)
        fingerprints = _load(self.fingerprints_path)(config, inputs) if self.fingerprints_path else {}
        return {
            "stage": self.name,
            "version": self.version,
            "config": own,
            "inputs": {name: artifact.manifest.get("key", artifact.key) for name, artifact in sorted(inputs.items())},
            "fingerprints": fingerprints,
        }


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _describe_prepare(summary: dict) -> str:
    counts = summary.get("splits", {})
    splits = ", ".join(f"{k} {counts[k]}" for k in ("train", "val", "test") if counts.get(k))
    rejected = f", {summary['rejected']} rejected" if summary.get("rejected") else ""
    return f"{summary.get('samples', '?')} samples ({splits}), {summary.get('segments', '?')} segments{rejected}"


def _describe_pretrain(summary: dict) -> str:
    parts = [f"{summary.get('steps', '?')} steps"]
    val = summary.get("val") or {}
    if "R@1" in val:
        parts.append(f"val R@1 {val['R@1']:.3f} (chance {val.get('chance_R@1', float('nan')):.3f})")
    if "temporal_order_accuracy" in val:
        parts.append(f"temporal-order accuracy {val['temporal_order_accuracy']:.3f}")
    for name in ("mlm_accuracy", "vtm_accuracy"):
        if name in val:
            parts.append(f"{name.replace('_', ' ')} {val[name]:.3f}")
    return ", ".join(parts)


def _describe_cache(summary: dict) -> str:
    return f"{summary.get('ok', '?')}/{summary.get('rows', '?')} segments cached, {summary.get('failed', 0)} failed"


def _pretrain_stage(number: int, inputs: tuple[str, ...]) -> Stage:
    """``pretrain1`` / ``pretrain2``: one config class, the stage number fixed by the stage."""
    return Stage(
        name=f"pretrain{number}",
        version=2,  # 2: lfvila-tiny with 8×8 patches and a 128-wide BERT sized to the tokenizer
        config_path="lfvila_cli.train.pretrain:PretrainConfig",
        run_path="lfvila_cli.stages:run_pretrain_stage",
        inputs=inputs,
        fingerprints_path="lfvila_cli.stages:pretrain_fingerprints",
        key_config_path="lfvila_cli.train.pretrain:key_config",
        resumable=True,
        fixed={"stage": number},
        describe=_describe_pretrain,
    )


STAGES: dict[str, Stage] = {
    "prepare": Stage(
        name="prepare",
        version=3,  # 2: untimed segments, task fields checked; the example's How2QA distractors; 3: reader fixes (ActivityNet and VALUE VIOLIN ids, clamped and clipped times, How2QA test split)
        config_path="lfvila_cli.data.prepare:PrepareConfig",
        run_path="lfvila_cli.stages:run_prepare",
        fingerprints_path="lfvila_cli.stages:prepare_fingerprints",
        key_config_path="lfvila_cli.data.prepare:key_config",
        describe=_describe_prepare,
    ),
    "pretrain1": _pretrain_stage(1, inputs=("cache",)),
    "pretrain2": _pretrain_stage(2, inputs=("cache", "pretrain1")),
    "cache": Stage(
        name="cache",
        version=1,
        config_path="lfvila_cli.data.cache:CacheConfig",
        run_path="lfvila_cli.stages:run_cache",
        inputs=("prepare",),
        fingerprints_path="lfvila_cli.stages:cache_fingerprints",
        key_config_path="lfvila_cli.stages:cache_key_config",
        verify_path="lfvila_cli.stages:verify_cache",
        resumable=True,
        describe=_describe_cache,
    ),
}


def _describe_finetune(summary: dict) -> str:
    selection = summary.get("selection") or {}
    parts = [f"{summary.get('task', '?')}: {summary.get('steps', '?')} steps"]
    if selection.get("metric"):
        parts.append(f"selected step {selection['step']} on {selection['metric']} {selection['value']:.3f}")
    elif selection:
        parts.append("no val split: final weights")
    return ", ".join(parts)


STAGES["finetune"] = Stage(
    name="finetune",
    version=1,
    config_path="lfvila_cli.train.finetune:FinetuneConfig",
    run_path="lfvila_cli.stages:run_finetune_stage",
    inputs=("cache", "pretrain1", "pretrain2"),  # those it may take; input_names picks per config
    inputs_path="lfvila_cli.train.finetune:input_names",
    fingerprints_path="lfvila_cli.stages:finetune_fingerprints",
    key_config_path="lfvila_cli.train.finetune:key_config",
    resumable=True,
    describe=_describe_finetune,
)

STAGES["evaluate"] = Stage(
    name="evaluate",
    version=1,
    config_path="lfvila_cli.report:EvaluateConfig",
    run_path="lfvila_cli.stages:run_evaluate_stage",
    inputs=("cache", "finetune", "pretrain1"),
    inputs_path="lfvila_cli.report:input_names",
    describe="lfvila_cli.report:describe",
)

STAGES["export"] = Stage(
    name="export",
    version=2,
    config_path="lfvila_cli.export:ExportConfig",
    run_path="lfvila_cli.stages:run_export_stage",
    inputs=("pretrain1", "pretrain2", "finetune"),
    inputs_path="lfvila_cli.export:input_names",
    describe="lfvila_cli.export:describe",
)

STAGES["index"] = Stage(
    name="index",
    version=1,
    config_path="lfvila_cli.search:IndexConfig",
    run_path="lfvila_cli.stages:run_index_stage",
    inputs=("cache", "export", "pretrain1"),
    inputs_path="lfvila_cli.search:input_names",
    policy_fields=("batch",),
    resumable=True,
    describe="lfvila_cli.search:describe",
)

# pipeline order
STAGES = {name: STAGES[name] for name in ("prepare", "cache", "pretrain1", "pretrain2", "finetune", "evaluate", "export", "index")}


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"unknown stage '{name}' (known: {', '.join(STAGES)})") from None


# --- stage bodies ---------------------------------------------------------------------------


def prepare_fingerprints(config, inputs) -> dict:
    from .data.prepare import raw_inputs

    return {path: file_digest(path) for path in raw_inputs(config)}


def run_prepare(ctx: StageContext) -> dict:
    from .data.prepare import prepare

    return prepare(ctx.config, ctx.out_dir)


def corpus_file(artifact: Artifact) -> Path:
    from .data.corpus import CORPUS_FILE

    return artifact.path / CORPUS_FILE


def input_artifact(workdir: Workdir, artifact: Artifact, name: str) -> Artifact | None:
    """The input ``name`` an artifact was built from: in this work directory, or where it lived
    when it was built (``--corpus DIR`` from another work directory); ``None`` when gone."""
    key = artifact.manifest.get("inputs", {}).get(name)
    if key is None:
        return None
    found = workdir.get(name, key)
    elsewhere = artifact.manifest.get("input_paths", {}).get(name)
    if found is None and elsewhere and Path(elsewhere, "manifest.json").is_file():
        found = Workdir(Path(elsewhere).parent.parent.parent).get(name, key)
    return found


def cache_fingerprints(config, inputs) -> dict:
    """Size and modification time of every video outside the corpus artifact.

    Videos inside the corpus artifact (the bundled example) are already covered by its key;
    hashing the bytes of every external video would cost a full read of the dataset.
    """
    from .data.corpus import read_corpus

    corpus = inputs["prepare"]
    videos: set[str] = set()
    for sample in read_corpus(corpus_file(corpus)):
        for ref in [sample.video] + [seg.video for seg in sample.segments if seg.video]:
            if "://" in ref or os.path.isabs(ref):
                videos.add(ref)
    return {video: _stat_fingerprint(video) for video in sorted(videos)}


def _stat_fingerprint(url: str) -> list | None:
    if "://" not in url:
        try:
            st = os.stat(url)
        except OSError:
            return None  # a missing video is recorded by the cache stage itself
        return [st.st_size, st.st_mtime_ns]
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except (OSError, ValueError, ImportError):  # ImportError: a protocol's optional package
        return None  # the cache stage records why that video failed
    return [info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")]


def _remove_store(workdir: Workdir, url: str, owner: dict) -> None:
    """``--force`` with an external ``store_url``: delete the frame store there — only if it is
    one, and only if it belongs to the artifact being rebuilt (never another artifact's or
    another work directory's store, nor a directory of other data)."""
    import fsspec

    from .data.cache import describe_owner, same_owner

    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return
    try:
        with fs.open(f"{path.rstrip('/')}/zarr.json", "rb") as fh:
            attrs = json.load(fh).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        attrs = {}
    if "layout_version" not in attrs:
        raise ConfigError(f"store_url {url}: exists and is not an lfvila frame store; --force will not delete it")
    recorded = attrs.get("owner")
    if isinstance(recorded, dict):
        if not same_owner(recorded, owner):
            raise ConfigError(
                f"store_url {url}: belongs to {describe_owner(recorded)}; --force will not delete another "
                "artifact's frame store (point store_url at another location)"
            )
    else:
        mine = workdir.get("cache", owner["key"])
        if mine is None or frame_store_url(mine) != url:
            raise ConfigError(
                f"store_url {url}: the frame store records no owner (made by an older lfvila) and no cache artifact "
                "of this work directory uses it; --force will not delete it (delete it yourself if nothing needs it)"
            )
    # The artifact of this key reads this store: it stops being visible before the store goes.
    workdir.invalidate("cache", owner["key"])
    fs.rm(path, recursive=True)


def cache_key_config(config) -> dict:
    """What shapes the frames (``layout``: unused and order-only differences removed) and where they go."""
    return {**config.layout(), "store_url": config.store_url}


def verify_cache(artifact: Artifact) -> str | None:
    """A committed cache is usable only while its Zarr store is still there."""
    import fsspec

    url = frame_store_url(artifact)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        present = fs.exists(f"{path.rstrip('/')}/zarr.json")
    except (OSError, ValueError, ImportError) as exc:
        return f"cannot reach its frame store {url}: {exc}"
    return None if present else f"its frame store {url} is missing"


def frame_store_url(artifact: Artifact) -> str:
    """Where a cache artifact's Zarr store lives (inside the artifact unless configured)."""
    url = artifact.summary.get("store_url") or ""
    return url if url else str(artifact.path / "frames.zarr")


def run_cache(ctx: StageContext) -> dict:
    from .data.cache import cache_frames

    if ctx.config.store_url.startswith("memory://"):
        raise ConfigError("store_url: a memory:// store vanishes when the process ends; use a path or a persistent URL")
    url = ctx.config.store_url or str(ctx.out_dir / "frames.zarr")
    identity = ctx.workdir.identity()
    owner = {"workdir_id": identity["id"], "workdir": identity["path"], "stage": "cache", "key": ctx.key}
    if ctx.force and ctx.config.store_url and ctx.rank == 0:
        _remove_store(ctx.workdir, ctx.config.store_url, owner)  # the partial directory was wiped; an external store too
    if ctx.config.retry_failed and not ctx.config.store_url and ctx.rank == 0 and not os.path.exists(url):
        _seed_from_earlier_store(ctx, url, owner)
    summary = cache_frames(
        corpus_file(ctx.inputs["prepare"]),
        ctx.config,
        url,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=ctx.progress,
        owner=owner,
    )
    summary["store_url"] = ctx.config.store_url
    return summary


def _seed_from_earlier_store(ctx: StageContext, url: str, owner: dict) -> None:
    """``--retry-failed`` after videos were fixed or restored: their fingerprints changed, so the
    cache has a new key and a new store. Start it from the newest earlier store of the same rows
    (same corpus segments and layout) in this work directory instead of decoding every row
    again: its chunks are hard-linked (Zarr replaces a chunk file when it writes one, so the
    earlier store stays as it was), and the rows of every video whose fingerprint changed go
    back to pending. The failed rows are then retried as usual."""
    import numpy as np

    from .data.cache import plan_rows
    from .data.framestore import ERROR_BYTES, PENDING, open_group

    plan = plan_rows(corpus_file(ctx.inputs["prepare"]), ctx.config)
    fingerprints = ctx.key_payload.get("fingerprints", {})  # stat-ing every video again would cost as much
    earlier = None
    for artifact in sorted(ctx.workdir.artifacts("cache"), key=lambda a: -a.manifest.get("created", 0)):
        if artifact.key == ctx.key or artifact.summary.get("store_url"):
            continue
        source = artifact.path / "frames.zarr"
        try:
            attrs = open_group(str(source), mode="r").attrs.asdict()
        except LfvilaError:
            continue
        if attrs.get("ready") and attrs.get("plan_digest") == plan.digest and attrs.get("rows") == plan.rows and all(
            attrs.get(k) == v for k, v in ctx.config.layout().items()
        ):
            earlier = artifact
            break
    if earlier is None:
        return
    old = earlier.manifest.get("key_payload", {}).get("fingerprints", {})
    changed = {video for video in set(old) | set(fingerprints) if old.get(video) != fingerprints.get(video)}
    rows = [row for task in plan.tasks if task.video in changed or task.source in changed for row in task.rows]
    building = Path(url).with_name(f".seeding-{os.getpid()}.zarr")
    shutil.rmtree(building, ignore_errors=True)

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:  # another filesystem, or no hard links: a copy
            shutil.copy2(src, dst)

    shutil.copytree(earlier.path / "frames.zarr", building, copy_function=link)
    group = open_group(str(building), mode="r+")
    if rows:
        index = np.asarray(rows, dtype=np.int64)
        group["status"].oindex[index] = np.full(index.size, PENDING, dtype=np.uint8)
        group["error"].oindex[index, :] = np.zeros((index.size, ERROR_BYTES), dtype=np.uint8)
    group.attrs.put({**group.attrs.asdict(), "owner": owner})
    os.replace(building, url)  # complete before any rank sees it
    log.info("cache: started from the store of cache/%s (%d rows of %d changed videos to decode again)", earlier.key[:KEY_CHARS], len(rows), len(changed))


def run_pretrain_stage(ctx: StageContext) -> dict:
    """Pre-training stage 1 or 2 over a frame store (and, for stage 2, a stage-1 model)."""
    from .train.pretrain import run_pretrain

    cache = ctx.inputs["cache"]
    corpus = input_artifact(ctx.workdir, cache, "prepare")
    if corpus is None:
        raise ArtifactError(f"the corpus cache {cache.key[:KEY_CHARS]} was built from is gone")
    init_from = ctx.inputs["pretrain1"].path if "pretrain1" in ctx.inputs else None
    return run_pretrain(
        ctx.config,
        corpus_file(corpus),
        frame_store_url(cache),
        ctx.out_dir,
        init_from=init_from,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=ctx.progress,
        resume=None if ctx.force else "auto",
    )


def pretrain_fingerprints(config, inputs) -> dict:
    """video_init set: the bytes of the Swin-2D checkpoint key the model; unset: nothing (keys as before)."""
    if config.video_init:
        from .train.pretrain import video_init_file

        return {"video_init": file_digest(str(video_init_file(config.video_init)))}
    return {}


def finetune_fingerprints(config, inputs) -> dict:
    """init=release: the bytes of the authors' checkpoint file key the model."""
    if config.init == "release":
        return {"release_checkpoint": file_digest(config.release_checkpoint)}
    return {}


def _task_corpus(ctx: StageContext) -> Path:
    cache = ctx.inputs["cache"]
    corpus = input_artifact(ctx.workdir, cache, "prepare")
    if corpus is None:
        raise ArtifactError(f"the corpus cache {cache.key[:KEY_CHARS]} was built from is gone")
    return corpus_file(corpus)


def run_finetune_stage(ctx: StageContext) -> dict:
    """Fine-tune a task on a chunks frame store, from a pre-training artifact (or scratch / release)."""
    from .train.finetune import run_finetune

    pretrained = [name for name in ("pretrain1", "pretrain2") if name in ctx.inputs]
    return run_finetune(
        ctx.config,
        _task_corpus(ctx),
        frame_store_url(ctx.inputs["cache"]),
        ctx.out_dir,
        init_from=ctx.inputs[pretrained[0]].path if pretrained else None,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=ctx.progress,
        resume=None if ctx.force else "auto",
    )


def run_evaluate_stage(ctx: StageContext) -> dict:
    """Score a fine-tuned (or, zero-shot, a stage-1) model on one split of a task."""
    from .report import run_evaluate

    model = ctx.inputs[ctx.config.model]
    return run_evaluate(ctx.config, _task_corpus(ctx), frame_store_url(ctx.inputs["cache"]), model.path, model.config, ctx.out_dir)


def run_export_stage(ctx: StageContext) -> dict:
    """ONNX export of a model artifact (encoders or the QA model), parity-checked in ONNX Runtime."""
    from .export import export_onnx

    return export_onnx(ctx.inputs[ctx.config.model].path, ctx.out_dir, ctx.config)


def run_index_stage(ctx: StageContext) -> dict:
    """Embed a chunks frame store for search (ONNX Runtime or PyTorch), resumable. Under a
    multi-rank launch rank 0 indexes alone (the others wait for its commit): one ONNX Runtime
    process, and no two processes creating the same Zarr arrays."""
    from .search import build_index

    if ctx.rank != 0:
        return {}

    source = ctx.inputs["export" if ctx.config.engine == "onnx" else "pretrain1"].path
    return build_index(frame_store_url(ctx.inputs["cache"]), source, ctx.config, ctx.out_dir, progress=ctx.progress)


# --- the runner -----------------------------------------------------------------------------


@dataclass
class StageResult:
    stage: str
    status: str  # "up to date", "done", "would run", "waiting for input"
    key: str | None = None
    artifact: Artifact | None = None
    message: str = ""


def dist_env() -> tuple[int, int]:
    """(rank, world size) of a torchrun / deepspeed launch, (0, 1) otherwise."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be integers") from None


def resolve_inputs(workdir: Workdir, stage: Stage, refs: dict[str, str] | None = None, config: Any = None) -> dict[str, Artifact]:
    refs = refs or {}
    return {name: workdir.resolve(name, refs.get(name) or "latest") for name in stage.input_names(config)}


RANK_WAIT_S = float(os.environ.get("LFVILA_RANK_WAIT_S", "3600"))  # other ranks wait this long for rank 0
_MARKER_SLACK_S = 10.0  # ranks of one launch reach a stage within this of each other


def _launch_id() -> str:
    """What the ranks of one launch share: a relaunch (torchrun's restarts included) changes the
    restart count or, usually, the port."""
    env = os.environ
    return "|".join(env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))


def _failure_marker(workdir: Workdir, stage: str, key: str) -> Path:
    """Rank 0 writes this when a stage fails under a multi-rank launch, so the ranks waiting for
    its commit stop at once with its error instead of waiting LFVILA_RANK_WAIT_S."""
    return workdir.stage_dir(stage) / f".failed-{key[:KEY_CHARS]}"


def _mark_failed(workdir: Workdir, stage: str, key: str, exc: BaseException) -> None:
    marker = _failure_marker(workdir, stage, key)
    record = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}", "launch": _launch_id(), "time": time.time()}
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        pass  # the other ranks fall back to their timeout


def _marked_failure(marker: Path, since: float) -> str | None:
    """The error in ``marker`` if rank 0 of this launch wrote it after ``since`` (less the slack):
    a marker of an earlier launch, or of this one before this rank reached the stage, is not."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("launch") != _launch_id() or record.get("time", 0) < since - _MARKER_SLACK_S:
        return None
    return str(record.get("error", "unknown error"))


@contextlib.contextmanager
def _failure_reported(workdir: Workdir, stage: str, key: str, rank: int, world_size: int):
    """Rank 0 of a multi-rank launch leaves a failure marker for any error in the block."""
    try:
        yield
    except BaseException as exc:
        if rank == 0 and world_size > 1:
            _mark_failed(workdir, stage, key, exc)
        raise


def run_stage(
    workdir: Workdir,
    stage: Stage,
    config: Any,
    inputs: dict[str, Artifact],
    *,
    force: bool = False,
    dry_run: bool = False,
    name: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> StageResult:
    """Run ``stage`` unless an artifact with the same key exists; commit atomically.

    One process builds a given artifact at a time: it holds ``store/<stage>/.lock-<key>``
    (``locks.py``) from before it looks for partial work until after it commits. Another
    process asking for the same artifact waits, then finds it up to date. A ``--force`` run
    leaves the old artifact in place until the new one replaces it.

    Under a multi-rank launch only rank 0 runs a stage and commits it; the other ranks take
    part only in resumable stages (their own rows of ``cache``), once rank 0 of their launch
    holds the lock, and then wait for rank 0's commit, so a pipeline continues on every rank
    with the same artifacts.
    """
    rank, world_size = dist_env()
    reached = time.time()  # when this rank reached the stage: older failure markers are not this launch's
    if name is not None:
        check_ref_name(name)
    payload = stage.key_payload(config, inputs)
    key = compute_key(payload)
    short = key[:KEY_CHARS]
    existing = workdir.get(stage.name, key)
    if existing is not None and not force:
        problem = unusable(stage, existing)
        if problem is None:
            return _up_to_date(workdir, stage, existing, name, rank, dry_run, echo)
        if rank == 0:
            echo(f"{stage.name}: artifact {short} is unusable ({problem}); running again")
    rebuild = force or existing is not None  # replace the artifact of this key when committing
    if dry_run:
        line = f"{stage.name}: would run ({short})" + (" [--force]" if existing else "")
        echo(line)
        return StageResult(stage.name, "would run", key, None, line)
    if rebuild and world_size > 1 and stage.resumable:
        raise ConfigError("--force under a multi-rank launch would race; run it once in a single process")
    if rank != 0:
        if not stage.resumable:
            return _wait_for_commit(workdir, stage, key, rank, world_size, echo, reached, replacing=existing if rebuild else None)
        committed = _wait_for_launch_lock(workdir, stage, key, rank, world_size, reached)
        if committed is not None:
            return committed
        return _build(workdir, stage, config, inputs, payload, key, None, rank, world_size, rebuild, name, progress, echo, reached)
    lock = FileLock(workdir.lock_path(stage.name, key), launch=_launch_id())

    def waiting(holder: dict) -> None:
        if holder_gone(holder):
            echo(f"{stage.name}: {describe_holder(holder)} was stopped while building {short}; taking its lock over once its heartbeat has stopped")
        else:
            echo(f"{stage.name}: waiting for {describe_holder(holder)}, which is building {short} ({lock.path})")

    lock.acquire(on_wait=waiting)
    try:
        if not force:  # another process may have committed it while this one waited
            existing = workdir.get(stage.name, key)
            if existing is not None and unusable(stage, existing) is None:
                return _up_to_date(workdir, stage, existing, name, rank, dry_run, echo)
        return _build(workdir, stage, config, inputs, payload, key, lock, rank, world_size, rebuild, name, progress, echo, reached)
    finally:
        lock.release()


def unusable(stage: Stage, artifact: Artifact) -> str | None:
    """Why a committed artifact cannot be used as it is (a file changed since it was written, a
    stage's own check such as a cache's missing frame store), or ``None``."""
    problem = verify_files(artifact)
    if problem is None and stage.verify_path:
        problem = _load(stage.verify_path)(artifact)
    return problem


def check_inputs(inputs: dict[str, Artifact]) -> None:
    """Refuse to use an input artifact whose files differ from its manifest (one line)."""
    for name, artifact in sorted(inputs.items()):
        problem = verify_files(artifact)
        if problem is not None:
            raise ArtifactError(
                f"{name}/{artifact.key[:KEY_CHARS]} ({artifact.path}): {problem}; rebuild it with its stage's --force"
            )


def _up_to_date(workdir: Workdir, stage: Stage, existing: Artifact, name: str | None, rank: int, dry_run: bool, echo) -> StageResult:
    key = existing.manifest.get("key", existing.key)
    if not dry_run and rank == 0:
        _set_refs(workdir, stage.name, key, name)
    line = f"{stage.name}: up to date ({key[:KEY_CHARS]}) — {stage.summary_line(existing.summary)}; nothing to do"
    if rank == 0:
        echo(line)
    return StageResult(stage.name, "up to date", key, existing, line)


def _build(workdir, stage, config, inputs, payload, key, lock, rank, world_size, rebuild, name, progress, echo, reached) -> StageResult:
    """Run the stage's body into its partial (resumable) or temporary directory and commit it
    (rank 0, holding ``lock``)."""
    short = key[:KEY_CHARS]
    if rank == 0 and world_size > 1:
        _failure_marker(workdir, stage.name, key).unlink(missing_ok=True)  # an earlier launch's
    # Rank 0 of a multi-rank launch leaves a failure marker for any error from here to the commit.
    with _failure_reported(workdir, stage.name, key, rank, world_size):
        check_inputs(inputs)
        started = time.time()
        resumed = False
        if stage.resumable:
            out_dir = workdir.partial_dir(stage.name, key)
            if rebuild and rank == 0:
                shutil.rmtree(out_dir, ignore_errors=True)
            resumed = out_dir.is_dir() and any(out_dir.iterdir())
            out_dir.mkdir(parents=True, exist_ok=True)
            if resumed and rank == 0:
                echo(f"{stage.name}: resuming in {out_dir}")
        else:
            out_dir = workdir.new_temp_dir(stage.name, key)
        ctx = StageContext(workdir, config, inputs, out_dir, key, rank, world_size, progress and rank == 0, rebuild, payload)
        try:
            summary = _load(stage.run_path)(ctx) or {}
        except BaseException:
            if not stage.resumable:
                shutil.rmtree(out_dir, ignore_errors=True)
            elif rank == 0 and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # nothing to resume: do not list it as incomplete work
            raise
        if rank != 0:
            echo(f"{stage.name}: rank {rank}/{world_size} finished its rows; rank 0 commits")
            return _wait_for_commit(workdir, stage, key, rank, world_size, echo, reached)
        manifest = {
            "stage": stage.name,
            "version": stage.version,
            "key": key,
            "key_payload": payload,
            "inputs": payload["inputs"],
            # Where each input lived, so `status` finds inputs from another work directory.
            "input_paths": {name: str(artifact.path.resolve()) for name, artifact in sorted(inputs.items())},
            "created": time.time(),
            "seconds": round(time.time() - started, 3),
            "lfvila_version": __version__,
            "summary": summary,
        }
        if resumed:  # writers killed in an earlier run may have left their temporary files
            remove_temp_files(out_dir)
        manifest["files"] = file_checksums(out_dir)
        lock.check()
        artifact = workdir.commit(out_dir, stage.name, key, manifest, to_dict(config), replace=rebuild)
        _set_refs(workdir, stage.name, key, name)
        line = f"{stage.name}: done ({short}) in {manifest['seconds']:.1f}s — {stage.summary_line(summary)}"
        echo(line)
        return StageResult(stage.name, "done", key, artifact, line)


def _wait_for_launch_lock(workdir: Workdir, stage: Stage, key: str, rank: int, world_size: int, reached: float) -> StageResult | None:
    """A rank other than 0 of a resumable stage starts only once rank 0 of its own launch holds
    the stage's lock (never into the partial work of another process): ``None`` then, or the
    artifact if it is committed meanwhile."""
    lock = FileLock(workdir.lock_path(stage.name, key))

    def started() -> bool:
        holder = lock.read()
        return bool(holder) and holder.get("launch") == _launch_id() and holder.get("started", 0) >= reached - _MARKER_SLACK_S

    return _wait_for_rank_zero(workdir, stage, key, rank, world_size, reached, "start", started)


def _wait_for_commit(
    workdir: Workdir, stage: Stage, key: str, rank: int, world_size: int, echo, reached: float, replacing: Artifact | None = None
) -> StageResult:
    """A rank other than 0 waits for rank 0 to commit ``stage``/``key``, or for rank 0's failure
    marker of this launch (``reached``: when this rank reached the stage). ``replacing``: the
    artifact rank 0 rebuilds (``--force``), which stays visible until then: wait for another."""
    return _wait_for_rank_zero(workdir, stage, key, rank, world_size, reached, "commit", lambda: False, replacing)


def _wait_for_rank_zero(workdir, stage, key, rank, world_size, reached, what: str, done: Callable[[], bool], replacing: Artifact | None = None) -> StageResult | None:
    """Poll until the artifact is committed (returned; not ``replacing``), ``done()`` (``None``),
    rank 0's failure marker of this launch (raised) or ``LFVILA_RANK_WAIT_S``."""
    deadline = time.monotonic() + RANK_WAIT_S
    delay = 0.05
    marker = _failure_marker(workdir, stage.name, key)
    old = replacing.manifest.get("created") if replacing is not None else None

    def committed() -> Artifact | None:
        artifact = workdir.get(stage.name, key)
        if artifact is not None and old is not None and artifact.manifest.get("created") == old:
            return None
        return artifact

    while (artifact := committed()) is None:
        if done():
            return None
        error = _marked_failure(marker, reached)
        if error is not None:
            raise ArtifactError(f"rank {rank}/{world_size}: rank 0 failed {stage.name}/{key[:KEY_CHARS]} ({error}); see rank 0's output")
        if time.monotonic() > deadline:
            raise ArtifactError(
                f"rank {rank}/{world_size}: rank 0 did not {what} {stage.name}/{key[:KEY_CHARS]} within "
                f"{RANK_WAIT_S:.0f}s (LFVILA_RANK_WAIT_S); see rank 0's output"
            )
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    return StageResult(stage.name, "up to date", key, artifact, f"{stage.name}: rank {rank} sees {key[:KEY_CHARS]}")


def check_ref_name(name: str) -> None:
    """A ref name becomes a file name under refs/<stage>/: plain characters only."""
    import re

    if name == "latest" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '.', '_' or '-' (not starting with '.' or '-'); 'latest' is reserved"
        )


def _set_refs(workdir: Workdir, stage: str, key: str, name: str | None) -> None:
    workdir.set_ref(stage, "latest", key)
    if name:
        workdir.set_ref(stage, name, key)


def resolve_config(stage: Stage, files=(), overrides=(), layers=()) -> Any:
    from .config import resolve

    config = resolve(stage.config_cls, files=files, overrides=overrides, layers=[stage.fixed, *layers])
    for key, value in stage.fixed.items():
        if getattr(config, key) != value:
            raise ConfigError(f"config key '{key}': the {stage.name} stage fixes it to {value!r}")
    return config


# --- pipelines ------------------------------------------------------------------------------


def load_pipeline(path: str | Path) -> list[tuple[Stage, dict]]:
    """Parse a pipeline file: ``stages: [{stage: NAME, config: {...}}, ...]``."""
    data = load_yaml(path)
    unknown = sorted(set(data) - {"stages", "description"})
    if unknown:
        raise ConfigError(f"{path}: unknown pipeline key '{unknown[0]}' (known: description, stages)")
    entries = data.get("stages")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of {{stage: NAME, config: {{...}}}}")
    chain = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"{path}: stages[{i}] needs a 'stage' name")
        extra = sorted(set(entry) - {"stage", "config"})
        if extra:
            raise ConfigError(f"{path}: stages[{i}]: unknown key '{extra[0]}' (known: stage, config)")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: stages[{i}].config must be a mapping")
        chain.append((get_stage(entry["stage"]), config))
    return chain


def run_pipeline(
    workdir: Workdir,
    path: str | Path,
    *,
    overrides: list[str] = (),
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run every stage of a pipeline file in order; each stage's input is the artifact the
    previous stage of the same pipeline produced (or found up to date).

    ``overrides`` are ``STAGE.key=value`` (``prepare.example.train_videos=4``).
    """
    chain = load_pipeline(path)
    per_stage: dict[str, list[str]] = {}
    names = {stage.name for stage, _ in chain}
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] not in names or len(keys) < 2:
            raise ConfigError(f"--set {text!r}: pipeline overrides start with a stage name ({', '.join(sorted(names))})")
        per_stage.setdefault(keys[0], []).append(text.split(".", 1)[1])
    produced: dict[str, Artifact] = {}
    results = []
    for i, (stage, layer) in enumerate(chain):
        try:
            config = resolve_config(stage, layers=[layer], overrides=per_stage.get(stage.name, []))
        except ConfigError as exc:
            raise ConfigError(f"{path}: stages[{i}] ({stage.name}): {exc}") from None
        names = stage.input_names(config)
        missing = [name for name in names if name not in produced]
        if dry_run and missing and any(r.status == "would run" for r in results):
            line = f"{stage.name}: would run after {', '.join(missing)}"
            echo(line)
            results.append(StageResult(stage.name, "waiting for input", message=line))
            continue
        inputs = {name: produced.get(name) or workdir.resolve(name) for name in names}
        result = run_stage(workdir, stage, config, inputs, force=force, dry_run=dry_run, progress=progress, echo=echo)
        results.append(result)
        if result.artifact is not None:
            produced[stage.name] = result.artifact
    return results


# --- status ---------------------------------------------------------------------------------


def artifact_state(workdir: Workdir, artifact: Artifact, _seen: dict | None = None) -> str:
    """'current', or 'stale: <why>' when rerunning its stage now would produce another key."""
    seen = _seen if _seen is not None else {}
    if artifact.key in seen:
        return seen[artifact.key]
    stage = STAGES.get(artifact.stage)
    if stage is None:
        return "unknown stage"
    if artifact.manifest.get("version") != stage.version:
        state = f"stale: stage version {artifact.manifest.get('version')} → {stage.version}"
    else:
        state = "current"
        try:
            config = from_dict(stage.config_cls, artifact.config)
            inputs = {}
            for name, key in artifact.manifest.get("inputs", {}).items():
                upstream = input_artifact(workdir, artifact, name)
                if upstream is None:
                    raise ArtifactError(f"input {name}/{key[:KEY_CHARS]} is gone")
                upstream_state = artifact_state(workdir, upstream, seen)
                if upstream_state != "current":
                    raise ArtifactError(f"input {name}/{key[:KEY_CHARS]} is {upstream_state}")
                inputs[name] = upstream
            if compute_key(stage.key_payload(config, inputs)) != artifact.key:
                state = "stale: raw inputs or config meaning changed"
            elif problem := unusable(stage, artifact):
                state = f"stale: {problem}"
        except LfvilaError as exc:
            state = f"stale: {exc}"
        except (OSError, ValueError) as exc:  # a damaged artifact directory (e.g. stage_config.json deleted)
            state = f"unreadable: {exc}"
    seen[artifact.key] = state
    return state


def status_rows(workdir: Workdir) -> list[dict]:
    rows, seen, damaged = [], {}, []
    order = {name: i for i, name in enumerate(STAGES)}  # pipeline order, not alphabetical
    artifacts = workdir.artifacts(damaged=damaged)
    for path in damaged:
        rows.append({"stage": path.parent.name, "key": path.name, "refs": [], "created": "?", "state": "unreadable manifest", "summary": str(path)})
    for artifact in sorted(artifacts, key=lambda a: (order.get(a.stage, len(order)), a.manifest.get("created", 0))):
        refs = [name for name, key in workdir.refs(artifact.stage).items() if key == artifact.key]
        rows.append(
            {
                "stage": artifact.stage,
                "key": artifact.key[:KEY_CHARS],
                "refs": refs,
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(artifact.manifest.get("created", 0))),
                "state": artifact_state(workdir, artifact, seen),
                "summary": STAGES[artifact.stage].summary_line(artifact.summary) if artifact.stage in STAGES else "",
            }
        )
    return rows


def partial_state(workdir: Workdir, partial: Path) -> str:
    """Whether a process is building this partial work now (it holds the stage's lock), or it
    was left by a stopped run."""
    lock = FileLock(workdir.lock_path(partial.parent.name, work_key(partial.name)))
    holder = lock.read()
    if holder and not holder_gone(holder) and lock.stale_reason(holder) is None:
        return f"being built by {describe_holder(holder)}"
    if partial.name.startswith(".tmp-"):
        return "left by a stopped run (removed when the stage runs again)"
    return "incomplete (rerun the stage to resume or finish it)"
