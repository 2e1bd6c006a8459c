"""The Hugging Face hub, offline by default: lfvila never downloads behind the user's back.

``local_files_only()`` is the policy every hub read follows (tokenizers, model directories):
only the local cache unless ``HF_HUB_OFFLINE`` is explicitly ``"0"``. ``snapshot(hub_id)``
gives the local directory of a model repository (``huggingface_hub.snapshot_download``) or a
one-line ``ArtifactError`` naming the id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import ArtifactError


def local_files_only() -> bool:
    """True unless ``HF_HUB_OFFLINE`` is explicitly ``"0"``: read the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "1") != "0"


def snapshot(hub_id: str, revision: Optional[str] = None) -> Path:
    """The local directory of hub repository ``hub_id`` at ``revision`` (a branch, tag or commit;
    None: ``main``), from the cache (``HF_HUB_CACHE`` / ``HF_HOME``), or downloaded when
    ``HF_HUB_OFFLINE=0``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    at = f" at revision {revision!r}" if revision else ""
    offline = local_files_only()
    try:
        return Path(snapshot_download(hub_id, revision=revision, local_files_only=offline))
    except HFValidationError:
        raise ArtifactError(f"{hub_id!r}: no such directory, and not a hub id (expected 'org/name')") from None
    except LocalEntryNotFoundError:
        how = "set HF_HUB_OFFLINE=0 to download it" if offline else "and it could not be downloaded"
        raise ArtifactError(f"{hub_id!r}: no such directory, and hub id {hub_id}{at} is not in the local cache ({how})") from None
    except (OSError, ValueError) as exc:  # not found on the hub, no network, a revision that does not exist
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"hub id {hub_id!r}{at}: {detail[:200]}") from None
