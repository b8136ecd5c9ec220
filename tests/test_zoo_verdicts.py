"""gradwatch's verdict on every scenario of the model zoo (``tests/zoo``).

Healthy runs, textbook and real architectures alike (Hugging Face GPT-2, BERT, ViT,
ResNet, Llama, torch Transformers, LSTM/GRU language models, a CNN on the digits), must
end without a single warning or error; every broken run must raise a warning or error
of a kind that fits its failure. The real architectures train for 100-300 steps each, so
they are marked slow (CI runs them; ``benchmarks/sweep_detectors.py`` prints the same
verdicts as a table, with lead times).
"""

from __future__ import annotations

import pytest

from .zoo import SCENARIOS, train


def _params() -> list[object]:
    params: list[object] = []
    for name, scenario in sorted(SCENARIOS.items()):
        marks = [pytest.mark.slow] if "real" in scenario.tags else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _params())
def test_zoo_verdict(name: str) -> None:
    outcome = train(SCENARIOS[name])
    raised = [(a.kind, a.severity, a.step, a.layer, a.message) for a in outcome.problems]
    assert outcome.verdict == "OK", (
        f"{name}: {outcome.verdict}; expected {sorted(outcome.scenario.expect or ())} "
        f"(None = healthy); raised {raised}"
    )
