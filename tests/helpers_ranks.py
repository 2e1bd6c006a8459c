"""Two CPU ranks over gloo running one small training script (tests of the trainer under a
multi-rank launch): the script's common part, and the launch."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A Trainer over test_train_engine's small model, each rank on its own shard; a test appends
# what it does with ``trainer`` (its argv: what the test passes).
TOY_TRAINING = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train_engine import config, make_model
    from lfvila_cli.train.engine import Trainer

    rank = int(os.environ["RANK"])

    def batches(epoch, start):
        for i in range(start, 6):  # each rank sees its own shard
            g = torch.Generator().manual_seed(100 * rank + 10 * epoch + i)
            yield torch.randn(2, 4, 6, generator=g), torch.randn(2, generator=g)

    def loss_fn(engine, batch, step):
        x, y = batch
        mse = (engine(x) - y).pow(2).mean()
        return {{"total": mse, "mse": mse}}
    """
).format(tests=str(Path(__file__).parent))


def write_worker(path: Path, tail: str) -> Path:
    """``TOY_TRAINING`` followed by ``tail`` (dedented), written to ``path``."""
    path.write_text(TOY_TRAINING + textwrap.dedent(tail))
    return path


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(script: Path, args_of_rank, timeout: float) -> list[str]:
    """Run ``script`` as ranks 0 and 1 (``args_of_rank(rank)``: its arguments) and return their
    outputs; a rank that fails fails the test with the end of its output."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
        }
        procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args_of_rank(rank))], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return outputs
