"""The public sink interface: gradwatch.Sink, watch(sinks=[...]), global_step_offset."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Mapping

import pytest
import torch

import gradwatch
from gradwatch import SinkFailureWarning
from gradwatch.sinks import BaseSink

from .helpers import make_mlp, regression_batches, train_steps
from .readme_examples import run_example


class Recorder(BaseSink):
    """Keeps what it is given (a copy of each step's scalars, the alerts, the calls)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.mappings: list[Mapping[str, float]] = []
        self.alerts: list[gradwatch.Alert] = []
        self.flushes = 0
        self.closed = 0

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.steps.append((step, dict(scalars)))
        self.mappings.append(scalars)

    def write_alert(self, alert: gradwatch.Alert) -> None:
        self.alerts.append(alert)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed += 1


class PlainSink:
    """A sink that does not inherit from anything: the protocol is structural."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.steps.append(step)

    def write_alert(self, alert: gradwatch.Alert) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _run(steps: int = 8, *, nan_at: int | None = None, **options):
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradwatch.watch(model, optimizer, **options) as gw:
        train_steps(model, optimizer, regression_batches(steps), gw, nan_at=nan_at)
    return gw


def test_sink_gets_every_logged_step_with_tensorboard_tags_and_the_alerts() -> None:
    sink = Recorder()
    gw = _run(9, nan_at=6, sinks=[sink], log_every=2)
    assert [step for step, _ in sink.steps] == [0, 2, 4, 6, 8]
    records = {r.step: r for r in gw.history}
    for step, scalars in sink.steps:
        record = records[step]
        value = scalars["total/grad_norm"]
        assert value == pytest.approx(record.total_grad_norm, rel=1e-6, nan_ok=True)
        # One grad_norm/<layer> per layer with a gradient, named as in TensorBoard.
        assert {tag for tag in scalars if tag.startswith("grad_norm/")} == {
            f"grad_norm/{tag}" for tag in gw.index.tags
        }
        assert all(isinstance(value, float) for value in scalars.values())
    assert "total/loss" in sink.steps[0][1]
    assert [(a.kind, a.step) for a in sink.alerts] == [(a.kind, a.step) for a in gw.alerts]
    assert ("nonfinite", 6) in [(a.kind, a.step) for a in sink.alerts]
    assert sink.closed == 1


def test_a_plain_object_with_the_four_methods_is_a_sink() -> None:
    sink = PlainSink()
    assert isinstance(sink, gradwatch.Sink)
    assert isinstance(BaseSink(), gradwatch.Sink)
    _run(4, sinks=[sink])
    assert sink.steps == [0, 1, 2, 3]


def test_sinks_share_one_read_only_mapping_per_step() -> None:
    first, second = Recorder(), Recorder()
    _run(3, sinks=[first, second])
    for a, b in zip(first.mappings, second.mappings):
        assert a is b  # built once per step, whatever the number of sinks
    with pytest.raises(TypeError):
        first.mappings[0]["total/grad_norm"] = 0.0  # type: ignore[index]


def test_global_step_offset_shifts_steps_and_alerts_for_sinks_only() -> None:
    sink = Recorder()
    gw = _run(5, nan_at=3, sinks=[sink], global_step_offset=100)
    assert [step for step, _ in sink.steps] == [100, 101, 102, 103, 104]
    assert [a.step for a in sink.alerts if a.kind == "nonfinite"] == [103]
    assert [a.step for a in gw.alerts if a.kind == "nonfinite"] == [3]
    assert [r.step for r in gw.history] == [0, 1, 2, 3, 4]


class Broken(Recorder):
    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if step == 2:
            raise ConnectionError("tracking server went away")
        super().write_scalars(step, scalars)


def test_a_failing_sink_warns_once_and_nothing_else_is_lost() -> None:
    broken, healthy = Broken(), Recorder()
    with pytest.warns(SinkFailureWarning, match="tracking server went away") as caught:
        gw = _run(8, nan_at=5, sinks=[broken, healthy])
    assert len(caught) == 1
    assert "Broken (sinks=)" in str(caught[0].message)
    assert [step for step, _ in broken.steps] == [0, 1]
    assert broken.alerts == [] and broken.closed == 1  # closed once it failed
    assert [step for step, _ in healthy.steps] == list(range(8))
    assert [a.step for a in healthy.alerts if a.kind == "nonfinite"] == [5]
    assert [r.step for r in gw.history] == list(range(8))


class NoFlush:
    def write_scalars(self, step, scalars):
        pass

    def write_alert(self, alert):
        pass

    def close(self):
        pass


class InternalStyle:
    """Written against gradwatch's internal interface (write_step), not the public one."""

    def write_step(self, record, index):
        pass

    def write_alert(self, alert):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class WrongArity(BaseSink):
    def write_scalars(self, scalars):  # type: ignore[override]
        pass


@pytest.mark.parametrize(
    ("sinks", "error", "match"),
    [
        ([NoFlush()], TypeError, r"sinks\[0\] \(NoFlush\) is not a gradwatch.Sink: no method fl"),
        ([InternalStyle()], TypeError, r"no method write_scalars\(\).*internal interface"),
        ([Recorder(), WrongArity()], TypeError, r"sinks\[1\].*write_scalars\(\) does not take 2"),
        (Recorder(), TypeError, r"sinks must be a list of sinks, got Recorder.*sinks=\[sink\]"),
        ("mlflow", TypeError, r"sinks must be a list of sinks, got str"),
    ],
)  # fmt: skip
def test_bad_sinks_are_refused_at_attach(tmp_path, sinks, error, match) -> None:
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    logdir = tmp_path / "run"
    with pytest.raises(error, match=match):
        gradwatch.watch(model, optimizer, logdir=logdir, sinks=sinks)
    assert not logdir.exists()  # refused before anything was created
    gradwatch.watch(model, optimizer).close()  # and the model is not left watched


def test_the_same_sink_twice_is_refused() -> None:
    sink = Recorder()
    with pytest.raises(ValueError, match=r"sinks\[1\] \(Recorder\) is listed twice"):
        gradwatch.watch(make_mlp(), sinks=[sink, sink])


@pytest.mark.parametrize(
    ("offset", "error", "match"),
    [
        (-1, ValueError, "global_step_offset must be >= 0, got -1"),
        (1.5, TypeError, "global_step_offset must be an int, got float"),
        (True, TypeError, "global_step_offset must be an int, got bool"),
    ],
)
def test_bad_step_offsets_are_refused(offset, error, match) -> None:
    with pytest.raises(error, match=match):
        gradwatch.watch(make_mlp(), sinks=[Recorder()], global_step_offset=offset)


def test_step_offset_without_writer_or_sinks_is_refused() -> None:
    with pytest.raises(ValueError, match="neither was given"):
        gradwatch.watch(make_mlp(), global_step_offset=10)


def test_numpy_integer_offset_is_accepted() -> None:
    np = pytest.importorskip("numpy")
    sink = Recorder()
    _run(2, sinks=[sink], global_step_offset=np.int64(7))
    assert [step for step, _ in sink.steps] == [7, 8]


def test_readme_own_sink_example_runs(capsys) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_example("### Your own sink", steps=11)
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == ["step 0", "step 5", "step 10"]


@pytest.mark.slow
def test_importing_gradwatch_imports_neither_mlflow_nor_wandb() -> None:
    code = (
        "import sys, gradwatch, gradwatch.sinks\n"
        "from gradwatch.sinks import MLflowSink, WandbSink\n"
        "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
