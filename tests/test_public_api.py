"""The public surface is pinned: removing or renaming a name must fail here."""

from __future__ import annotations

import dataclasses
import importlib.resources

import gradwatch


def test_all_is_pinned() -> None:
    assert sorted(gradwatch.__all__) == sorted(
        [
            "__version__",
            "AGC",
            "Alert",
            "Diagnosis",
            "FixTrial",
            "AutoClip",
            "check",
            "ClipNorm",
            "Clipper",
            "ClipValue",
            "LayerSummary",
            "NonFiniteError",
            "Report",
            "Sink",
            "SinkFailureWarning",
            "WatchConfig",
            "Watcher",
            "ZClip",
            "watch",
        ]
    )
    for name in gradwatch.__all__:
        assert hasattr(gradwatch, name), name


def test_alert_is_frozen_with_contract_fields() -> None:
    fields = {f.name for f in dataclasses.fields(gradwatch.Alert)}
    assert {
        "kind",
        "severity",
        "step",
        "layer",
        "message",
        "value",
        "threshold",
        "remedy",
    } <= fields
    alert = gradwatch.Alert("nonfinite", "error", 3, "fc1", "boom", float("nan"), None, "fix")
    try:
        alert.step = 4  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("Alert must be frozen")
    assert alert.to_dict()["value"] == "nan"
    assert "fc1" in str(alert) and "fix" in str(alert)


def test_package_ships_py_typed() -> None:
    assert importlib.resources.files("gradwatch").joinpath("py.typed").is_file()
