"""The smallest useful gradwatch example: a plain PyTorch training loop, watched.

Run:  python examples/plain_loop.py
Then: tensorboard --logdir runs/plain_loop
"""

from __future__ import annotations

import torch
from torch import nn

import gradwatch


def main(logdir: str = "runs/plain_loop", steps: int = 200) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    true_w = torch.randn(20, 1)

    with gradwatch.watch(model, optimizer, logdir=logdir) as gw:  # the one added line
        for _ in range(steps):
            x = torch.randn(64, 20)
            loss = nn.functional.mse_loss(model(x), x @ true_w)
            loss.backward()
            gw.record_loss(loss)  # optional: puts the loss next to the gradients
            optimizer.step()
            optimizer.zero_grad()

    print(f"final loss {loss.item():.4f}; alerts: {gw.alerts or 'none'}")
    print(f"TensorBoard logs are in {logdir}/ -> tensorboard --logdir {logdir}")


if __name__ == "__main__":
    main()
