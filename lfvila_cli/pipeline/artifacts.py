"""Content-addressed artifact store (docs/engineering.md §2).

Layout under the work directory::

    store/<stage>/<key>/            a committed artifact: its files, stage_config.json, manifest.json
    store/<stage>/.tmp-<key>-<pid>  a stage being written (invisible to readers)
    store/<stage>/<key>.partial/    a resumable stage's work in progress (cache, pretrain, ...)
    store/<stage>/.lock-<key>       held by the one process building that artifact (``locks.py``)
    refs/<stage>/<name>             a text file holding a key (``latest`` by default)
    workdir.json                    the work directory's id (frame stores record their owner)

An artifact exists only once ``manifest.json`` is written, and the directory appears under its
final name by one atomic ``rename``: a stage killed at any moment leaves nothing a reader sees.
The key is the SHA-256 of canonical JSON over the stage name and version, the stage's own
resolved config (policy fields excluded), its input artifacts' keys and fingerprints of raw
inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from .locks import pid_running

MANIFEST = "manifest.json"
CONFIG = "stage_config.json"  # config.json is left to the artifact (a finished model's own)
KEY_CHARS = 16  # 64 bits of SHA-256 name a directory; the full digest stays in the manifest


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def compute_key(payload: dict) -> str:
    """Full hex SHA-256 of the canonical JSON of ``payload``."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (local path or fsspec URL)."""
    import fsspec

    digest = hashlib.sha256()
    try:
        with fsspec.open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read input file ({exc})") from None
    return digest.hexdigest()


def file_checksums(folder: Path) -> dict[str, dict]:
    """``{relative path: {size, sha256}}`` of the files an artifact holds, recorded in its
    manifest and checked whenever the artifact is used (``verify_files``). Left out: Zarr stores
    (``*.zarr``: millions of chunks, each row with its own status) and ``run/`` (training
    checkpoints, read only to resume the run that wrote them)."""
    out = {}
    for dirpath, dirnames, files in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        dirnames[:] = sorted(d for d in dirnames if not d.endswith(".zarr") and not (rel_dir == "." and d == "run"))
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in (MANIFEST, CONFIG):
                continue
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            digest = _DIGESTS[_identity(st)] = file_digest(path)  # its consumers in this process need not read it again
            out[rel] = {"size": st.st_size, "sha256": digest}
    return out


# (device, inode, size, mtime, ctime) -> digest already computed in this process; the identity of a
# file survives the rename that commits its artifact, and changes when the file is rewritten.
_DIGESTS: dict[tuple, str] = {}


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_files(artifact: "Artifact") -> str | None:
    """The first file of ``artifact`` that is missing or differs from its manifest, as a
    reason; ``None`` when all match (or the manifest predates checksums). Costs one read of the
    files (SHA-256 at ~1 GB/s), once per process while a file is unchanged (none for files this process
    has just recorded)."""
    for rel, want in sorted((artifact.manifest.get("files") or {}).items()):
        path = artifact.path / rel
        try:
            st = path.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != want.get("size"):
            return f"{rel} has {st.st_size} bytes, {want.get('size')} when written"
        digest = _DIGESTS.get(_identity(st))
        if digest is None:
            digest = _DIGESTS[_identity(st)] = file_digest(str(path))
        if digest != want.get("sha256"):
            return f"{rel} changed after it was written (SHA-256 differs)"
    return None


def stage_command(stage: str) -> str:
    """The command that makes a stage's artifacts: ``lfvila pretrain --stage 1`` for ``pretrain1``."""
    match = re.fullmatch(r"pretrain(\d)", stage)
    return f"lfvila pretrain --stage {match[1]}" if match else f"lfvila {stage}"


def read_stage_config(artifact_dir: str | Path) -> dict:
    """The resolved config an artifact was made with (``stage_config.json``); ``{}`` for a
    directory that is not an artifact (e.g. a model directory written by hand)."""
    path = Path(artifact_dir) / CONFIG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file + fsync + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return json.loads((self.path / CONFIG).read_text())

    @property
    def summary(self) -> dict:
        return self.manifest.get("summary", {})


