"""Cost of fitting B one-dimensional GPs separately versus as one batched BoTorch model.

Each GP is the search's: 100 observations of a noisy convex metric curve over beta in [0.05, 1],
SingleTaskGP with Normalize/Standardize, float64, fitted with fit_gpytorch_mll. A batched
SingleTaskGP (train_X [B, 100, 1]) gives every member its own hyperparameters and fits them in one
optimisation. Prints seconds per GP and appends JSON rows to --out.

    python bench/bench_gp_batched.py --out /tmp/gp_batched.jsonl
"""

import argparse
import json
import platform
import statistics
import time

import botorch
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood


def curves(batch, n_obs, generator):
    """[batch, n_obs, 1] betas and noisy convex metric values with a random optimum each."""
    beta = 0.05 + 0.95 * torch.rand(batch, n_obs, 1, generator=generator, dtype=torch.float64)
    optimum = 0.2 + 0.6 * torch.rand(batch, 1, 1, generator=generator, dtype=torch.float64)
    noise = 0.01 * torch.randn(batch, n_obs, 1, generator=generator, dtype=torch.float64)
    return beta, (beta - optimum) ** 2 + noise


def fit(beta, y):
    bounds = torch.tensor([[0.05], [1.0]], dtype=torch.float64)
    model = SingleTaskGP(beta, y, input_transform=Normalize(d=1, bounds=bounds),
                         outcome_transform=Standardize(m=1, batch_shape=beta.shape[:-2]))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--n-obs", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="/tmp/gp_batched.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the search runs its GP
    generator = torch.Generator().manual_seed(0)
    print(f"{'B':>4} {'separate s/GP':>14} {'batched s/GP':>13} {'speed-up':>9}")
    with open(args.out, "a") as out:
        for batch in args.batches:
            separate, batched = [], []
            for _ in range(args.reps):
                beta, y = curves(batch, args.n_obs, generator)
                start = time.perf_counter()
                for b in range(batch):
                    fit(beta[b], y[b])
                separate.append((time.perf_counter() - start) / batch)
                start = time.perf_counter()
                fit(beta, y)
                batched.append((time.perf_counter() - start) / batch)
            row = {"batch": batch, "n_obs": args.n_obs, "separate_s_per_gp": statistics.median(separate),
                   "batched_s_per_gp": statistics.median(batched), "torch": torch.__version__,
                   "botorch": botorch.__version__, "cpu": platform.processor() or platform.machine()}
            out.write(json.dumps(row) + "\n")
            print(f"{batch:>4} {row['separate_s_per_gp']:>14.4f} {row['batched_s_per_gp']:>13.4f} "
                  f"{row['separate_s_per_gp'] / row['batched_s_per_gp']:>8.1f}x")


if __name__ == "__main__":
    main()
