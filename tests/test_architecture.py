"""The rules that keep the package's shape (docs/architecture.md), checked.

- The import contracts of ``[tool.importlinter]`` in pyproject.toml: the one-way flow of
  stages, the independence of siblings, no circles between the modules of a package, and
  the optional dependencies kept where they are used.
- No import circle between any two modules, a package's ``__init__`` included (the
  contracts compare a package's children, not a package with its own children).
- The wheel holds the package and nothing else: with the flat layout, ``tests/``,
  ``benchmarks/`` and ``examples/`` sit next to ``gradwatch/`` and would be shipped by a
  too-wide package search.
- The sdist holds what its tests need: unpacked, ``pytest`` collects every test file.
- The README's GitHub Actions recipe installs gradwatch from its repository (it is on no
  package index) and the installed command runs.
- The supported versions that pyproject.toml claims are the ones CI installs and tests.
- APIs newer than some torch releases are looked for, not assumed (``DTensor``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch

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


def _build_sdist(source: Path, out: Path) -> Path:
    """The sdist, built by the project's own backend (as ``python -m build --sdist`` would,
    without an isolated environment: no package index needed)."""
    build = subprocess.run(
        [
            sys.executable, "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))",
            str(out),
        ],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (sdist,) = out.glob("gradwatch-*.tar.gz")
    return sdist


@pytest.mark.slow
def test_sdist_tests_are_collected_when_unpacked(tmp_path: Path) -> None:
    """A packager runs the tests from the sdist: conftest.py, the helpers and the zoo must
    be in it, or not a single test is collected."""
    source = _copy_source_tree(tmp_path)
    sdist = _build_sdist(source, tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    for needed in ("tests/conftest.py", "tests/helpers.py", "tests/zoo/__init__.py", "LICENSE"):
        assert (unpacked / needed).is_file(), f"the sdist lacks {needed} (MANIFEST.in)"
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
            "-m", "slow or not slow",
        ],
        cwd=unpacked, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    collected = {line.split("::", 1)[0] for line in run.stdout.splitlines() if "::" in line}
    expected = {p.relative_to(source).as_posix() for p in (source / "tests").glob("test_*.py")}
    assert expected <= collected, f"not collected from the sdist: {sorted(expected - collected)}"


def _readme_ci_install_line() -> str:
    """The requirement that the README's GitHub Actions recipe installs gradwatch with."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = readme.split("```yaml", 1)[1].split("```", 1)[0]
    (requirement,) = re.findall(r'pip install "(gradwatch\[cli\] @ [^"]+)"', recipe)
    return requirement


def test_readme_ci_recipe_installs_gradwatch_from_its_repository() -> None:
    """gradwatch is on no package index: ``pip install -e . "gradwatch[cli]"`` failed with
    "No matching distribution found". The recipe names it with a direct URL."""
    requirement = _readme_ci_install_line()
    name, url = requirement.split(" @ ")
    assert name == "gradwatch[cli]" and url.startswith("git+https://")


@pytest.mark.slow
def test_readme_ci_recipe_install_line_works(tmp_path: Path) -> None:
    """The README's requirement, pointed at a git repository of this source tree instead
    of the network, is installed by pip with no package index; the installed package (its
    own copy, not this checkout) runs the CLI."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    source = _copy_source_tree(tmp_path)
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "source"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=120)
    name, _ = _readme_ci_install_line().split(" @ ")
    requirement = f"{name} @ git+file://{source}"
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--no-build-isolation", "--target", str(target), requirement,
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    (metadata,) = target.glob("gradwatch-*.dist-info/METADATA")
    requires = metadata.read_text(encoding="utf-8")
    assert 'extra == "cli"' in requires and "rich" in requires, "the cli extra is missing"
    run = subprocess.run(
        [
            sys.executable, "-c",
            "import sys, gradwatch; print(gradwatch.__file__); "
            "from gradwatch.__main__ import main; sys.argv = ['gradwatch', '--help']; main()",
        ],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # not this checkout, whose gradwatch/ `python -c` would import
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].startswith(str(target)), run.stdout
    assert "check" in run.stdout and "report" in run.stdout


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_claimed_versions_are_the_tested_ones() -> None:
    """pyproject.toml's floors are the versions scripts/dev.sh installs for CI (Python
    3.11, the only CPython there, and torch 2.13.0): a floor below them would be a claim
    nothing tests. The classifiers list the same Python."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    python_floor = _version(project["requires-python"])
    (torch_req,) = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    torch_floor = _version(torch_req)
    dev_sh = (ROOT / "scripts" / "dev.sh").read_text(encoding="utf-8")
    (pinned,) = re.findall(r'TORCH="torch==([\d.]+)"', dev_sh)
    assert torch_floor == _version(pinned), (torch_req, pinned)
    assert python_floor == (3, 11)
    classified = {
        c.rsplit(":: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert classified == {"3.11"}
    # This run is one of the tested configurations when it runs at the floors.
    assert sys.version_info[:2] >= python_floor
    assert _version(torch.__version__) >= torch_floor


def test_dtensor_is_feature_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds without ``torch.distributed.tensor`` fall back to ``torch.distributed._tensor``,
    and without either there is no sharded parameter to look for."""
    from gradwatch._measure import distributed

    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` raises ImportError
    distributed._dtensor_class.cache_clear()
    try:
        assert distributed._dtensor_class() is None
        assert not distributed.is_dtensor(torch.zeros(1))
        assert distributed.local_tensor(t := torch.zeros(1)) is t
    finally:
        monkeypatch.undo()
        distributed._dtensor_class.cache_clear()
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        assert distributed._dtensor_class() is DTensor