class Workdir:
    """The work directory: committed artifacts, partial work and named references."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- layout -------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / "store" / stage

    def artifact_dir(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / key[:KEY_CHARS]

    def partial_dir(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f"{key[:KEY_CHARS]}.partial"

    def ref_path(self, stage: str, name: str) -> Path:
        return self.root / "refs" / stage / name

    def lock_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f".lock-{key[:KEY_CHARS]}"

    def identity(self) -> dict:
        """``{id, path}``: a random id made once per work directory (``workdir.json``), so that
        what it owns is recognised however the directory is mounted."""
        path = self.root / "workdir.json"
        if not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".workdir.json.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps({"id": uuid.uuid4().hex}) + "\n", encoding="utf-8")
            try:
                os.link(tmp, path)  # never replaces one another process made meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {"id": str(data["id"]), "path": str(self.root.resolve())}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path}: unreadable work directory id ({exc}); restore it or delete it to make a new one") from None

    # --- reading ------------------------------------------------------------------------
    def get(self, stage: str, key: str) -> Artifact | None:
        """The committed artifact ``stage/key`` or ``None`` (a directory without manifest is absent)."""
        path = self.artifact_dir(stage, key)
        manifest = path / MANIFEST
        if not manifest.is_file() and not (self._restore_trash(path) and manifest.is_file()):
            return None
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest}: unreadable manifest ({exc})") from None
        return Artifact(stage, data.get("key", key), path, data)

    def artifacts(self, stage: str | None = None, damaged: list[Path] | None = None) -> list[Artifact]:
        """Committed artifacts; directories whose manifest cannot be read go to ``damaged``."""
        stages = [stage] if stage else sorted(p.name for p in (self.root / "store").glob("*") if p.is_dir())
        found = []
        for name in stages:
            for path in sorted(self.stage_dir(name).glob("*")):
                if path.is_dir() and not path.name.startswith(".") and not path.name.endswith(".partial"):
                    try:
                        artifact = self.get(name, path.name)
                    except ArtifactError:
                        if damaged is None:
                            raise
                        damaged.append(path)
                        continue
                    if artifact is not None:
                        found.append(artifact)
        return sorted(found, key=lambda a: (a.stage, a.manifest.get("created", 0)))

    def partials(self) -> list[Path]:
        store = self.root / "store"
        return sorted(p for p in store.glob("*/*") if p.is_dir() and (p.name.endswith(".partial") or p.name.startswith(".tmp-")))

    def refs(self, stage: str) -> dict[str, str]:
        folder = self.root / "refs" / stage
        if not folder.is_dir():
            return {}
        return {p.name: p.read_text().strip() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}

    def resolve(self, stage: str, ref: str = "latest") -> Artifact:
        """Find an artifact of ``stage`` by ref name, key (or unique key prefix) or directory path."""
        candidate = Path(ref)
        if (candidate / MANIFEST).is_file():
            data = json.loads((candidate / MANIFEST).read_text())
            if data.get("stage") != stage:
                raise ArtifactError(f"{candidate}: is a '{data.get('stage')}' artifact, expected '{stage}'")
            return Artifact(stage, data["key"], candidate.resolve(), data)
        if "/" in ref or os.sep in ref:  # a path (a ref name or key never holds a slash)
            raise self._not_an_artifact(stage, candidate)
        refs = self.refs(stage)
        key = refs.get(ref)
        if key is None:
            # Directories are named by the first KEY_CHARS of the key; a longer ref (up to the
            # full key printed in manifests) must match the manifest's key.
            matches = [p.name for p in self.stage_dir(stage).glob(f"{ref[:KEY_CHARS]}*") if p.is_dir() and (p / MANIFEST).is_file()] if ref else []
            if len(ref) > KEY_CHARS:
                matches = [name for name in matches if (found := self.get(stage, name)) is not None and found.key.startswith(ref)]
            if len(matches) == 1:
                key = matches[0]
            elif len(matches) > 1:
                raise ArtifactError(f"'{ref}' matches {len(matches)} {stage} artifacts; give more of the key")
        if key is None:
            if candidate.exists():  # a directory or file here, not an artifact
                raise self._not_an_artifact(stage, candidate)
            if ref == "latest":
                raise ArtifactError(f"no '{stage}' artifact in {self.root}: run `{stage_command(stage)}` first")
            raise ArtifactError(f"no '{stage}' artifact named '{ref}' in {self.root} (refs: {', '.join(refs) or 'none'})")
        artifact = self.get(stage, key)
        if artifact is None:
            raise ArtifactError(f"ref {stage}/{ref} points to {key[:KEY_CHARS]}, which is missing from {self.stage_dir(stage)}")
        return artifact

    @staticmethod
    def _not_an_artifact(stage: str, path: Path) -> ArtifactError:
        what = f"no {MANIFEST} in it" if path.exists() else "no such directory"
        return ArtifactError(f"{path}: not a '{stage}' artifact ({what}); give a ref name, a key (prefix) or an artifact directory (store/{stage}/<key>)")

    def input_of(self, artifact: Artifact, name: str) -> Artifact | None:
        """The input ``name`` an artifact was built from: in this work directory, or where it lived
        when it was built (``--corpus DIR`` from another work directory); ``None`` when gone."""
        key = artifact.manifest.get("inputs", {}).get(name)
        if key is None:
            return None
        found = self.get(name, key)
        elsewhere = artifact.manifest.get("input_paths", {}).get(name)
        if found is None and elsewhere and Path(elsewhere, MANIFEST).is_file():
            found = Workdir(Path(elsewhere).parent.parent.parent).get(name, key)
        return found

    # --- writing ------------------------------------------------------------------------
    def set_ref(self, stage: str, name: str, key: str) -> None:
        path = self.ref_path(stage, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(key + "\n")
        os.replace(tmp, path)

    def new_temp_dir(self, stage: str, key: str) -> Path:
        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_dead_temps(folder)
        path = folder / f".tmp-{key[:KEY_CHARS]}-{_HOST}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        path.mkdir()
        return path

    @staticmethod
    def _remove_dead_temps(folder: Path) -> None:
        """Delete temporary and trash directories left by a killed run of *this* host.

        Names carry host and pid (``.tmp-<key>-<host>-<pid>-<n>``, ``.trash-<key>-<host>-<pid>``):
        on a work directory shared between machines, another host's work in progress is left alone.
        """
        for path in list(folder.glob(".tmp-*")) + list(folder.glob(".trash-*")):
            if _owned_by_live_process(path.name):
                continue
            if path.name.startswith(".trash-") and not (folder / work_key(path.name)).exists():
                Workdir._restore_trash(folder / work_key(path.name))  # the only copy left
                continue
            shutil.rmtree(path, ignore_errors=True)

    def invalidate(self, stage: str, key: str) -> None:
        """Make a committed artifact invisible (its outputs outside the artifact are about to be
        rewritten in place: a cache's external frame store under ``--force``)."""
        manifest = self.artifact_dir(stage, key) / MANIFEST
        manifest.unlink(missing_ok=True)

    @staticmethod
    def _restore_trash(final: Path) -> bool:
        """Put back an artifact a commit moved aside and was killed before it renamed the new one
        into place (``.trash-<key>-<host>-<pid>`` with no ``<key>``)."""
        if final.exists():
            return False
        for trash in sorted(final.parent.glob(f".trash-{final.name}-*")):
            if (trash / MANIFEST).is_file() and not _owned_by_live_process(trash.name):
                try:
                    os.rename(trash, final)
                except OSError:
                    continue
                return True
        return False

    def commit(self, work_dir: Path, stage: str, key: str, manifest: dict, config: dict, replace: bool = False) -> Artifact:
        """Write config + manifest (last) into ``work_dir`` and rename it to its final name.

        An existing artifact with the same key is kept and ``work_dir`` discarded unless
        ``replace`` (``--force``): then the old one is moved aside first and deleted only after
        the new one is in place (a kill in between leaves it to be put back by ``get``).
        """
        final = self.artifact_dir(stage, key)
        if not replace and (existing := self.get(stage, key)) is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
            return existing
        write_json_atomic(work_dir / CONFIG, config)
        write_json_atomic(work_dir / MANIFEST, manifest)
        trash = None
        if final.exists():
            trash = final.with_name(f".trash-{final.name}-{_HOST}-{os.getpid()}")
            os.replace(final, trash)
        os.replace(work_dir, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(final.parent)
        return Artifact(stage, key, final, manifest)


_HOST = "".join(c for c in socket.gethostname() if c.isalnum())[:32] or "host"


def work_key(name: str) -> str:
    """The (short) key of work in progress: ``.tmp-<key>-…``, ``.trash-<key>-…`` or ``<key>.partial``."""
    if name.startswith((".tmp-", ".trash-")):
        return name.split("-")[1]
    return name.removesuffix(".partial")


def _owned_by_live_process(name: str) -> bool:
    """For ``.tmp-<key>-<host>-<pid>-...`` and ``.trash-<key>-<host>-<pid>``: whether the process
    that made it may still be at work (another host's always may)."""
    parts = name.split("-")
    try:
        host, pid = parts[2], int(parts[3])
    except (IndexError, ValueError):
        return True
    return host != _HOST or pid_running(pid)


# What writers killed mid-write leave: Zarr's ``<name>.<uuid hex>.partial`` chunk files and our
# own ``.<name>.<pid>.tmp`` (``write_json_atomic``, ``set_ref``).
_TEMP_FILE = re.compile(r"(.+\.[0-9a-f]{32}\.partial|\..+\.\d+\.tmp)")


def remove_temp_files(folder: Path) -> int:
    """Delete temporary files of killed writers anywhere under ``folder``; returns how many.
    Called on resumed work when no writer is at work there any more (before its commit)."""
    removed = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if _TEMP_FILE.fullmatch(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
