"""The README's examples, run as they are printed.

:func:`readme_example` returns the first ``python`` code block under a README heading;
:func:`run_example` executes it with the names the README's examples take as given
(``gradwatch``, imported at the README's top; ``model``, ``optimizer``, ``batches``,
``loss_fn``: a small real MLP and its data), so a
README example that stops working fails a test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

import gradwatch

from .helpers import make_mlp, regression_batches

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(heading: str) -> str:
    """The first ```python block after the line ``heading`` (e.g. ``### MLflow``)."""
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{heading}\n")
    assert start >= 0, f"README has no heading {heading!r}"
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no python block under {heading!r}"
    return match.group(1)


def run_example(heading: str, *, steps: int = 12, **names: Any) -> dict[str, Any]:
    """Execute the example under ``heading``; returns its namespace afterwards."""
    model = make_mlp(seed=3)
    namespace: dict[str, Any] = {
        "gradwatch": gradwatch,
        "model": model,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
        "batches": regression_batches(steps),
        "loss_fn": torch.nn.functional.mse_loss,
        **names,
    }
    code = readme_example(heading)
    exec(compile(code, f"README.md ({heading})", "exec"), namespace)
    return namespace
