"""Two CPU ranks over gloo train with ZeRO 2 on different data and end with identical weights."""

import pytest
import torch
from helpers_ranks import run_two_ranks, write_worker
from test_train_engine import make_model


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_agree_on_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LFVILA_PROGRESS_S", "0")  # a progress line per step (no terminal: output is piped)
    script = write_worker(tmp_path / "worker.py", """
        import logging
        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("lfvila_cli.progress").setLevel(logging.INFO)
        trainer = Trainer(make_model(), loss_fn, config(epochs=1, checkpoint_every=2), sys.argv[1])
        result = trainer.train(batches, 3)
        torch.save(trainer.engine.module.state_dict(), sys.argv[2] + f"/rank{rank}.pt")
    """)
    outputs = run_two_ranks(script, lambda rank: [tmp_path / "run", tmp_path], timeout=120)

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
    progress = [[line for line in text.splitlines() if line.startswith("lfvila_cli.progress: train: step")] for text in outputs]
    assert [len(p) for p in progress] == [3, 0], outputs  # rank 0 only: steps 1, 2, then the closing line
    assert progress[0][0].startswith("lfvila_cli.progress: train: step 1/3 (33%), loss ") and " (mse " in progress[0][0]
