"""``gradwatch check TARGET``: the real console script on real models in temporary files.

Exit status is the CI contract: 0 healthy, 1 unhealthy, 2 usage error.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwatch._cli._errors import UsageError
from gradwatch._cli._target import split_target, validate_returned

from .cli_helpers import run_cli, run_main

HEALTHY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(64, 8)
    return model, [(x, x.sum(dim=1, keepdim=True).sin())], nn.functional.mse_loss
"""

# SGD with a learning rate far too high on a regression with large targets: the weights
# overshoot, gradients grow each step and reach inf/NaN within a few steps.
DIVERGING = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    x = torch.randn(64, 8)
    print("user code prints this")
    data = [(x, 10 * x.sum(dim=1, keepdim=True))]
    return model, data, nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.5)


def not_a_tuple():
    return "model"


def two_items():
    return build()[:2]


def raises_in_forward():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 1)

        def forward(self, x):
            return self.linear(x) @ torch.ones(3, 3)  # shape error in the user's forward

    x = torch.randn(4, 8)
    return Broken(), [(x, x)], nn.functional.mse_loss


SETTING = 3
"""

IMPORT_ERROR = """
import torch
import a_module_that_does_not_exist_42


def build():
    pass
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "healthy_model.py").write_text(HEALTHY)
    (root / "diverging_model.py").write_text(DIVERGING)
    (root / "broken_import.py").write_text(IMPORT_ERROR)
    package = root / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(HEALTHY)
    return root


