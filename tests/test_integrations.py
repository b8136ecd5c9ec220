"""The integrations are optional: gradwatch never imports a framework, and a missing one
gives an ImportError naming the extra to install."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


@pytest.mark.slow
def test_importing_gradwatch_imports_no_framework() -> None:
    code = (
        "import sys, gradwatch, gradwatch.integrations\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r}))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("lightning", ("lightning", "pytorch_lightning"), "lightning"),
        ("transformers", ("transformers",), "transformers"),
    ],
)
def test_missing_framework_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, blocked: tuple[str, ...], extra: str
) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in blocked:
            monkeypatch.setitem(sys.modules, name, None)
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    monkeypatch.delitem(sys.modules, f"gradwatch.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'gradwatch\[{extra}\]'"):
        importlib.import_module(f"gradwatch.integrations.{module}")
