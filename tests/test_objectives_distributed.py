"""All-gathered losses on 2 gloo ranks vs the single-process loss on the same global batch.

Convention under test (see ``lfvila_cli.objectives``): the mean of the per-rank losses equals
the single-process loss; a rank's raw input gradient is ``world`` times the single-process
gradient of its slice, so that DDP's averaging of parameter gradients gives exactly the
single-process parameter gradient (checked here with a shared projection).
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lfvila_cli.objectives import ObjectiveConfig, temporal_contrastive_loss, video_paragraph_contrastive_loss

WORLD = 2
LOCAL, CLIPS, DIM, IN_DIM = 3, 4, 8, 6


def global_batch():
    """Raw inputs of the whole batch and one projection shared by all ranks (float64)."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL
    return {
        "video": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "paragraph": torch.randn(n, DIM, generator=g, dtype=torch.float64),
        "sentences": torch.randn(n, CLIPS, DIM, generator=g, dtype=torch.float64),
        "clips": torch.randn(n, CLIPS, DIM, generator=g, dtype=torch.float64),
        "raw": torch.randn(n, IN_DIM, generator=g, dtype=torch.float64),
        "projection": torch.randn(DIM, IN_DIM, generator=g, dtype=torch.float64),
    }


def run_losses(data: dict, rows: slice) -> dict:
    """Losses and input/parameter gradients for the samples in ``rows`` (on this rank)."""
    out = {}
    video = data["video"][rows].clone().requires_grad_()
    paragraph = data["paragraph"][rows].clone().requires_grad_()
    vpc = video_paragraph_contrastive_loss(F.normalize(video, dim=-1), F.normalize(paragraph, dim=-1))
    vpc.backward()
    out.update(vpc=vpc.detach(), vpc_video_grad=video.grad, vpc_paragraph_grad=paragraph.grad)

    sentences = data["sentences"][rows].clone().requires_grad_()
    clips = data["clips"][rows].clone().requires_grad_()
    # Same seed on every rank: the plan covers the global batch, each rank scores its rows.
    mtc = temporal_contrastive_loss(
        F.normalize(sentences, dim=-1), F.normalize(clips, dim=-1), torch.Generator().manual_seed(5), ObjectiveConfig()
    )
    mtc.loss.backward()
    out.update(mtc=mtc.loss.detach(), mtc_sentence_grad=sentences.grad, mtc_clip_grad=clips.grad)

    # A shared parameter, as under DDP: features = normalize(raw @ W^T) on both sides.
    projection = data["projection"].clone().requires_grad_()
    feats = F.normalize(data["raw"][rows] @ projection.t(), dim=-1)
    shared = video_paragraph_contrastive_loss(feats, F.normalize(data["video"][rows], dim=-1))
    shared.backward()
    out.update(shared_projection_grad=projection.grad)
    return out


def worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out = run_losses(global_batch(), slice(rank * LOCAL, (rank + 1) * LOCAL))
        # what DDP does to parameter gradients
        dist.all_reduce(out["shared_projection_grad"], op=dist.ReduceOp.SUM)
        out["shared_projection_grad"] /= WORLD
        # unequal local batches must fail loudly on every rank, not hang or mis-slice
        try:
            video_paragraph_contrastive_loss(torch.randn(2 + rank, DIM), torch.randn(2 + rank, DIM))
            out["uneven_error"] = ""
        except ValueError as exc:
            out["uneven_error"] = str(exc)
        torch.save(out, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_match_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = run_losses(global_batch(), slice(None))

    for name in ("vpc", "mtc"):
        mean = sum(r[name] for r in ranks) / WORLD
        torch.testing.assert_close(mean, single[name], rtol=1e-12, atol=1e-12)
    for name in ("vpc_video_grad", "vpc_paragraph_grad", "mtc_sentence_grad", "mtc_clip_grad"):
        for rank, result in enumerate(ranks):
            expected = single[name][rank * LOCAL : (rank + 1) * LOCAL] * WORLD
            torch.testing.assert_close(result[name], expected, rtol=1e-10, atol=1e-12)
    for result in ranks:
        torch.testing.assert_close(result["shared_projection_grad"], single["shared_projection_grad"], rtol=1e-10, atol=1e-12)
        assert "same shape" in result["uneven_error"]
