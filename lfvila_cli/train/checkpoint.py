"""Checkpoint directory layout, completion markers, pruning, RNG state, and the one way checkpoint
files are read and written.

Layout under ``run_dir/checkpoints``: one folder per tag (``step_00000120``) holding DeepSpeed's
files, one ``rng_rank{r}.pt`` per rank and, last of all, the marker ``COMPLETE``. A checkpoint
counts only once its marker exists (torchtitan's rule): a run killed during a save leaves a folder
without marker, which resume ignores and a later save removes.

Reading never unpickles arbitrary objects: every file goes through ``load_file``
(``torch.load(weights_only=True)`` with the few DeepSpeed classes our checkpoints hold allowed, see
``allowed_globals``), DeepSpeed's own loads included (``checkpoint_engine`` replaces its
checkpoint engine, and ``weights_only_loading`` forces ``weights_only=True`` on any other
``torch.load`` it makes). A file holding anything else is refused (``UnsafeCheckpointError``); a
missing, truncated or corrupt one, or a failed write (disk full), is a ``CheckpointError`` naming
the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import pickletools
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch

from ..errors import CheckpointError, UnsafeCheckpointError

MARKER = "COMPLETE"
TAG_PREFIX = "step_"
# DeepSpeed's file names (ZeRO 1/2, no model parallelism): the module and client state once, the
# optimizer partition of each data-parallel rank ("bf16_" prefixed in bf16).
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIMIZER_PARTITIONS = "*zero_pp_rank_*_mp_rank_00_optim_states.pt"


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
    try:
        tmp.write_text(json.dumps(dict(info), sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path / MARKER)
    except OSError as exc:
        raise CheckpointError(f"{tmp}: cannot write the checkpoint marker ({exc.strerror or exc})") from exc


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
    save_file(rng_state(generators), Path(path) / f"rng_rank{rank}.pt")


def load_rng(path: Path, rank: int, generators: Mapping[str, torch.Generator] = {}) -> None:
    set_rng_state(load_file(Path(path) / f"rng_rank{rank}.pt"), generators)


# ---------------------------------------------------------------------------------------------
# Reading and writing checkpoint files
# ---------------------------------------------------------------------------------------------
def allowed_globals() -> list[type]:
    """The classes, besides tensors, storages and plain containers (which ``weights_only``
    allows by default), that checkpoints written by the Trainer hold: listed from the pickled
    globals of real ZeRO 1 and 2 checkpoints in fp32 and bf16. All four live in the state of
    DeepSpeed's ZeRO optimizer: its loss scaler object (``LossScaler``; ``DynamicLossScaler`` in
    fp16, which only runs on a GPU), the ZeRO stage as an enum, and each parameter's slice of the
    flat partition as a two-int record."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def pickled_globals(path: Path) -> Optional[list[str]]:
    """``module.name`` of every class or function the pickle in ``path`` refers to (the
    ``data.pkl`` of torch's zip format, else the file's first pickle), read with pickletools:
    nothing is imported or run. None when the file holds no whole pickle (truncated, garbage)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = Path(path).read_bytes()
        found: list[str] = []
        strings: list[str] = []  # string operands pushed so far (STACK_GLOBAL takes the last two)
        memo: dict[int, str] = {}
        for op, arg, _ in pickletools.genops(data):
            if "UNICODE" in op.name or op.name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                strings.append(str(arg))
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
                memo[int(arg)] = strings[-1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET") and int(arg) in memo:
                strings.append(memo[int(arg)])
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(".".join(strings[-2:]))
        return found
    except (OSError, ValueError, StopIteration, zipfile.BadZipFile, KeyError):
        return None


def _unexpected(names: list[str]) -> list[str]:
    """Globals outside what our checkpoints hold (torch's own types, OrderedDict, the allow-list)."""
    ours = {f"{c.__module__}.{c.__qualname__}" for c in allowed_globals()} | {"collections.OrderedDict"}
    return sorted({n for n in names if n not in ours and not n.startswith("torch.")})


def _damage(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a file that is not whole (torch's own message is least helpful for a file
    that is not a zip archive at all, such as a zip cut short before its index)."""
    try:
        detail = "empty file" if path.stat().st_size == 0 else None
    except OSError:
        detail = None
    if detail is None:
        detail = _first_line(exc) if zipfile.is_zipfile(path) else "not the zip archive torch.save writes"
    return CheckpointError(f"{path}: unreadable checkpoint file, truncated or corrupt ({detail})")


def load_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allowed_globals``. A file holding anything
    else is refused with ``UnsafeCheckpointError`` naming what it holds (nothing of it is run); a
    missing, truncated or corrupt file is a ``CheckpointError``. ``mmap``: map the tensor data
    instead of reading it (torch's zip format only), to check a file cheaply."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = pickled_globals(path)
        if found is None:  # not a whole pickle: damage, not content
            raise _damage(path, exc) from exc
        what = ", ".join(_unexpected(found)) or "objects"
        raise UnsafeCheckpointError(
            f"{path}: refused: the file holds {what} besides tensors and plain data "
            "(checkpoints are read with torch.load(weights_only=True); unpickling it could run code)"
        ) from None
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: checkpoint file missing") from exc
    except Exception as exc:  # noqa: BLE001
        # Garbage reaches the weights-only unpickler as any error (IndexError, KeyError from an
        # empty stack or memo, ...); it runs nothing, so whatever it raises means damage.
        raise _damage(path, exc) from exc


def save_file(obj: Any, path: str | Path) -> None:
    """``torch.save`` into a file opened here: a failed write (a full disk) then reaches us as an
    OSError with its cause (torch's own file writer reports only "unexpected pos"), and becomes a
    ``CheckpointError`` naming the file; the partial file is removed."""
    path = Path(path)
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write the checkpoint ({exc.strerror or exc})") from exc


def verify(path: Path) -> None:
    """Check that the complete checkpoint ``path`` can be resumed from without loading it: its
    marker readable, DeepSpeed's files and every rank's RNG file present, and every file whole and
    holding only what ``load_file`` allows (tensor data memory-mapped, not read). Raises
    ``CheckpointError`` (``UnsafeCheckpointError`` for a refused file) naming the file."""
    path = Path(path)
    try:
        world_size = int(json.loads((path / MARKER).read_text(encoding="utf-8"))["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / MARKER}: unreadable checkpoint marker ({_first_line(exc)})") from exc
    for name in [MODEL_STATES] + [f"rng_rank{r}.pt" for r in range(world_size)]:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: checkpoint file missing")
    partitions = len(list(path.glob(OPTIMIZER_PARTITIONS)))
    if partitions != world_size:
        raise CheckpointError(f"{path}: {partitions} optimizer partition files for a {world_size}-rank checkpoint")
    for file in sorted(path.glob("*.pt")):
        load_file(file, mmap=zipfile.is_zipfile(file))


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Within: every ``torch.load`` reads with ``weights_only=True`` (torch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` overrides a caller's ``weights_only=False``) and
    ``allowed_globals``: a guard on any load DeepSpeed makes outside its checkpoint engine."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def checkpoint_engine():
    """A DeepSpeed checkpoint engine writing with ``save_file`` and reading with ``load_file``;
    the Trainer puts it in place of DeepSpeed's ``TorchCheckpointEngine``, whose ``load`` calls
    ``torch.load(weights_only=False)``."""
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

    class SafeCheckpointEngine(CheckpointEngine):
        def __init__(self) -> None:
            super().__init__()
            self.name = "lfvila-safe"

        def create(self, info) -> None:
            pass

        def save(self, state_dict, path: str) -> None:
            save_file(state_dict, path)

        def load(self, path: str, map_location=None):
            return load_file(path, map_location=map_location)

        def commit(self, info) -> bool:
            return True

    return SafeCheckpointEngine()
