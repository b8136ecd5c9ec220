"""Watched models and optimizers can still be copied, saved and pickled."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import gradwatch
from gradwatch._measure.hooks import InertHook

from .helpers import make_mlp, regression_batches


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    x, y = regression_batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize(
    "options",
    [{}, {"activation_every": 1, "locate_nonfinite": True}],
    ids=["default", "activation-and-localisation-hooks"],
)
def test_copies_and_pickles_while_watched_and_after(tmp_path, options) -> None:
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gradwatch.watch(model, optimizer, logdir=tmp_path, **options) as gw:
        _one_step(model, optimizer)
        model_copy = copy.deepcopy(model)
        optimizer_copy = copy.deepcopy(optimizer)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        pickled = pickle.loads(pickle.dumps(optimizer))
        state = model.state_dict()
        # The copies are not watched: stepping them records nothing in the watcher,
        # and their forwards feed no statistics into it.
        assert all(
            isinstance(h, InertHook)
            for m in model_copy.modules()
            for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        )
        _one_step(model_copy, torch.optim.SGD(model_copy.parameters(), lr=0.1))
        optimizer_copy.zero_grad()
        optimizer_copy.step()
        assert gw.step_count == 1
        _one_step(model, optimizer)
        assert gw.step_count == 2
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert set(loaded.state_dict()) == set(state)
    assert isinstance(pickled, torch.optim.Adam)
    # After close, everything is as if gradwatch had never been there.
    copy.deepcopy(model)
    pickle.dumps(optimizer)
    assert not optimizer._optimizer_step_pre_hooks


def test_watcher_hook_becomes_inert_when_copied() -> None:
    from gradwatch._measure.hooks import WatcherHook

    class Owner:
        calls = 0

        def method(self) -> int:
            self.calls += 1
            return self.calls

    owner = Owner()
    hook = WatcherHook(owner, "method")
    assert hook() == 1
    clone = copy.deepcopy(hook)
    assert isinstance(clone, InertHook) and clone() is None
    assert isinstance(pickle.loads(pickle.dumps(hook)), InertHook)
    assert owner.calls == 1


def test_safe_hook_holds_its_owner_weakly_swallows_errors_and_logs_them_once(caplog) -> None:
    import gc
    import logging
    import weakref

    from gradwatch._measure.hooks import SafeHook

    class Owner:
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []
            self.dropped: list[str] = []

        def work(self, tag: str, value: int) -> None:
            if value < 0:
                raise ValueError("a measurement failed")
            self.calls.append((tag, value))

        def drop(self, tag: str) -> None:
            self.dropped.append(tag)

    owner = Owner()
    hook = SafeHook(owner, "work", "t", on_error="drop")
    assert hook(1) is None and owner.calls == [("t", 1)]
    with caplog.at_level(logging.DEBUG, logger="gradwatch"):
        assert hook(-1) is None and hook(-2) is None  # swallowed
    assert owner.dropped == ["t", "t"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Owner.work" in warnings[0].getMessage()
    assert isinstance(copy.deepcopy(hook), InertHook)
    # Another owner, never failed (a logged traceback holds the frames that held it).
    other = Owner()
    hook = SafeHook(other, "work", "u")
    gone = weakref.ref(other)
    del other
    gc.collect()
    assert gone() is None  # the hook kept nothing alive...
    assert hook(1) is None  # ...and does nothing now
