"""Two CPU ranks over gloo train with ZeRO 2 on different data and end with identical weights."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_train_engine import make_model

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
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

    trainer = Trainer(make_model(), loss_fn, config(epochs=1, checkpoint_every=2), sys.argv[1])
    result = trainer.train(batches, 3)
    torch.save(trainer.engine.module.state_dict(), sys.argv[2] + f"/rank{{rank}}.pt")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_agree_on_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
        }
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]

    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    initial = make_model().state_dict()
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=0, rtol=0)
    assert any(not torch.equal(first[n], initial[n]) for n in first)  # training did move the weights
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "step_00000002" / "COMPLETE").is_file() and (ckpts / "step_00000003" / "COMPLETE").is_file()
    assert (ckpts / "step_00000003" / "rng_rank1.pt").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 only
