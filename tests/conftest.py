"""Fixtures shared by the tests."""

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
