"""On a GPU, the default hot path never synchronises the host with the device.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising CUDA call
(``.item()``, ``.cpu()``, a blocking copy, ``torch.cuda.synchronize``) into an error, so a
watched step that passes here costs the training thread no wait for the GPU. Skipped on
machines without CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import gradwatch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contextlib.contextmanager
def sync_is_an_error() -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


@pytest.mark.parametrize("float_loss", [False, True], ids=["tensor-loss", "float-loss"])
def test_watched_steps_never_synchronise(tmp_path, float_loss: bool) -> None:
    device = torch.device("cuda")
    model = _model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    batches = [(torch.randn(64, 16, device=device), torch.randn(64, 1, device=device))] * 4
    # update_ratio_every=2: sampled and unsampled steps both run under the check.
    with gradwatch.watch(model, optimizer, logdir=tmp_path, update_ratio_every=2) as watcher:
        x, y = batches[0]  # a first, unchecked step: CUDA/cuBLAS initialise lazily
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        with sync_is_an_error():
            for step in range(12):
                x, y = batches[step % len(batches)]
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                watcher.record_loss(1.5 if float_loss else loss)
                optimizer.step()
                optimizer.zero_grad()
        torch.cuda.synchronize()
        assert watcher.alerts == []
    assert watcher.history.steps_seen == 13
    latest = watcher.history.latest
    assert latest is not None and latest.step == 12
    assert latest.loss is not None and latest.loss == latest.loss


def test_watcher_without_optimizer_never_synchronises() -> None:
    model = _model().cuda()
    with gradwatch.watch(model, update_ratio_every=0) as watcher:
        model(torch.randn(8, 16, device="cuda")).sum().backward()
        watcher.step()
        model.zero_grad()
        with sync_is_an_error():
            for _ in range(5):
                model(torch.randn(8, 16, device="cuda")).sum().backward()
                watcher.step()
                model.zero_grad()
    assert watcher.history.steps_seen == 6
