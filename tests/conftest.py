"""Fixtures shared by the tests, and the hint that names the slow tests left out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .helpers import make_mlp, regression_batches

pytest_plugins = ["pytester"]


@pytest.fixture
def mlp() -> nn.Sequential:
    return make_mlp()


@pytest.fixture
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return regression_batches(8)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how to run the slow tests that the default ``-m "not slow"`` (pyproject's
    addopts) left out: a file of only slow tests otherwise reports just 'deselected'."""
    left_out = [
        item
        for item in terminalreporter.stats.get("deselected", [])
        if isinstance(item, pytest.Item) and item.get_closest_marker("slow") is not None
    ]
    if left_out:
        terminalreporter.write_line(
            f"{len(left_out)} slow test(s) left out; run them with "
            "`bash scripts/dev.sh test -m slow` (CI runs them)."
        )
