"""Convert a SpikingJelly model to a2sg_triton and train it with A²SG on digits.

    pip install --no-deps "spikingjelly>=2.0" "loguru>=0.7,<1"   # keeps your torch
    python examples/spikingjelly_to_a2sg.py --epochs 5
    python examples/spikingjelly_to_a2sg.py --keep-surrogate     # keep each node's own surrogate

``a2sg_triton.from_spikingjelly`` swaps every multi-step ``LIFNode`` for an ``nn.LIF`` computing
the same function (docs/porting.md); SpikingJelly's layers stay. The converted layers start every
call from rest, so the loop needs no ``functional.reset_net``.
"""

import argparse

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate

import a2sg_triton
from digits import CLASSES, accuracy, loaders, train_epoch


def spikingjelly_model():
    """A small SpikingJelly CNN as you may already have one: [T, B, 1, 8, 8] -> [T, B, classes]."""
    model = torch.nn.Sequential(
        layer.Conv2d(1, 16, 3, padding=1, bias=False), layer.BatchNorm2d(16),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True),
        layer.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), layer.BatchNorm2d(32),
        neuron.LIFNode(tau=2.0, v_reset=None, surrogate_function=surrogate.Sigmoid()),
        layer.Flatten(), layer.Linear(32 * 4 * 4, CLASSES))
    functional.set_step_mode(model, "m")  # multi-step: whole [T, B, ...] sequences per call
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--keep-surrogate", action="store_true",
                        help="keep ATan/Sigmoid (searching their widths) instead of the asymmetric surrogate")
    parser.add_argument("--limit-batches", type=int, default=0, help="batches per epoch (0: all)")
    parser.add_argument("--n-obs", type=int, default=100, help="observed betas per search (the paper's 100)")
    parser.add_argument("--n-eval", type=int, default=150, help="GP candidates per search (the paper's 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # The two lines that add A²SG to a SpikingJelly model:
    model = a2sg_triton.from_spikingjelly(spikingjelly_model(), args.T,
                                          surrogate=None if args.keep_surrogate else "asy").to(device)
    controller = a2sg_triton.A2SG(model, n_obs=args.n_obs, n_eval=args.n_eval)

    print(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train, test = loaders(args.batch_size, args.seed)
    for epoch in range(args.epochs):
        loss = train_epoch(model, train, optimizer, controller, epoch, args.T, device, args.limit_batches)
        acc = accuracy(model, test, args.T, device)
        print(f"epoch {epoch}: loss {loss:.3f}  test accuracy {acc:.3f}")
        for name, lif in controller.layers.items():  # the converted nn.LIF layers, by module path
            print(f"    {name} beta {[round(b, 3) for b in lif.beta.tolist()]}")
    lifs = controller.layers.values()
    return {"accuracy": acc, "loss": loss, "betas": [m.beta.tolist() for m in lifs],
            "surrogates": [m.surrogate for m in lifs]}


if __name__ == "__main__":
    main()
