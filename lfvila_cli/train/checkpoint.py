"""Checkpoint directory layout, completion markers, pruning and RNG state.

Layout under ``run_dir/checkpoints``: one folder per tag (``step_00000120``) holding DeepSpeed's
files, one ``rng_rank{r}.pt`` per rank and, last of all, the marker ``COMPLETE``. A checkpoint
counts only once its marker exists (torchtitan's rule): a run killed during a save leaves a folder
without marker, which resume ignores and a later save removes.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

MARKER = "COMPLETE"
TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def _step_of(path: Path) -> Optional[int]:
    name = path.name
    if not name.startswith(TAG_PREFIX) or not name[len(TAG_PREFIX):].isdigit():
        return None
    return int(name[len(TAG_PREFIX):])


def list_checkpoints(root: Path, complete: bool = True) -> list[Path]:
    """Checkpoint folders under ``root``, oldest first; only complete ones unless told otherwise."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        step = _step_of(path)
        if step is None or not path.is_dir():
            continue
        if (path / MARKER).is_file() == complete:
            found.append((step, path))
    return [path for _, path in sorted(found)]


def latest_complete(root: Path) -> Optional[Path]:
    done = list_checkpoints(root)
    return done[-1] if done else None


def mark_complete(path: Path, info: Mapping) -> None:
    """Write the marker atomically (temp file + rename): its presence means the folder is whole."""
    tmp = path / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(dict(info), sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path / MARKER)


def prune(root: Path, keep_last_k: int) -> list[Path]:
    """Delete all but the newest ``keep_last_k`` complete checkpoints, and incomplete folders older
    than the newest complete one (left by a crash during a save). Returns what was deleted."""
    done = list_checkpoints(root)
    if not done:
        return []
    newest = _step_of(done[-1])
    doomed = done[:-keep_last_k] if keep_last_k > 0 else []
    doomed += [p for p in list_checkpoints(root, complete=False) if _step_of(p) < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def rng_state(generators: Mapping[str, torch.Generator] = {}) -> dict:
    """Python, NumPy, torch (and CUDA) RNG states plus named generators, as tensors and plain
    types so that ``torch.load(weights_only=True)`` reads them back."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": (version, list(mt), gauss),
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping, generators: Mapping[str, torch.Generator] = {}) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def save_rng(path: Path, rank: int, generators: Mapping[str, torch.Generator] = {}) -> None:
    torch.save(rng_state(generators), Path(path) / f"rng_rank{rank}.pt")


def load_rng(path: Path, rank: int, generators: Mapping[str, torch.Generator] = {}) -> None:
    set_rng_state(torch.load(Path(path) / f"rng_rank{rank}.pt", weights_only=True), generators)
