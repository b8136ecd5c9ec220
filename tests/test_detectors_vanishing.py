"""``vanishing`` on models whose gradients really vanish."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradwatch

from .unstable_models import (
    chain_batches,
    default_init_relu_mlp,
    he_mlp,
    linear_chain,
    mse,
    negative_bias_relu_mlp,
    regression,
    scalar_batches,
    scalar_chain,
    sigmoid_normal_mlp,
)


def vanishing(report: gradwatch.Report) -> list[gradwatch.Alert]:
    return [alert for alert in report.alerts if alert.kind == "vanishing"]


def test_linear_chain_of_0_5_identity_vanishes_everywhere() -> None:
    report = gradwatch.check(linear_chain(0.5), chain_batches(2), mse, steps=8)
    alerts = vanishing(report)
    assert alerts and alerts[0].severity == "error", report.summary()
    assert "No layer can move the loss" in alerts[0].message
    assert not report.ok


def test_scalar_chain_w_0_7_vanishes_on_the_input_side() -> None:
    report = gradwatch.check(scalar_chain(0.7), scalar_batches(2), mse, steps=8)
    alerts = vanishing(report)
    assert alerts and alerts[0].layer == "0"
    assert alerts[0].value is not None and alerts[0].value < 1e-4


def test_pytorch_default_init_in_a_20_layer_relu_mlp_vanishes() -> None:
    report = gradwatch.check(default_init_relu_mlp(), regression(4), mse, steps=8)
    alerts = vanishing(report)
    assert alerts, report.summary()
    first = alerts[0]
    assert first.severity in ("warning", "error")
    assert first.layer == "0"  # the input side is named first
    assert first.threshold is not None and first.value is not None
    assert first.value < first.threshold
    assert "'0', '2', '4'" in first.message
    assert "He" in first.remedy and "residual" in first.remedy


def test_deep_sigmoid_mlp_with_normal_weights_vanishes() -> None:
    report = gradwatch.check(sigmoid_normal_mlp(), regression(4), mse, steps=8)
    alerts = vanishing(report)
    assert alerts and alerts[0].severity in ("warning", "error"), report.summary()
    assert "sigmoid" in alerts[0].remedy


def test_dead_relus_from_a_large_negative_bias_cut_the_gradient_to_zero() -> None:
    report = gradwatch.check(negative_bias_relu_mlp(), regression(4), mse, steps=8)
    alerts = vanishing(report)
    assert alerts and alerts[0].layer == "0"
    assert "exactly zero" in alerts[0].message
    assert alerts[0].value == 0.0


def test_he_initialised_mlp_does_not_vanish() -> None:
    report = gradwatch.check(he_mlp(depth=8), regression(4), mse, steps=10)
    assert vanishing(report) == []


@pytest.mark.parametrize("shape", [(10, 4), (1, 7), (5, 1), (3, 6)])
@pytest.mark.parametrize("axis", [0, -1])
def test_fast_nanmedian_equals_numpys(shape: tuple[int, int], axis: int) -> None:
    from gradwatch._detectors._common import nanmedian

    rng = np.random.default_rng(sum(shape))
    values = rng.random(shape)
    values[rng.random(shape) < 0.3] = np.nan
    values[0, :] = np.nan  # an all-NaN row (and, for one column, an all-NaN column)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns on all-NaN slices
        expected = np.nanmedian(values, axis=axis)
    np.testing.assert_allclose(nanmedian(values, axis=axis), expected, equal_nan=True)


def test_loose_root_parameters_are_not_layers_of_the_chain() -> None:
    """A learned positional embedding owned by the root model is added to the signal, not
    multiplied into it: its small gradient is no vanishing input side (the false alarm
    this guards against fired on a healthy 6-block transformer)."""
    import torch
    from torch import nn

    class GPT(nn.Module):
        def __init__(self, vocab: int = 64, d: int = 128, blocks: int = 6) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.randn(1, 32, d) * 0.02)
            block = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True,
                                               norm_first=True)  # fmt: skip
            self.blocks = nn.TransformerEncoder(block, blocks, enable_nested_tensor=False)
            self.head = nn.Linear(d, vocab)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(self.embed(tokens) + self.pos[:, : tokens.shape[1]]))

    torch.manual_seed(1234)
    generator = torch.Generator().manual_seed(0)
    data = [
        (x, x.roll(1, dims=1))
        for x in (torch.randint(0, 64, (8, 32), generator=generator) for _ in range(4))
    ]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    model = GPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    report = gradwatch.check(
        model, data, loss_fn, optimizer=optimizer, steps=10, activation_every=0
    )
    assert [a for a in report.alerts if a.kind == "vanishing"] == [], report.summary()
    # the root still is a watched layer: its norms are measured and logged
    assert any(layer.name == "" for layer in report.layers)


def test_trend_detectors_judge_every_half_window_and_once_more_at_close() -> None:
    """``vanishing`` judges every ``trend_window // 2`` steps (not every step: it is the
    costliest detector), and ``close()`` judges the last step when that was not a
    judging step, so a run shorter than the cadence is still judged."""
    calls: list[int] = []
    model = linear_chain(0.5)
    with gradwatch.watch(model, trend_window=8) as gw:
        original = gw._detectors
        from gradwatch._detectors.vanishing import detect_vanishing

        def counting(history, context):  # type: ignore[no-untyped-def]
            calls.append(history.latest.step)
            return detect_vanishing(history, context)

        counting.judges_trend = True  # type: ignore[attr-defined]
        gw._detectors = [counting if d is detect_vanishing else d for d in original]
        for x, y in chain_batches(1) * 10:
            loss = mse(model(x), y)
            loss.backward()
            gw.record_loss(loss)
            gw.step()
            model.zero_grad()
    assert calls == [3, 7, 9]  # every 4 steps, then the last step at close()
    alerts = [alert for alert in gw.alerts if alert.kind == "vanishing"]
    # step 3 has 4 steps of history, fewer than the 5 vanishing needs: first at step 7
    assert alerts and alerts[0].step == 7 and alerts[0].severity == "error"


def test_a_run_shorter_than_the_cadence_is_judged_at_close() -> None:
    # trend_window=6: judging steps 2, 5, ...; vanishing needs 5 steps of history, so
    # in a 5-step run only the judgement at close(), of step 4, can see it.
    report = gradwatch.check(linear_chain(0.5), chain_batches(2), mse, steps=5, trend_window=6)
    alerts = vanishing(report)
    assert alerts and alerts[0].step == 4, report.summary()


def test_a_long_trend_window_still_makes_one_episode() -> None:
    """With trend_window=60 the detector judges every 10 steps (not 30): well within the
    alert book's 20-step gap, so a lasting vanishing gradient stays one alert."""
    report = gradwatch.check(linear_chain(0.5), chain_batches(2), mse, steps=100, trend_window=60)
    alerts = vanishing(report)
    assert len(alerts) == 1, [(a.step, a.severity) for a in alerts]


