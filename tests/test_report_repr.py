"""Report._repr_html_ / _repr_markdown_: the notebook display, read back by parsing it."""

from __future__ import annotations

import base64
import html.parser
from collections import OrderedDict

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import regression_batches
from .unstable_models import negative_bias_relu_mlp


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


class Page(html.parser.HTMLParser):
    """The parts of the page the tests read: text, layer rows, images, list items."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.images: list[str] = []
        self.classes: list[str] = []
        self.cells: dict[str, list[str]] = {}
        self._row: str | None = None
        self._cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "class" in a:
            self.classes.append(a["class"])
        if tag == "tr" and "data-layer" in a:
            self._row = a["data-layer"]
            self.rows[self._row] = a
            self.cells[self._row] = []
        if tag == "td" and self._row is not None:
            self._cell = True
            self.cells[self._row].append("")
        if tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._row is not None and self._cell:
            self.cells[self._row][-1] += data


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def unhealthy() -> gradwatch.Report:
    return gradwatch.check(
        negative_bias_relu_mlp(), regression_batches(2), mse, steps=10, try_fixes=True
    )


def test_html_holds_verdict_causes_fixes_and_marks_vanishing_layers(unhealthy) -> None:
    page = parse(unhealthy._repr_html_())
    text = "".join(page.text)
    assert "UNHEALTHY after 10 step(s)" in text
    cause = unhealthy.diagnoses[0]
    assert cause.cause in text and cause.summary in text
    assert "diagnosis" in page.classes and "fix-trials" in page.classes
    assert unhealthy.fix_trials[0].fix in text
    assert list(page.rows) == [layer.name for layer in unhealthy.layers]
    vanishing = {a.layer for a in unhealthy.alerts if a.kind == "vanishing" and a.layer}
    assert vanishing, unhealthy.summary()
    for name, attrs in page.rows.items():
        marked = attrs.get("class") == "vanishing"
        assert marked == (name in vanishing), name
        if marked:
            assert "background-color" in attrs["style"]
    first = unhealthy.layers[0]
    assert page.cells[first.name][:2] == [first.name, "Linear"]


def test_html_shows_the_flow_picture_inline_when_matplotlib_is_installed(unhealthy) -> None:
    pytest.importorskip("matplotlib")
    images = parse(unhealthy._repr_html_()).images
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
    png = base64.b64decode(images[0].split(",", 1)[1])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_markdown_holds_the_same_records(unhealthy) -> None:
    text = unhealthy._repr_markdown_()
    lines = text.splitlines()
    assert lines[0].startswith("**gradwatch check: UNHEALTHY")
    assert f"**{unhealthy.diagnoses[0].cause}**" in text
    table = [line for line in lines if line.startswith("| ") and "Linear" in line]
    assert len(table) == len(unhealthy.layers)
    assert any("**vanishing**" in line for line in table)
    assert "| fix | healthy |" in text


def test_healthy_report_and_text_from_the_model_are_escaped() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("<b>in", nn.Linear(8, 16)), ("act", nn.ReLU()),
                                       ("out&", nn.Linear(16, 1))]))  # fmt: skip
    report = gradwatch.check(model, regression_batches(2), mse, steps=5)
    assert report.ok
    raw = report._repr_html_()
    assert "<b>in" not in raw and "&lt;b&gt;in" in raw
    page = parse(raw)
    assert list(page.rows) == ["<b>in", "out&"]  # the parser unescapes them back
    text = "".join(page.text)
    assert "HEALTHY after 5 step(s)" in text and "Gradient norms at the last step" in text
    assert "diagnosis" not in page.classes and "fix-trials" not in page.classes
    assert "gradient_history" not in repr(report)  # the notebook's data, not the repr's
