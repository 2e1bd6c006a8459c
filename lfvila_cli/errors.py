"""User-facing errors: each prints as one line and exits non-zero (tracebacks with LFVILA_DEBUG=1)."""


class LfvilaError(Exception):
    """An error the user can fix; its message is one line that names the file, record or key."""

    exit_code = 1


class ConfigError(LfvilaError):
    """Unknown config key, wrong type or invalid value."""

    exit_code = 2


class DataError(LfvilaError):
    """Malformed or unreadable input data (annotation file, corpus, video)."""


class ArtifactError(LfvilaError):
    """A missing, incomplete or inconsistent artifact in the work directory."""


class CheckpointError(LfvilaError):
    """A training checkpoint that cannot be read or written (missing, truncated, corrupt, disk full)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holding objects other than tensors and plain data: refused, never unpickled."""


class DeviceError(LfvilaError):
    """A device that was asked for and cannot run here (no GPU, no CUDA libraries, a CPU build)."""
