"""The documentation site (mkdocs.yml, docs/) is built and kept in step with the code.

- ``mkdocs build --strict`` passes: a broken link or anchor, a page missing from the
  navigation or a mkdocstrings reference to a name that does not exist fails it (slow: it
  renders the API reference).
- Every public name is in the API reference and has a docstring, and so has every public
  method or property of a public class (inherited docstrings count, as ``help()`` shows
  them).
- Every alert kind and every diagnosis cause has its section; the options table is
  generated from WatchConfig (docs/hooks.py), and refuses an undocumented option.
- The README's links into docs/ point to pages that exist.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import gradwatch
from gradwatch._alerts import ALERT_KINDS
from gradwatch._diagnosis.record import CAUSES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Modules whose ``__all__`` is public API; the trainer integrations besides them (checked
#: where their framework is installed).
API_MODULES = ("gradwatch", "gradwatch.pytest_plugin", "gradwatch.sinks")
INTEGRATIONS = (
    "gradwatch.integrations.lightning.GradWatchCallback",
    "gradwatch.integrations.transformers.GradWatchCallback",
)

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or not (ROOT / "mkdocs.yml").exists(),
    reason="the docs extra (pip install -e '.[docs]') and mkdocs.yml are needed",
)


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gradwatch_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _headings(page: str) -> list[str]:
    """The ``## `name` `` headings of a docs page, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"^## `([a-z_]+)`$", text, flags=re.MULTILINE)


def _public_names() -> list[tuple[str, Any]]:
    """(qualified name, object) of every public name of :data:`API_MODULES`."""
    out = []
    for module in map(importlib.import_module, API_MODULES):
        for name in module.__all__:
            if not name.startswith("__"):
                out.append((f"{module.__name__}.{name}", getattr(module, name)))
    return out


def test_every_alert_kind_has_its_section() -> None:
    headings = _headings("reference/alerts.md")
    assert sorted(headings) == sorted(ALERT_KINDS), (
        f"docs/reference/alerts.md: add a '## `kind`' section for "
        f"{sorted(set(ALERT_KINDS) - set(headings))}; remove "
        f"{sorted(set(headings) - set(ALERT_KINDS))}"
    )


def test_every_cause_has_its_section() -> None:
    headings = _headings("reference/causes.md")
    assert sorted(headings) == sorted(CAUSES), (
        f"docs/reference/causes.md: add a '## `cause`' section for "
        f"{sorted(set(CAUSES) - set(headings))}; remove {sorted(set(headings) - set(CAUSES))}"
    )


def test_every_public_name_is_in_the_api_reference() -> None:
    page = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    referenced = set(re.findall(r"^::: ([\w.]+)$", page, flags=re.MULTILINE))
    wanted = {f"gradwatch.{name}" for name in gradwatch.__all__ if not name.startswith("__")}
    wanted |= {*API_MODULES[1:], *INTEGRATIONS}
    missing = sorted(wanted - referenced)
    assert not missing, f"docs/reference/api.md: add '::: NAME' for {missing}"


def test_every_public_module_is_in_the_api_reference() -> None:
    """A module without a leading underscore in its path is public: it is listed in
    :data:`API_MODULES` or :data:`INTEGRATIONS`, and so in the API reference."""
    package = ROOT / "gradwatch"
    public = {
        ".".join(("gradwatch", *path.relative_to(package).with_suffix("").parts))
        for path in package.rglob("*.py")
        if not any(part.startswith("_") for part in path.relative_to(package).parts)
    }
    covered = {*API_MODULES, *(name.rsplit(".", 1)[0] for name in INTEGRATIONS)}
    assert sorted(public - covered) == [], "add them to API_MODULES or INTEGRATIONS"