# The depth layers of the benchmark transformer (benchmarks/bench_overhead.py: 4 pre-LN
# blocks with nn.MultiheadAttention, d=256, an untied 1000-way output layer) and their
# loss sensitivities ‖g‖·‖w‖ after 120 steps of AdamW (median over 20 steps).
_BLOCK = ("attn.out_proj", "mlp.0", "mlp.2")
_NUMEL = {"attn.out_proj": 65_792, "mlp.0": 263_168, "mlp.2": 262_400}
_TRANSFORMER = {
    **{
        f"blocks.{b}.{name}": s
        for b, sensitivities in enumerate(
            [
                (0.3055, 2.316, 2.149),
                (0.3212, 2.252, 2.103),
                (0.3393, 2.197, 2.069),
                (0.383, 2.150, 2.041),
            ]
        )
        for name, s in zip(_BLOCK, sensitivities)
    },
    "head": 10.81,
}


def _judge(
    sensitivities: dict[str, float], numel: dict[str, int] | None = None
) -> list[gradwatch.Alert]:
    """detect_vanishing on a history whose every step has these sensitivities (layer
    sizes: ``numel``, else the benchmark transformer's by the name's last part)."""
    from gradwatch._config import WatchConfig
    from gradwatch._detectors import DetectorContext
    from gradwatch._detectors.vanishing import detect_vanishing
    from gradwatch._history import History
    from gradwatch._measure.record import StepRecord

    names = tuple(sensitivities)
    sizes = tuple(
        (numel or {}).get(name, _NUMEL.get(name.split(".", 2)[-1], 257_000)) for name in names
    )
    context = DetectorContext(names, ("Linear",) * len(names), WatchConfig(), sizes)
    history = History(64)
    values = np.array(list(sensitivities.values()))
    for step in range(20):
        history.append(
            StepRecord(
                step=step,
                grad_norm=values,  # with ‖w‖ = 1, ‖g‖·‖w‖ is the gradient's norm
                weight_norm=np.ones(len(names)),
                has_grad=np.ones(len(names), dtype=bool),
                total_grad_norm=float(np.linalg.norm(values)),
                loss=6.9,
            )
        )
    return detect_vanishing(history, context)


