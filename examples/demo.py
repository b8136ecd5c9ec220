"""gradwatch demo: a healthy model next to unstable ones, each diagnosed.

Trains a few small models on the CPU for a few dozen steps each, watched by gradwatch,
prints what it found (and what to do about it), and writes TensorBoard logs.

Run:  bash scripts/dev.sh demo     (or: python examples/demo.py [--logdir runs/demo])
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

import torch
from torch import nn

import gradwatch


def he_relu_mlp() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Healthy: He-initialised ReLU MLP trained with Adam."""
    layers: list[nn.Module] = []
    for _ in range(6):
        linear = nn.Linear(32, 32)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    return model, torch.optim.Adam(model.parameters(), lr=3e-3)


def sgd_learning_rate_too_high() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Unstable: the same kind of MLP with SGD at a learning rate far too high."""
    model, _ = he_relu_mlp()
    return model, torch.optim.SGD(model.parameters(), lr=5.0)


def deep_sigmoid_normal_init() -> tuple[nn.Module, torch.optim.Optimizer]:
    """Unstable: a deep sigmoid MLP with N(0, 1) weights (Glorot & Bengio, 2010)."""
    layers: list[nn.Module] = []
    for _ in range(12):
        linear = nn.Linear(32, 32)
        nn.init.normal_(linear.weight, 0.0, 1.0)
        layers += [linear, nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


SCENARIOS: dict[str, Callable[[], tuple[nn.Module, torch.optim.Optimizer]]] = {
    "healthy_he_relu_mlp": he_relu_mlp,
    "sgd_lr_too_high": sgd_learning_rate_too_high,
    "deep_sigmoid_normal_init": deep_sigmoid_normal_init,
}


def run(
    name: str, logdir: str, steps: int
) -> tuple[list[gradwatch.Alert], list[gradwatch.Diagnosis]]:
    torch.manual_seed(0)
    model, optimizer = SCENARIOS[name]()
    target = torch.randn(32, 1) / 32**0.5  # unit-variance targets: learnable in a few dozen steps
    # tensorboard_tags="ordered": TensorBoard opens on the totals and the gradient flow,
    # layers in depth order (the default keeps the stable names, grad_norm/<layer>, ...).
    with gradwatch.watch(
        model, optimizer, logdir=os.path.join(logdir, name), tensorboard_tags="ordered"
    ) as gw:
        for _ in range(steps):
            x = torch.randn(64, 32)
            loss = nn.functional.mse_loss(model(x), x @ target)
            loss.backward()
            gw.record_loss(loss)
            optimizer.step()
            optimizer.zero_grad()
    return gw.alerts, gw.diagnoses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/demo", help="where TensorBoard logs go")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per model")
    args = parser.parse_args(argv)
    # The demo prints alerts itself; keep Python's last-resort handler from echoing them.
    logging.getLogger("gradwatch").addHandler(logging.NullHandler())
    for name in SCENARIOS:
        alerts, diagnoses = run(name, args.logdir, args.steps)
        serious = [a for a in alerts if a.severity != "info"]
        verdict = "healthy" if not serious else f"{len(serious)} problem(s) found"
        if diagnoses:
            verdict += f": {len(diagnoses)} cause(s)"
        print(f"\n== {name}: {verdict}")
        # The cause and what to change first; the alerts are its evidence.
        for diagnosis in diagnoses:
            print("  cause " + diagnosis.format().replace("\n", "\n    "))
        if diagnoses and alerts:
            print("  evidence:")
        for alert in alerts:
            print(f"  - {alert.format()}")
    print(f"\nTensorBoard logs: {os.path.abspath(args.logdir)}")
    print(f"Open them with:   tensorboard --logdir {args.logdir}   (then http://localhost:6006)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
