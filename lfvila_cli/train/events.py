"""TensorBoard event files beside metrics.jsonl (``train.tensorboard: true``).

Rank 0 writes ``run/tensorboard/`` with the same figures as ``metrics.jsonl``: each logged
training step's loss terms, lr, gradient norm and samples/s (tags ``train/<key>``), and each
validation record's figures (``val/<key>``), on the optimizer-step axis. A fresh run starts the
folder afresh. A resumed one tells TensorBoard to drop what an earlier attempt wrote from the
step of the checkpoint it resumes from on (``purge_step``; that step's validation runs again, as
fit.py drops those records) and writes that step's training record back from ``metrics.jsonl``.
The package is an optional extra: ``require_tensorboard`` fails before anything runs when it is
missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError
from .config import TrainConfig

TENSORBOARD_DIR = "tensorboard"  # in the trainer's run directory
TRAIN_KEYS = ("lr", "grad_norm", "samples_per_s")  # with every loss/<term>
NOT_SCALARS = ("step", "epoch", "seconds")  # the step is the axis; seconds: how long it took


def require_tensorboard(cfg: TrainConfig) -> None:
    """A one-line ``ConfigError`` naming the key when ``cfg.tensorboard`` is set and the package is missing."""
    if not cfg.tensorboard:
        return
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard writes through it)
    except ImportError:
        raise ConfigError(
            "config key 'train.tensorboard': the tensorboard package is not installed "
            "(pip install 'lfvila[tensorboard]', or set train.tensorboard=false)"
        ) from None


class EventWriter:
    """Scalars of the training and validation records into ``log_dir`` (rank 0 only)."""

    def __init__(self, log_dir: Path, resumed_step: int, records: list[dict]) -> None:
        """``resumed_step``: the checkpoint's step (0: a fresh run); ``records``: the run's
        metrics.jsonl records kept so far."""
        from torch.utils.tensorboard import SummaryWriter

        if resumed_step == 0:
            shutil.rmtree(log_dir, ignore_errors=True)  # a fresh run's curves only
        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_step or None)
        for record in records:
            if resumed_step and record["step"] == resumed_step:
                self.train(record)

    def train(self, record: dict) -> None:
        keys = [k for k in record if k.startswith("loss/")] + [k for k in TRAIN_KEYS if k in record]
        self._scalars("train", record, keys)

    def val(self, record: dict) -> None:
        self._scalars("val", record, [k for k in record if k not in NOT_SCALARS])

    def _scalars(self, prefix: str, record: dict, keys: list[str]) -> None:
        step = int(record["step"])
        for key in keys:
            value = record[key]
            # None (no gradient norm), strings and flags are not curves; NaN (a skipped step) is kept
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self.writer.flush()  # a killed run keeps every figure written so far

    def close(self) -> None:
        self.writer.close()
