"""On a GPU, the default hot path never synchronises the host with the device.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising CUDA call
(``.item()``, ``.cpu()``, a blocking copy, ``torch.cuda.synchronize``) into an error, so a
watched step that passes here costs the training thread no wait for the GPU. The step's
vector reaches the host through pinned memory (a non-blocking copy into pageable memory
would be a synchronous one), and what gradwatch keeps on the device grows with the
layers, not the parameters. Skipped on machines without CUDA; ``bash
benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import sync_is_an_error

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


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


@pytest.mark.parametrize(
    "options",
    [{}, {"locate_nonfinite": True}, {"activation_every": 1, "update_ratio_every": 1}],
    ids=["default", "locate_nonfinite", "every-step-sampling"],
)
def test_sampled_and_localising_steps_never_synchronise(tmp_path, options: dict) -> None:
    """Activation, attention and logit statistics and NaN localisation, all on a small
    transformer, under the sync check for every step kind."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=True)
    model = nn.Sequential(layer, nn.Linear(32, 10)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 12, 32, device=device)
    y = torch.randint(0, 10, (4, 12), device=device)

    def step(watcher: gradwatch.Watcher) -> None:
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        watcher.record_loss(loss)
        optimizer.step()
        optimizer.zero_grad()

    with gradwatch.watch(model, optimizer, logdir=tmp_path, **options) as watcher:
        step(watcher)  # CUDA initialises lazily
        with sync_is_an_error():
            for _ in range(11):  # crosses a sampled step at the default cadence too
                step(watcher)
        torch.cuda.synchronize()
    assert watcher.history.steps_seen == 12
    assert watcher.alerts == []


def test_host_copies_go_through_pinned_memory_without_a_sync() -> None:
    from gradwatch._measure.transfer import to_host

    values = torch.arange(6, dtype=torch.float32, device="cuda") * 1.5
    with sync_is_an_error():
        copy = to_host(None, values)  # type: ignore[arg-type]  # the pending step rides along
        buffer = copy._buffer
        assert isinstance(buffer, torch.Tensor) and buffer.is_pinned()
        copy.done()  # polling the event never blocks
    assert copy.result().tolist() == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]


def _device_bytes_gradwatch_holds(width: int, depth: int = 10, steps: int = 12) -> int:
    """Bytes the caching allocator holds after watched steps, minus the same unwatched."""
    device = torch.device("cuda")

    def held(watched: bool) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(8, width, device=device)
        with contextlib.ExitStack() as stack:
            watcher = None
            if watched:  # update ratios off: their copy of the weights is documented
                watcher = stack.enter_context(
                    gradwatch.watch(model, optimizer, update_ratio_every=0)
                )
            for _ in range(steps):
                loss = model(x).square().mean()
                loss.backward()
                if watcher is not None:
                    watcher.record_loss(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            in_use = torch.cuda.memory_allocated(device)
        del model, optimizer, x
        torch.cuda.empty_cache()
        return in_use

    return held(True) - held(False)


def test_device_memory_grows_with_layers_not_parameters() -> None:
    """At the same depth, 64x more parameters per layer must not make gradwatch hold more
    than a sliver of them: what it keeps between steps are per-layer vectors (update
    ratios aside: they copy the weights, as documented)."""
    narrow, wide = _device_bytes_gradwatch_holds(64), _device_bytes_gradwatch_holds(512)
    param_bytes_added = 10 * (512 * 512 + 512 - 64 * 64 - 64) * 4
    assert narrow >= 0 and wide >= 0
    assert wide - narrow < param_bytes_added // 100, (narrow, wide)
