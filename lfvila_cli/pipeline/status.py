"""``lfvila status``: each artifact of a work directory, and whether it is still current.

An artifact is current when rerunning its stage now would give the same key (same stage
version, config meaning, inputs and raw-input fingerprints) and its files are as committed;
otherwise it is stale, with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Optional

from ..config import from_dict
from ..errors import ArtifactError, LfvilaError
from .artifacts import KEY_CHARS, Artifact, Workdir, compute_key, work_key
from .locks import FileLock, describe_holder, holder_gone
from .ranks import running_tasks
from .runner import unusable
from .stage import Stage


def artifact_state(workdir: Workdir, artifact: Artifact, stages: Mapping[str, Stage], _seen: Optional[dict] = None) -> str:
    """'current', or 'stale: <why>' when rerunning its stage now would produce another key."""
    seen = _seen if _seen is not None else {}
    if artifact.key in seen:
        return seen[artifact.key]
    stage = stages.get(artifact.stage)
    if stage is None:
        return "unknown stage"
    if artifact.manifest.get("version") != stage.version:
        state = f"stale: stage version {artifact.manifest.get('version')} → {stage.version}"
    else:
        state = "current"
        try:
            config = from_dict(stage.config_class, artifact.config)
            inputs = {}
            for name, key in artifact.manifest.get("inputs", {}).items():
                upstream = workdir.input_of(artifact, name)
                if upstream is None:
                    raise ArtifactError(f"input {name}/{key[:KEY_CHARS]} is gone")
                upstream_state = artifact_state(workdir, upstream, stages, seen)
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


def status_rows(workdir: Workdir, stages: Mapping[str, Stage]) -> list[dict]:
    """One row per artifact (stage, short key, refs, created, state, summary), in pipeline order."""
    rows, seen, damaged = [], {}, []
    order = {name: i for i, name in enumerate(stages)}  # pipeline order, not alphabetical
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
                "state": artifact_state(workdir, artifact, stages, seen),
                "summary": stages[artifact.stage].describe(artifact.summary) if artifact.stage in stages else "",
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
    tasks = running_tasks(workdir, partial.parent.name, work_key(partial.name))
    if tasks:
        launches = sorted({holder.get("launch", "?") for _, holder in tasks})
        return f"being built by {len(tasks)} task(s) of {', '.join(launches)}"
    if partial.name.startswith(".tmp-"):
        return "left by a stopped run (removed when the stage runs again)"
    return "incomplete (rerun the stage to resume or finish it)"
