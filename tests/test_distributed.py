"""Data parallel search: candidate sums are all-reduced, so every rank chooses the same betas."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from a2sg_triton import A2SG
from a2sg_triton.nn import ILIF
from test_controller import SEARCH, T, batch, betas, two_layer_model

WORLD = 2


def loss_of(model, x):
    out = model(x)
    return (out * torch.linspace(-1, 1, out.shape[-1])).sum()  # a sum: the ranks' deltas concatenate exactly


def model_of(kind):
    """The controller tests' two LIF layers, or the same net with two-level I-LIF neurons."""
    model = two_layer_model()
    if kind == "ilif":
        model[1], model[3] = ILIF(T, levels=2, backend="torch"), ILIF(T, levels=2, backend="torch")
    return model


def _rank_main(rank, kind, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = model_of(kind)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        a2 = A2SG(ddp, **SEARCH)
        a2.begin_epoch(0)
        x = batch(n=12).chunk(WORLD, dim=1)[rank]
        loss_of(ddp, x).backward()
        torch.save({"betas": betas(model), "history": a2.history}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while another still talks
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["lif", "ilif"])
def test_ranks_choose_identical_betas_equal_to_one_process(tmp_path, kind):
    mp.spawn(_rank_main, args=(kind, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = model_of(kind)
    a2 = A2SG(model, **SEARCH)
    a2.begin_epoch(0)
    loss_of(model, batch(n=12)).backward()

    single = betas(model)
    assert all(not torch.equal(b, torch.full_like(b, 0.5)) for b in single)  # a search happened
    for layer in range(len(single)):
        assert torch.equal(ranks[0]["betas"][layer], ranks[1]["betas"][layer])  # bit-identical across ranks
        # the all-reduced sums equal the one-process sums up to float64 summation order
        torch.testing.assert_close(ranks[0]["betas"][layer], single[layer], rtol=0, atol=1e-12)
    assert len(ranks[0]["history"]) == len(a2.history)
    for row_rank, row_single in zip(ranks[0]["history"], a2.history):
        assert row_rank["best_value"] == pytest.approx(row_single["best_value"], rel=1e-9)