def _blocks(out_proj: tuple[float, ...], head: float = 10.81) -> dict[str, float]:
    """The benchmark transformer's sensitivities with these for its attention outputs."""
    sensitivities = dict(_TRANSFORMER, head=head)
    for block, value in enumerate(out_proj):
        sensitivities[f"blocks.{block}.attn.out_proj"] = value
    return sensitivities


def test_the_output_layer_is_no_reference_for_the_layers_before_it() -> None:
    """The benchmark transformer as measured: its attention output projections are ~0.03
    times as sensitive as its untied 1000-way output layer (an info before), and a
    healthy Hugging Face Llama's blocks ~0.006-0.01 times its untied 32,000-word head
    (warnings from step 4 on before). The head reads the model out into the loss; the
    blocks' layers are compared with each other."""
    assert _judge(_TRANSFORMER) == []
    llama = {f"layers.{b}.{name}": 0.22 for b in range(4) for name in ("v", "o", "up", "down")}
    assert _judge({**llama, "lm_head": 29.5}) == []


def test_a_branch_starved_alike_in_every_block_is_no_vanishing() -> None:
    """Attention outputs ~0.03 times as sensitive as the MLP layers beside them, just
    under the info level (0.0316), in the first block as in the last: a branch that
    matters less on data without structure, not a gradient shrinking on its way to the
    input."""
    assert _judge(_blocks((0.065, 0.068, 0.07, 0.072))) == []


def test_the_same_layers_starved_only_on_the_input_side_are_an_info() -> None:
    """The same, but the attention outputs grow more sensitive towards the output (the
    first 0.065, the last 2.0): a borderline vanishing, said as an info."""
    (alert,) = _judge(_blocks((0.065, 1.0, 1.5, 2.0)))
    assert (alert.kind, alert.severity) == ("vanishing", "info")
    assert alert.layer == "blocks.0.attn.out_proj"


def test_a_borderline_input_layer_without_peers_is_judged_as_before() -> None:
    """An input-most layer of a size found nowhere closer to the output (an MLP's input
    layer, 8 -> 32) has no peers to show a trend: the borderline info stands on the ratio
    alone, although the hidden layers after it are all alike (as the transformer's
    attention projections were)."""
    sensitivities = {"input": 0.06, "hidden.0": 2.3, "hidden.1": 2.1, "head": 10.8}
    sizes = {"input": 8 * 32 + 32, "hidden.0": 32 * 32 + 32, "hidden.1": 32 * 32 + 32}
    sizes["head"] = 32 + 1
    alerts = _judge(sensitivities, sizes)
    assert [(a.severity, a.layer) for a in alerts] == [("info", "input")]
    # The same first layer with a peer as starved as it, closer to the output: no trend.
    sizes["hidden.1"] = sizes["input"]
    assert _judge({**sensitivities, "hidden.1": 0.062}, sizes) == []
