"""The embedded digits data (scikit-learn's 8x8 images, no download) and the training loop that the
examples share: each image repeated over T (direct encoding), logits = the output averaged over T."""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from a2sg_triton.data import build_datasets
from a2sg_triton.models.layers import direct_encode

CLASSES = 10


def loaders(batch_size, seed=0, rank=0, world=1):
    """(train, test) loaders; under torchrun each rank trains on its own shard."""
    train_set, test_set, _ = build_datasets("digits", seed=seed)
    sampler = DistributedSampler(train_set, world, rank, seed=seed) if world > 1 else None
    train = DataLoader(train_set, batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(seed))
    return train, DataLoader(test_set, 256)


def train_epoch(model, loader, optimizer, controller, epoch, T, device, limit=0):
    """One epoch (the first ``limit`` batches if limit > 0); returns the mean loss."""
    controller.begin_epoch(epoch)  # arms the beta search for this epoch's first iteration
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    model.train()
    losses = []
    for x, y in loader:
        if limit and len(losses) == limit:
            break
        loss = F.cross_entropy(model(direct_encode(x.to(device), T)).mean(0), y.to(device))  # x: [T, B, 1, 8, 8]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def accuracy(model, loader, T, device):
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(direct_encode(x.to(device), T)).mean(0).argmax(1).cpu() == y).sum().item()
        total += len(y)
    return correct / total
