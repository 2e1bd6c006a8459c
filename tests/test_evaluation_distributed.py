"""Validation shared by 2 gloo ranks equals the single-process pass (embeddings, QA logits, order)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lfvila_cli.evaluation import embed_dataset, evaluate_stage1, predict_task

WORLD = 2
N = 5  # odd: the last rank's share is padded with the head of the order


class _Cfg:
    seed = 0


class FakeDataset(torch.utils.data.Dataset):
    """What make_loader and the evaluation need: examples keyed by index, a collate_fn."""

    cfg = _Cfg()
    train = False

    def __init__(self, kind: str = "retrieval") -> None:
        self.kind = kind
        gen = torch.Generator().manual_seed(1)
        self.frames = torch.randn(N, 16, 3, 64, 96, generator=gen)
        choices = 3 if kind == "multiple_choice" else None
        shape = (N, choices, 2, 32) if choices else (N, 2, 32)
        self.ids = torch.randint(5, 100, shape, generator=gen)
        self.mask = torch.zeros_like(self.ids)
        self.mask[..., :7] = 1
        self.ids *= self.mask
        self.samples = []

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return N

    def __getitem__(self, key):
        i = key[1] if isinstance(key, tuple) else key
        return i

    def collate_fn(self, items):
        index = torch.as_tensor(items)
        return {
            "frames": self.frames[index], "input_ids": self.ids[index], "attention_mask": self.mask[index],
            "label": index % 2, "sample_ids": [f"s{i}" for i in items],
        }


def _model(variant: str):
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.presets import get_preset

    torch.manual_seed(0)
    return build_model(get_preset("lfvila-tiny", variant)).eval()


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        stage1, qa = _model("stage1"), _model("qa-multichoice")
        out = {
            "embed": embed_dataset(stage1, FakeDataset(), 2, with_local=True, rank=rank, world_size=WORLD),
            "qa": predict_task(qa, FakeDataset("multiple_choice"), 2, rank=rank, world_size=WORLD),
            "stage1": evaluate_stage1(stage1, FakeDataset(), 2, rank=rank, world_size=WORLD),
        }
        torch.save(out, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_validation_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = {r: torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)}

    stage1, qa = _model("stage1"), _model("qa-multichoice")
    single = embed_dataset(stage1, FakeDataset(), 2, with_local=True)
    single_qa = predict_task(qa, FakeDataset("multiple_choice"), 2)
    single_metrics = evaluate_stage1(stage1, FakeDataset(), 2)
    for rank in range(WORLD):  # every rank gets the whole result, in index order
        got = results[rank]
        assert got["embed"]["sample_ids"] == single["sample_ids"] == [f"s{i}" for i in range(N)]
        for key in ("video", "text", "clips", "sentences"):
            assert got["embed"][key].shape == single[key].shape
            assert torch.allclose(got["embed"][key], single[key], atol=1e-5), key
        assert torch.equal(got["embed"]["sentence_mask"], single["sentence_mask"])
        assert got["qa"]["sample_ids"] == single_qa["sample_ids"]
        assert torch.allclose(got["qa"]["logits"], single_qa["logits"], atol=1e-5) and torch.equal(got["qa"]["labels"], single_qa["labels"])
        assert got["stage1"] == pytest.approx(single_metrics)