def _protocol_docs(objects: list[Any]) -> list[tuple[set[str], dict[str, str]]]:
    """Each public Protocol's method names and their docstrings: a class that implements
    every method of one (as ``BaseSink`` implements ``Sink``) inherits their docstrings,
    as it would from a base class."""
    out = []
    for obj in objects:
        if inspect.isclass(obj) and getattr(obj, "_is_protocol", False):
            methods = {n for n, m in vars(obj).items() if inspect.isfunction(m) and n[0] != "_"}
            docs = {n: inspect.getdoc(getattr(obj, n)) or "" for n in methods}
            out.append((methods, docs))
    return out


def _undocumented(
    qualname: str, obj: Any, protocols: list[tuple[set[str], dict[str, str]]]
) -> list[str]:
    """``qualname`` and its public methods/properties that have no docstring."""
    out = [] if inspect.getdoc(obj) else [qualname]
    if inspect.isclass(obj):
        own = vars(obj)
        implemented = [docs for methods, docs in protocols if methods <= own.keys()]
        for name, member in own.items():
            routine = inspect.isfunction(member) or isinstance(
                member, (property, classmethod, staticmethod)
            )
            if name.startswith("_") or not routine:
                continue
            # inspect.getdoc looks a method's or property's docstring up in the base
            # classes when it has none of its own.
            if not inspect.getdoc(getattr(obj, name)) and not any(
                docs.get(name) for docs in implemented
            ):
                out.append(f"{qualname}.{name}")
    return out


def test_every_public_name_has_a_docstring() -> None:
    names = _public_names()
    protocols = _protocol_docs([obj for _, obj in names])
    missing = [m for name, obj in names for m in _undocumented(name, obj, protocols)]
    assert not missing, f"add a docstring (what and why) to {missing}"


def test_the_docstring_check_finds_an_undocumented_method() -> None:
    class Documented:
        """A class."""

        def method(self) -> None:
            pass

    assert _undocumented("x.Documented", Documented, []) == ["x.Documented.method"]
    protocol = ({"method"}, {"method": "What it does."})
    assert _undocumented("x.Documented", Documented, [protocol]) == []


@pytest.mark.parametrize("qualname", INTEGRATIONS)
def test_the_integrations_have_docstrings(qualname: str) -> None:
    """Their framework hooks (``on_fit_start`` ...) inherit the framework's docstrings."""
    module_name, _, name = qualname.rpartition(".")
    framework = module_name.rsplit(".", 1)[1]
    pytest.importorskip(framework)
    cls = getattr(importlib.import_module(module_name), name)
    assert _undocumented(qualname, cls, []) == []


def test_the_options_table_has_every_option_with_its_default() -> None:
    table = _hooks().options_table()
    names = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    assert names == list(gradwatch.WatchConfig.option_names())
    assert "| `vanishing_ratio` | `0.01` |" in table
    assert "| `exploding_rel_grad` | `1e4` |" in table
    assert "| `vanishing_floor` | `1e-7` |" in table


def test_the_options_table_refuses_an_undocumented_option() -> None:
    @dataclasses.dataclass(frozen=True)
    class Config:
        """Options.

        Attributes:
            documented: has a meaning,
                over two lines.
        """

        documented: int = 1
        forgotten: int = 2

    hooks = _hooks()
    assert hooks.option_descriptions(Config.__doc__ or "") == {
        "documented": "has a meaning, over two lines."
    }
    with pytest.raises(ValueError, match="forgotten"):
        hooks.options_table(Config)


def test_readme_links_into_docs_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert links, "the README should link to the documentation pages"
    missing = sorted({link for link in links if not (ROOT / link).exists()})
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.slow
@needs_mkdocs
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """What `bash scripts/dev.sh docs` runs; warnings (a broken link, a page left out of
    the navigation, an unknown name in '::: ...') fail it."""
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    site = tmp_path / "site"
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "gradwatch.watch" in api or 'id="gradwatch.watch"' in api
    options = (site / "reference" / "options" / "index.html").read_text(encoding="utf-8")
    assert "gradwatch:options" not in options and "flow_image_every" in options
    shutil.rmtree(site)
