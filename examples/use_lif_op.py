"""A hand-written spiking network with a2sg_triton's fused LIF, trained with A²SG on digits.

    python examples/use_lif_op.py --epochs 5

Two ways to put the neuron in your own model:
- the module ``a2sg_triton.nn.LIF``: its surrogate width beta (one per timestep) is a buffer that
  the controller ``a2sg_triton.A2SG`` searches once per epoch inside the backward pass;
- the op ``a2sg_triton.lif_multistep(x, beta, surrogate, ...)``, called in your module's forward
  with a beta of your own (the controller does not touch it).
Both take x as [T, B, ...] and return spikes of the same shape.
"""

import argparse

import torch

import a2sg_triton
from a2sg_triton.models.layers import TimeDistributed
from a2sg_triton.nn import LIF
from digits import CLASSES, accuracy, loaders, train_epoch


class OpLIF(torch.nn.Module):
    """A LIF written with the op: SpikingJelly's charge (decay 1 - 1/tau, input x/tau), hard reset,
    a fixed triangular surrogate of width 0.5 at every timestep."""

    def __init__(self, T, tau=2.0):
        super().__init__()
        self.tau = tau
        self.register_buffer("beta", torch.full((T,), 0.5))

    def forward(self, x):
        return a2sg_triton.lif_multistep(x, self.beta, "tri", decay=1 - 1 / self.tau, input_scale=1 / self.tau,
                                         reset="hard", v_reset=0.0)


class Net(torch.nn.Module):
    """conv-BN-LIF (searched), conv-BN-OpLIF (fixed beta), linear readout; TimeDistributed folds
    [T, B, ...] into [T*B, ...] around stateless layers (SpikingJelly's SeqToANNContainer)."""

    def __init__(self, T):
        super().__init__()
        self.conv1 = TimeDistributed(torch.nn.Conv2d(1, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16))
        self.lif1 = LIF(T, "asy", tau=2.0)  # the paper's neuron and surrogate
        self.conv2 = TimeDistributed(torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
                                     torch.nn.BatchNorm2d(32))
        self.lif2 = OpLIF(T)
        self.head = TimeDistributed(torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, CLASSES))

    def forward(self, x):  # [T, B, 1, 8, 8] -> [T, B, classes]
        return self.head(self.lif2(self.conv2(self.lif1(self.conv1(x)))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit-batches", type=int, default=0, help="batches per epoch (0: all)")
    parser.add_argument("--n-obs", type=int, default=100, help="observed betas per search (the paper's 100)")
    parser.add_argument("--n-eval", type=int, default=150, help="GP candidates per search (the paper's 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Net(args.T).to(device)
    controller = a2sg_triton.A2SG(model, n_obs=args.n_obs, n_eval=args.n_eval)  # searches lif1's beta
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train, test = loaders(args.batch_size, args.seed)
    for epoch in range(args.epochs):
        loss = train_epoch(model, train, optimizer, controller, epoch, args.T, device, args.limit_batches)
        acc = accuracy(model, test, args.T, device)
        print(f"epoch {epoch}: loss {loss:.3f}  test accuracy {acc:.3f}  lif1 beta {model.lif1.beta.tolist()}")
    return {"accuracy": acc, "loss": loss, "beta": model.lif1.beta.tolist()}


if __name__ == "__main__":
    main()
