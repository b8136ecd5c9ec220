"""saturation, dead_units and poor_init on real models that really have the problem,
and silence on healthy ones (a detector that cries wolf is worse than none)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from gradwatch import Alert

from .helpers import watched_run

SERIOUS = ("warning", "error")


def mlp(
    depth: int,
    width: int,
    act: type[nn.Module],
    init: Callable[[torch.Tensor], object] | None = None,
    bias: float | None = None,
    batchnorm: bool = False,
    seed: int = 0,
) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        linear = nn.Linear(8 if i == 0 else width, width)
        if init is not None:
            init(linear.weight)
        if bias is not None:
            nn.init.constant_(linear.bias, bias)
        layers.append(linear)
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(act())
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def he(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, nonlinearity="relu")


def standard_normal(weight: torch.Tensor) -> None:
    nn.init.normal_(weight, 0.0, 1.0)


def regression(batches: int = 6, batch: int = 32, dim: int = 8):
    generator = torch.Generator().manual_seed(1)
    data = []
    for _ in range(batches):
        x = torch.randn(batch, dim, generator=generator)
        data.append((x, x.sum(dim=1, keepdim=True).sin()))
    return data, nn.functional.mse_loss


def train(model: nn.Module, data, loss_fn, steps: int = 12, **options) -> list[Alert]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    options.setdefault("activation_every", 5)
    batches = [data[step % len(data)] for step in range(steps)]
    gw, _ = watched_run(model, batches, optimizer=optimizer, loss_fn=loss_fn, **options)
    return gw.alerts


def serious(alerts: list[Alert], kind: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.severity in SERIOUS and (kind is None or a.kind == kind)]


def check_alert_text(alert: Alert) -> None:
    assert alert.value is not None and math.isfinite(alert.value)
    assert alert.threshold is not None and alert.value >= alert.threshold
    assert alert.message.endswith(".") and alert.remedy


def test_deep_sigmoid_mlp_with_standard_normal_weights() -> None:
    alerts = train(mlp(8, 64, nn.Sigmoid, init=standard_normal), *regression())
    found = serious(alerts, "saturation") + serious(alerts, "poor_init")
    assert found, alerts
    for alert in found:
        check_alert_text(alert)
    gain = next(a for a in found if a.kind == "poor_init")
    assert "too large" in gain.message and "Xavier" in gain.remedy
    assert gain.value == pytest.approx(8.0, rel=0.35)  # sqrt(fan_in) for N(0, 1) weights


def test_default_init_in_a_20_layer_relu_mlp_shrinks_the_signal() -> None:
    alerts = train(mlp(20, 32, nn.ReLU), *regression(), steps=6)
    found = serious(alerts, "poor_init")
    assert len(found) == 1, alerts
    alert = found[0]
    check_alert_text(alert)
    assert alert.step == 0 and "shrinks" in alert.message and "He" in alert.remedy
    assert alert.value > 1e6  # about x0.4 per layer over 21 layers


def test_tanh_net_with_large_weights_saturates() -> None:
    alerts = train(mlp(5, 32, nn.Tanh, init=standard_normal), *regression())
    found = serious(alerts, "saturation")
    assert found, alerts
    check_alert_text(found[0])
    tanh_layers = {str(i) for i in range(1, 10, 2)}
    assert found[0].layer in tanh_layers
    assert found[0].value >= 0.5
    assert "Xavier" in found[0].remedy


def test_relu_layers_with_a_large_negative_bias_are_dead() -> None:
    alerts = train(mlp(4, 32, nn.ReLU, init=he, bias=-5.0), *regression())
    found = serious(alerts, "dead_units")
    assert found, alerts
    check_alert_text(found[0])
    assert found[0].layer == "1" and found[0].value > 0.9
    assert "bias" in found[0].remedy and "LeakyReLU" in found[0].remedy


def test_thresholds_are_options() -> None:
    model = mlp(4, 32, nn.ReLU, init=he, bias=-5.0)
    alerts = train(model, *regression(), steps=2, activation_every=1, dead_units_threshold=1.0)
    # At most a whole-layer death still counts at threshold 1.0; nothing below it does.
    assert all(a.value == 1.0 for a in serious(alerts, "dead_units"))
    alerts = train(
        mlp(5, 32, nn.Tanh, init=standard_normal), *regression(), saturation_threshold=0.95
    )
    assert not serious(alerts, "saturation")
    alerts = train(mlp(20, 32, nn.ReLU), *regression(), steps=6, poor_init_steps=1)
    assert [a.step for a in serious(alerts, "poor_init")] == [0]
    alerts = train(mlp(20, 32, nn.ReLU), *regression(), steps=1, poor_init_ratio=1e12)
    assert not serious(alerts, "poor_init")


# ------------------------------------------------------------------ healthy models


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


def residual_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        ResidualBlock(8),
        ResidualBlock(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def images():
    generator = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 10, (16,)))
        for _ in range(4)
    ]
    return data, nn.functional.cross_entropy


class PreNormTransformer(nn.Module):
    def __init__(self, vocab: int = 16, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(
            width, 4, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens))))


def tokens():
    generator = torch.Generator().manual_seed(1)
    data = []
    for _ in range(4):
        x = torch.randint(0, 16, (8, 10), generator=generator)
        data.append((x, x.roll(1, dims=1)))

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    return data, loss_fn


@pytest.mark.parametrize(
    ("make", "data"),
    [
        (lambda: mlp(6, 32, nn.ReLU, init=he), regression),
        (lambda: mlp(6, 32, nn.ReLU, init=he, batchnorm=True), regression),
        (PreNormTransformer, tokens),
        (residual_cnn, images),
    ],
    ids=["he-mlp", "he-mlp-batchnorm", "prenorm-transformer", "residual-cnn"],
)
def test_healthy_models_raise_no_warning(make, data) -> None:
    alerts = train(make(), *data(), steps=30, activation_every=3)
    assert not serious(alerts), [str(a) for a in alerts]


# ------------------------------------------------------------------ pure functions


def _record(step: int, saturated: list[float], dead: list[float]):
    import numpy as np

    from gradwatch._measure.record import StepRecord

    layers = ("0", "1", "2", "3", "4", "5")
    roles = ("mixing", "bounded", "mixing", "rectifier", "mixing", "bounded")
    nan = float("nan")
    stats = {
        "mean": np.zeros(6),
        "std": np.ones(6),
        "batch_std": np.ones(6),
        "saturated": np.array([nan, saturated[0], nan, nan, nan, saturated[1]]),
        "dead": np.array([nan, nan, nan, dead[0], nan, nan]),
        "nonfinite": np.zeros(6),
    }
    return StepRecord(
        step=step,
        grad_norm=np.ones(3),
        weight_norm=np.ones(3),
        has_grad=np.ones(3, dtype=bool),
        total_grad_norm=1.0,
        activations=stats,
        activation_layers=layers,
        activation_roles=roles,
    )


def _detect(records, detector_name: str, **options):
    from gradwatch._config import WatchConfig
    from gradwatch._detectors import DetectorContext
    from gradwatch._detectors.dead_units import detect_dead_units
    from gradwatch._detectors.saturation import detect_saturation
    from gradwatch._history import History

    history = History(16)
    for record in records:
        history.append(record)
    context = DetectorContext(("0", "2", "4"), ("Linear",) * 3, WatchConfig(**options))
    detector = {"saturation": detect_saturation, "dead_units": detect_dead_units}
    return detector[detector_name](history, context)


def test_saturated_output_activation_is_not_a_gradient_problem() -> None:
    # '5' is the model's output sigmoid (no Linear after it): a confident classifier.
    assert _detect([_record(0, [0.1, 1.0], [0.0])], "saturation") == []
    (alert,) = _detect([_record(0, [0.8, 1.0], [0.0])], "saturation")
    assert alert.layer == "1" and alert.severity == "warning" and alert.value == 0.8


def test_a_level_must_hold_over_the_last_two_samples() -> None:
    (alert,) = _detect(
        [_record(0, [0.9, 0.0], [0.0]), _record(10, [0.3, 0.0], [0.0])], "saturation"
    )
    assert alert.severity == "info" and alert.value == 0.3 and alert.threshold == 0.25
    (alert,) = _detect(
        [_record(0, [0.0, 0.0], [1.0]), _record(10, [0.0, 0.0], [1.0])], "dead_units"
    )
    assert alert.severity == "error" and alert.layer == "3"
    (alert,) = _detect([_record(0, [0.0, 0.0], [0.9])], "dead_units", dead_units_threshold=0.8)
    assert alert.severity == "warning" and alert.threshold == 0.8
    assert _detect([_record(0, [0.0, 0.0], [0.3])], "dead_units") == []
