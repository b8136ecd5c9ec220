"""Check the zoo's premises without gradwatch: does each healthy run learn, does each broken
run really fail, the way its docstring says?

Trains scenarios with a plain loop (no watcher: gradwatch's verdict plays no part) and
prints, per run, the loss at a few points against chance, the step where the loss first
exceeds 3x its start, and the physical quantity behind each failure where the model has it:
the largest attention logit q.k/sqrt(d) of every ``nn.MultiheadAttention``, the largest
|output logit|, and for recurrent nets the gradient reaching the first time step.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -m tests.zoo.verify [--only NAME,...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn

from ._core import SCENARIOS, Run, Scenario, build, logits_of, loss_blowup_step


class AttentionLogitProbe:
    """Records the largest |q.k|/sqrt(head_dim) of every ``nn.MultiheadAttention`` call
    (packed in-projection, self-attention on the query input), recomputed from the module's
    weights in a forward pre-hook; ``take()`` returns the step's maximum and resets."""

    def __init__(self, model: nn.Module) -> None:
        self.largest = 0.0
        self.hooks = [
            module.register_forward_pre_hook(self._record)
            for module in model.modules()
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None
        ]

    def _record(self, module: nn.MultiheadAttention, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        if not module.batch_first:
            x = x.transpose(0, 1)
        d, heads = module.embed_dim, module.num_heads
        weight = module.in_proj_weight.detach()
        bias = module.in_proj_bias
        q = x @ weight[:d].T
        k = x @ weight[d : 2 * d].T
        if bias is not None:
            q, k = q + bias[:d].detach(), k + bias[d : 2 * d].detach()
        q = q.unflatten(-1, (heads, d // heads)).transpose(-3, -2)
        k = k.unflatten(-1, (heads, d // heads)).transpose(-3, -2)
        scores = (q @ k.transpose(-1, -2)).abs().max() / math.sqrt(d // heads)
        self.largest = max(self.largest, float(scores))

    @property
    def active(self) -> bool:
        """True when the model has attention modules this probe can read."""
        return bool(self.hooks)

    def take(self) -> float:
        """The largest attention logit since the last call."""
        value, self.largest = self.largest, 0.0
        return value

    def remove(self) -> None:
        """Remove the hooks."""
        for hook in self.hooks:
            hook.remove()


def first_step_gradient(run: Run) -> Optional[tuple[float, float]]:
    """For a model fed (batch, time, features) float sequences: the largest |dL/dx| at the
    first and at the last time step, on the first batch (None for other inputs)."""
    inputs, targets = run.batches[0]
    if not (isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.dim() == 3):
        return None
    inputs = inputs.clone().requires_grad_(True)
    run.loss_fn(run.model(inputs), targets).backward()
    run.model.zero_grad(set_to_none=True)
    assert inputs.grad is not None
    return float(inputs.grad[:, 0].abs().max()), float(inputs.grad[:, -1].abs().max())


def plain_training(run: Run, steps: int) -> dict[str, list[float]]:
    """Train ``run`` for ``steps`` with a plain loop (no gradwatch): per-step losses, largest
    |output logit| and, if the model has ``nn.MultiheadAttention``, largest attention logit."""
    probe = AttentionLogitProbe(run.model)
    traces: dict[str, list[float]] = {"loss": [], "logit": [], "attention": []}
    run.model.train()
    try:
        for step in range(steps):
            inputs, targets = run.batches[step % len(run.batches)]
            output = run.model(inputs)
            loss = run.loss_fn(output, targets)
            loss.backward()
            traces["loss"].append(loss.item())
            traces["logit"].append(float(logits_of(output).detach().abs().max()))
            if probe.active:
                traces["attention"].append(probe.take())
            if run.clip is not None:
                nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
            run.optimizer.step()
            if run.scheduler is not None:
                run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
    finally:
        probe.remove()
    return traces


def _at(trace: list[float], *fractions: float) -> str:
    points = [min(len(trace) - 1, int(f * len(trace))) for f in fractions]
    return " ".join(f"{trace[i]:.3g}@{i}" for i in points)


def report(scenario: Scenario, seed: int, steps: Optional[int]) -> str:
    """Train one scenario without gradwatch and describe what happened."""
    run = build(scenario, seed)
    gradient = first_step_gradient(run)
    start = time.perf_counter()
    traces = plain_training(run, steps or run.steps)
    seconds = time.perf_counter() - start
    losses = traces["loss"]
    tail = losses[-max(1, len(losses) // 10) :]
    chance = scenario.chance_loss
    lines = [
        f"{scenario.name} s{seed} ({len(losses)} steps, {seconds:.1f}s, "
        f"{1000 * seconds / len(losses):.0f} ms/step): loss {_at(losses, 0, 0.25, 0.5, 0.75)}, "
        f"final {sum(tail) / len(tail):.3g}, min {min(losses):.3g}, chance "
        f"{'-' if chance is None else f'{chance:.3g}'}, x3 at {loss_blowup_step(losses)}",
        f"    largest |logit| {_at(traces['logit'], 0, 0.25, 0.5, 0.75)} "
        f"peak {max(traces['logit']):.3g}@{traces['logit'].index(max(traces['logit']))}",
    ]
    if traces["attention"]:
        attention = traces["attention"]
        lines.append(
            f"    largest attention logit {_at(attention, 0, 0.05, 0.25, 0.5, 0.75)} "
            f"last {attention[-1]:.3g}"
        )
    if gradient is not None:
        lines.append(
            f"    |dL/dx| first step {gradient[0]:.3g}, last step {gradient[1]:.3g} (step 0)"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated name substrings")
    parser.add_argument("--tags", default="real", help="comma-separated tags (any)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = [n for n in args.only.split(",") if n]
    tags = {t for t in args.tags.split(",") if t}
    for scenario in SCENARIOS.values():
        if names and not any(n in scenario.name for n in names):
            continue
        if tags and not tags & scenario.tags:
            continue
        print(report(scenario, args.seed, args.steps), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
