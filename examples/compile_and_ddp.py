"""torch.compile and data parallel training (torchrun, DistributedDataParallel) with A²SG on digits.

    python examples/compile_and_ddp.py --epochs 3                          # one process
    torchrun --nproc_per_node 2 examples/compile_and_ddp.py --epochs 3     # two (NCCL on GPUs, else gloo)

Nothing special is needed: wrap as usual (DDP, then torch.compile) and give the wrapped model to
``A2SG``, which finds the ``nn.LIF`` layers beneath the wrappers. In the searching backward every
rank all-reduces the candidate statistics first, so all ranks choose the same betas; the LIF ops
are opaque to torch.compile, so a compiled model searches too.
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import a2sg_triton
from digits import accuracy, loaders, train_epoch
from use_lif_op import Net


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit-batches", type=int, default=0, help="batches per epoch (0: all)")
    parser.add_argument("--n-obs", type=int, default=100, help="observed betas per search (the paper's 100)")
    parser.add_argument("--n-eval", type=int, default=150, help="GP candidates per search (the paper's 150)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--out", help="write each rank's final betas to OUT/rank<r>.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    cuda = torch.cuda.is_available()
    rank = 0
    device = torch.device("cuda" if cuda else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank = dist.get_rank()
        if cuda:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
    try:
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = Net(args.T).to(device)
        wrapped = DistributedDataParallel(model, device_ids=[device] if cuda else None) if world > 1 else model
        wrapped = torch.compile(wrapped, backend=args.compile_backend)
        controller = a2sg_triton.A2SG(wrapped, n_obs=args.n_obs, n_eval=args.n_eval)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        train, test = loaders(args.batch_size, args.seed, rank, world)
        for epoch in range(args.epochs):
            loss = train_epoch(wrapped, train, optimizer, controller, epoch, args.T, device, args.limit_batches)
            if rank == 0:  # the plain model: DDP's forward would wait for the other ranks
                acc = accuracy(model, test, args.T, device)
                print(f"epoch {epoch}: loss {loss:.3f} (rank 0's shard)  test accuracy {acc:.3f}  "
                      f"lif1 beta {[round(b, 3) for b in model.lif1.beta.tolist()]}", flush=True)
        betas = {name: lif.beta.tolist() for name, lif in controller.layers.items()}
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
                json.dump({"betas": betas, "world": world}, f)
        return betas
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