@pytest.mark.slow
def test_healthy_file_exits_0_with_the_per_layer_table(project: Path) -> None:
    result = run_cli("check", str(project / "healthy_model.py") + ":build", "--steps", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ": HEALTHY after 5 step(s)" in out
    assert "\x1b[" not in out  # piped: plain text
    assert "grad norm" in out and "weight norm" in out
    assert "\n0      Linear" in out and "\n2      Linear" in out
    assert "Alerts (0)" in out


@pytest.mark.slow
def test_diverging_model_exits_1_with_alert_and_remedy(project: Path) -> None:
    result = run_cli("check", "diverging_model.py:build", "--steps", "8", cwd=project)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert ": UNHEALTHY after 8 step(s)" in result.stdout
    assert "[error] nonfinite at step " in result.stdout
    assert "    Try: lower the learning rate" in result.stdout
    assert "user code prints this" in result.stderr  # never mixed into the report


@pytest.mark.slow
def test_json_is_report_to_dict_and_ignore_changes_the_exit_status(project: Path) -> None:
    args = ("check", "diverging_model.py:build", "--steps", "8", "--json")
    strict = run_cli(*args, cwd=project)
    assert strict.returncode == 1
    data = json.loads(strict.stdout)  # user prints went to stderr: stdout is pure JSON
    assert data["ok"] is False and data["steps"] == 8
    kinds = [a["kind"] for a in data["alerts"]]
    # The growth is caught as `exploding` before the NaN, which is `nonfinite`.
    assert {"exploding", "nonfinite"} <= set(kinds)
    assert kinds.index("exploding") < kinds.index("nonfinite")
    assert len(data["layers"]) == 3 and "final_grad_norm" in data["layers"][0]
    assert data["cli"] == {
        "healthy": False,
        "exit_status": 1,
        "fail_on": "warning",
        "ignore": [],
        "failing": sum(a["severity"] != "info" for a in data["alerts"]),
        "target": "diverging_model.py:build",
        "logdir": None,
    }
    lenient = run_cli(*args, "--ignore", ",".join(sorted(set(kinds))), cwd=project)
    assert lenient.returncode == 0
    assert json.loads(lenient.stdout)["cli"]["healthy"] is True


@pytest.mark.slow
def test_module_target_with_python_m_and_logdir_then_report(project: Path, tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    result = run_cli(
        "check", "mypkg.models:build", "--steps", "4", "--logdir", str(logdir),
        cwd=project, module=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = run_cli("report", str(logdir), "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["steps"] == {"count": 4, "first": 0, "last": 3}
    assert [layer["name"] for layer in summary["layers"]] == ["0", "2"]


@pytest.mark.slow
def test_only_the_target_is_imported_and_log_dirs_are_never_executed(tmp_path: Path) -> None:
    """Security: ``check`` imports the TARGET (and what it imports), nothing else next to
    it; ``report`` parses event files and never imports, executes or unpickles anything
    found in the log directory."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "healthy_model.py").write_text(HEALTHY)
    trap = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"
    planted = {
        project / "evil.py": tmp_path / "evil-ran",
        project / "conftest.py": tmp_path / "conftest-ran",
        project / "__init__.py": tmp_path / "package-init-ran",
    }
    for path, marker in planted.items():
        path.write_text(trap.format(marker=str(marker)))
    logdir = tmp_path / "logs"
    result = run_cli(
        "check", "healthy_model.py:build", "--steps", "3", "--logdir", str(logdir), cwd=project
    )
    assert result.returncode == 0, result.stderr
    in_logs = {
        logdir / "evil.py": tmp_path / "log-py-ran",
        logdir / "__init__.py": tmp_path / "log-init-ran",
    }
    for path, marker in in_logs.items():
        path.write_text(trap.format(marker=str(marker)))
    report = run_cli("report", str(logdir), "--json", cwd=logdir)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["steps"]["count"] == 3
    ran = [marker.name for marker in [*planted.values(), *in_logs.values()] if marker.exists()]
    assert ran == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "words"),
    [
        (
            "broken_import.py:build",
            [
                "importing 'broken_import.py' failed with ModuleNotFoundError",
                "Traceback (most recent call last):",
                'broken_import.py", line 3, in <module>',
                "import a_module_that_does_not_exist_42",
            ],
        ),
        ("healthy_model.py:biuld", ["has no function 'biuld'", "Did you mean 'build'?"]),
    ],
)
def test_console_script_usage_errors_exit_2(project: Path, target: str, words: list[str]) -> None:
    result = run_cli("check", target, "--steps", "2", cwd=project)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("gradwatch check: error: ")
    for word in words:
        assert word in result.stderr, result.stderr
    assert "gradwatch/_cli" not in result.stderr  # no traceback of the CLI itself
    assert result.stdout == ""


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run main() in-process from the project dir; undo its sys.path/sys.modules changes."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield project
    for name in set(sys.modules) - before:
        if name.startswith(("_gradwatch_target_", "mypkg", "no_such_package")):
            del sys.modules[name]


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("healthy_model.py", ["TARGET must be", "no ':function' part"]),
        ("missing_file.py:build", ["'missing_file.py' does not exist"]),
        ("no_such_package.models:build", ["cannot import module", "pip install -e ."]),
        ("mypkg.nothing:build", ["cannot import module 'mypkg.nothing'"]),
        ("diverging_model.py:SETTING", ["is not a function but a int"]),
        ("diverging_model.py:not_a_tuple", ["must return (model, data, loss_fn)", "a str"]),
        ("diverging_model.py:two_items", ["returned a tuple of length 2"]),
        (
            "diverging_model.py:raises_in_forward",
            [
                "checking diverging_model.py:raises_in_forward failed with RuntimeError",
                "in forward",
                "return self.linear(x) @ torch.ones(3, 3)",
            ],
        ),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(
    in_project: Path, capsys: pytest.CaptureFixture[str], target: str, words: list[str]
) -> None:
    status, out, err = run_main(["check", target, "--steps", "2"], capsys)
    assert status == 2, (out, err)
    assert "gradwatch check: error: " in err
    for word in words:
        assert word in err, err
    assert "gradwatch/_cli" not in err  # no traceback of the CLI itself
    assert out == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--steps", "0"], ["--steps", "positive integer"]),
        (["--fail-on", "fatal"], ["--fail-on", "invalid choice"]),
        (["--ignore", "vanishng"], ["unknown alert kind 'vanishng'", "'vanishing'"]),
    ],
)
def test_bad_options_exit_2(
    in_project: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: list[str]
) -> None:
    status, _, err = run_main(["check", "healthy_model.py:build", *args], capsys)
    assert status == 2
    for word in words:
        assert word in err


def test_fail_on_info_and_error(in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--fail-on moves the line: the diverging model's nonfinite error fails even at
    'error'; the healthy model passes at 'info' only if it raised nothing at all."""
    status, out, _ = run_main(
        ["check", "diverging_model.py:build", "--steps", "6", "--fail-on", "error"], capsys
    )
    assert status == 1 and "fails on: error or worse" in out
    status, out, _ = run_main(
        ["check", "healthy_model.py:build", "--steps", "3", "--fail-on", "info", "--json"],
        capsys,
    )
    data = json.loads(out)
    assert status == (1 if data["alerts"] else 0) and data["cli"]["fail_on"] == "info"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("pkg.mod:build", ("pkg.mod", "build", False)),
        ("models.py:build", ("models.py", "build", True)),
        ("sub/dir/m.py:f_2", ("sub/dir/m.py", "f_2", True)),
        ("C:/x/m.py:f", ("C:/x/m.py", "f", True)),
    ],
)
def test_split_target(target: str, expected: tuple[str, str, bool]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("pkg.mod", "no ':function' part"),
        (":build", "no ':function' part"),
        ("pkg.mod:", "no ':function' part"),
        ("pkg.mod:not-a-name", "must be a Python name"),
        ("pkg mod:f", "neither a dotted module name nor a .py file"),
    ],
)
def test_split_target_refuses_malformed(target: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        split_target(target)


def _model() -> nn.Module:
    return nn.Linear(2, 1)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (lambda: ("m", [], nn.functional.mse_loss), "as the model (1st item)"),
        (lambda: (_model(), torch.ones(3), nn.functional.mse_loss), "as data (2nd item)"),
        (lambda: (_model(), [], "mse"), "as loss_fn (3rd item)"),
        (lambda: (_model(), [], nn.functional.mse_loss, "adam"), "as the optimizer (4th item)"),
        (lambda: (_model(),) * 5, "a tuple of length 5"),
        (lambda: None, "returned a NoneType"),
    ],
)
def test_validate_returned(value, words: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_returned(value(), "f.py:build")
    assert words in info.value.message and "f.py:build" in info.value.message


def test_validate_returned_accepts_three_or_four_items() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    three = validate_returned((model, [], nn.functional.mse_loss), "t")
    four = validate_returned([model, [], nn.functional.mse_loss, optimizer], "t")
    assert three.optimizer is None and four.optimizer is optimizer


def test_readme_ci_recipe_names_real_options() -> None:
    """The README's CI snippet must only use options the parser knows."""
    from gradwatch._cli import build_parser

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```yaml", 1)[1].split("```", 1)[0]
    lines = [line.strip() for line in textwrap.dedent(block).splitlines()]
    commands = [line[line.index("gradwatch ") :] for line in lines if "gradwatch check" in line]
    assert commands
    for command in commands:
        args = build_parser().parse_args(command.split()[1:])
        assert args.command == "check"


def test_try_fixes_prints_causes_then_the_trials_and_json_holds_them(
    in_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(
        ["check", "diverging_model.py:build", "--steps", "10", "--try-fixes"], capsys
    )
    assert status == 1, err
    # the cause first, what to change, the evidence; then the trials; then the alerts
    causes = out.index("Causes (")
    assert causes < out.index("   Change:") < out.index("   Evidence:")
    assert out.index("   Evidence:") < out.index("Fixes tried from the same starting weights")
    assert out.index("Fixes tried") < out.index("Alerts (the evidence")
    assert "1. learning_rate_too_high (from step " in out
    assert "in layer '0' (Linear)" in out  # layers read as layers
    assert "Best: " in out
    assert "gradwatch check: trying fix 1/" in err  # the progress, on stderr
    assert "trying fix" not in out
    status, out, _ = run_main(
        ["check", "diverging_model.py:build", "--steps", "10", "--try-fixes", "--json"], capsys
    )
    data = json.loads(out)
    trials = data["fix_trials"]
    assert status == 1 and trials and trials[0]["ok"] is True
    assert trials[0]["fix"] in ("lr_div_10", "lr_div_100", "clip_grad_norm", "linear_warmup")
    assert data["diagnoses"][0]["cause"] == "learning_rate_too_high"


def test_try_fixes_needs_enough_steps_and_healthy_prints_numbers(
    in_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_main(
        ["check", "healthy_model.py:build", "--steps", "5", "--try-fixes"], capsys
    )
    assert status == 2 and out == ""
    assert "--try-fixes needs --steps 10 or more" in err
    status, out, _ = run_main(["check", "healthy_model.py:build", "--steps", "3"], capsys)
    assert status == 0
    assert "Gradient norms at the last step: " in out and "Causes" not in out


HF_TARGET = """
import torch
import transformers


def build():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0, loss_type="ForCausalLM",
    )
    ids = torch.randint(0, 32, (4, 12))
    return transformers.GPT2LMHeadModel(config), [({"input_ids": ids}, ids)], None
"""


def test_a_hugging_face_target_may_return_loss_fn_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "hf_model.py").write_text(HF_TARGET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    status, out, err = run_main(["check", "hf_model.py:build", "--steps", "2", "--json"], capsys)
    assert status in (0, 1), err
    data = json.loads(out)
    assert data["steps"] == 2 and data["layers"][0]["name"] == "transformer.wte"
