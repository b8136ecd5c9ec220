"""De-duplication of alerts into episodes: news only when a problem gets worse."""

from __future__ import annotations

from gradwatch import Alert
from gradwatch._alerts import AlertBook


def _vanishing(step: int, value: float, severity: str = "warning") -> Alert:
    return Alert("vanishing", severity, step, "0", "m", value=value, threshold=1e-2)  # type: ignore[arg-type]


def test_a_repeat_at_a_less_bad_value_after_a_quiet_spell_is_not_news() -> None:
    book = AlertBook(gap=20)
    assert book.offer(_vanishing(4, 0.00901))
    # 40 quiet steps later, the same layer again but less far below its threshold
    assert not book.offer(_vanishing(44, 0.00962))
    assert [a.value for a in book.alerts] == [0.00901]


def test_a_worse_value_after_a_quiet_spell_and_a_higher_severity_are_news() -> None:
    book = AlertBook(gap=20)
    assert book.offer(_vanishing(4, 0.009))
    assert not book.offer(_vanishing(10, 0.001))  # same episode: within the gap
    assert book.offer(_vanishing(40, 0.0005))  # after a quiet spell, further below
    assert book.offer(_vanishing(41, 0.0009, "error"))  # escalates
    assert not book.offer(_vanishing(42, 0.00001, "warning"))


def test_a_value_above_its_threshold_is_worse_when_larger() -> None:
    book = AlertBook(gap=5)
    exploding = Alert("exploding", "warning", 0, None, "m", value=20.0, threshold=10.0)
    assert book.offer(exploding)
    assert not book.offer(Alert("exploding", "warning", 10, None, "m", value=15.0, threshold=10.0))
    assert book.offer(Alert("exploding", "warning", 20, None, "m", value=30.0, threshold=10.0))


def test_a_problem_back_after_a_long_quiet_spell_is_news_again() -> None:
    book = AlertBook(gap=20, forget=200)
    assert book.offer(_vanishing(0, 0.009))
    assert book.offer(_vanishing(300, 0.0095))
