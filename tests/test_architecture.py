"""The rules that keep the package's shape (docs/architecture.md), checked.

- The import contracts of ``[tool.importlinter]`` in pyproject.toml: the one-way flow of
  stages, the independence of siblings, no circles between the modules of a package, and
  the optional dependencies kept where they are used.
- No import circle between any two modules, a package's ``__init__`` included (the
  contracts compare a package's children, not a package with its own children).
- The wheel holds the package and nothing else: with the flat layout, ``tests/``,
  ``benchmarks/`` and ``examples/`` sit next to ``gradwatch/`` and would be shipped by a
  too-wide package search.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gradwatch"

#: import-linter (and grimp, which it installs) need Python 3.11+ (see the dev extra).
needs_import_linter = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="import-linter needs Python 3.11+"
)


def test_every_folder_of_the_package_is_a_regular_package() -> None:
    """A folder without ``__init__.py`` is a namespace package: import-linter and grimp
    do not see its modules, so no contract would cover them."""
    missing = sorted(
        str(folder.relative_to(ROOT))
        for folder in [PACKAGE, *PACKAGE.rglob("*")]
        if folder.is_dir()
        and folder.name != "__pycache__"
        and any(folder.glob("*.py"))
        and not (folder / "__init__.py").exists()
    )
    assert not missing, f"add an __init__.py (a docstring: what the folder holds) to {missing}"


@needs_import_linter
def test_import_contracts_are_kept() -> None:
    """``lint-imports`` passes: its report is the failure message otherwise."""
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--no-cache",
            "--no-logo",
            str(ROOT / "pyproject.toml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def import_circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected
    components of more than one module, or a module that imports itself)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = lowest[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(imports.get(module, ())):
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or module in imports.get(module, ()):
                circles.append(sorted(group))

    for module in sorted(imports):
        if module not in index:
            visit(module)
    return circles


def test_import_circles_finds_a_circle() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_circles(imports) == [["a", "b", "c"], ["e"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


@needs_import_linter
def test_no_import_circle_between_modules() -> None:
    """Module by module, type-checking-only and function-level imports included."""
    import grimp

    graph = grimp.build_graph("gradwatch", cache_dir=None)
    modules = {m for m in graph.modules if m == "gradwatch" or m.startswith("gradwatch.")}
    imports = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    circles = import_circles(imports)
    details = [
        " / ".join(
            f"{importer} -> {imported}"
            for importer in circle
            for imported in sorted(imports[importer] & set(circle))
        )
        for circle in circles
    ]
    assert not circles, "import circles: " + "; ".join(details)


def _copy_source_tree(target: Path) -> Path:
    """The checkout without what is not source, so that building touches nothing here."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs"
    )
    return Path(shutil.copytree(ROOT, target / "source", ignore=ignore))


@pytest.mark.slow
def test_wheel_holds_the_package_and_nothing_else(tmp_path: Path) -> None:
    source = _copy_source_tree(tmp_path)
    out = tmp_path / "wheel"
    build = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", str(source),
            "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("gradwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )

    expected = {p.relative_to(source).as_posix() for p in (source / "gradwatch").rglob("*.py")}
    expected.add("gradwatch/py.typed")
    packaged = {n for n in names if n.startswith("gradwatch/")}
    assert packaged == expected, (
        f"missing from the wheel: {sorted(expected - packaged)}; "
        f"not source: {sorted(packaged - expected)}"
    )
    others = sorted(n for n in names if n not in packaged and ".dist-info/" not in n)
    assert others == [], f"the wheel ships more than gradwatch/: {others}"
    assert "gradwatch = gradwatch.__main__:main" in entry_points
    assert "gradwatch = gradwatch.pytest_plugin" in entry_points
