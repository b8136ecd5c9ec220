"""Faults of the environment at attach (issue 20 item 7): gradwatch refuses clearly at
``watch()`` instead of crashing the training later, or with an error that names nothing.

* a model on the meta device (no data): ``optimizer.step()`` used to raise
  ``NotImplementedError`` from gradwatch's hook; now ``watch()`` refuses with the fix;
* a disk already full at attach: a raw ``OSError [Errno 28]`` used to name neither the
  logdir nor gradwatch; now the error names both and what to do. Tested on a real full
  filesystem (a tiny tmpfs in a private mount namespace) where the system allows one,
  and with a real file-size limit (``RLIMIT_FSIZE``) everywhere on POSIX.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwatch

from .helpers import make_mlp, regression_batches, train_steps

REPO = Path(__file__).resolve().parents[1]


def _meta_mlp() -> nn.Module:
    with torch.device("meta"):
        return make_mlp()


def test_a_meta_device_model_is_refused_at_attach_with_the_fix() -> None:
    model = _meta_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"model \(Sequential\) has 8 parameter\(s\) on the meta device \(e\.g\. "
        r"'0\.weight'\).*model\.to_empty\(device=\.\.\.\)",
    ):
        gradwatch.watch(model, optimizer)
    # Nothing was attached: the optimizer steps as it would without gradwatch.
    model(torch.randn(2, 8, device="meta")).sum().backward()
    optimizer.step()


def test_a_partly_materialised_model_is_refused_and_the_fix_works() -> None:
    model = make_mlp()
    with torch.device("meta"):
        model[-1] = nn.Linear(16, 1)  # a head still to be loaded
    with pytest.raises(ValueError, match=r"2 parameter\(s\) on the meta device \(e\.g\. '6\."):
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model.to_empty(device="cpu")  # the fix the message gives
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradwatch.watch(model, optimizer) as gw:
        train_steps(model, optimizer, regression_batches(3), gw)
    assert len(gw.history) == 3


def test_check_refuses_a_meta_model_too() -> None:
    with pytest.raises(ValueError, match=r"on the meta device"):
        gradwatch.check(
            _meta_mlp(),
            [(torch.randn(4, 8, device="meta"), torch.randn(4, 1, device="meta"))],
            loss_fn=nn.functional.mse_loss,
            steps=2,
        )


# -------------------------------------------------------------- disk full at attach

_ATTACH = textwrap.dedent(
    """
    import os, sys, tempfile, torch, gradwatch
    from torch import nn
    tempfile.gettempdir()  # torch may want a temporary directory: found before any limit
    # SETUP
    logdir = sys.argv[1]
    model = nn.Linear(4, 2)
    try:
        gradwatch.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), logdir=logdir)
    except OSError as error:
        print("ERRNO", error.errno)
        print("MESSAGE", error)
        print("LEFT", sorted(os.listdir(logdir)))
        # The model was left as found: it trains without gradwatch's hooks.
        model(torch.randn(3, 4)).sum().backward()
        print("HOOKS", len(model._forward_hooks), len(model._forward_pre_hooks))
    else:
        print("ATTACHED")
    """
)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _assert_clear_disk_error(result: subprocess.CompletedProcess[str], logdir: str, errno_: int):
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert "ATTACHED" not in result.stdout
    assert int(lines["ERRNO"]) == errno_
    message = lines["MESSAGE"]
    assert f"gradwatch cannot write its event file in logdir {logdir!r}: the disk is full" in (
        message
    )
    assert "pass a logdir on another disk, or logdir=None" in message
    assert lines["LEFT"] == "[]"  # no empty event file left behind
    assert lines["HOOKS"] == "0 0"


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(sys.platform != "linux", reason="a private mount namespace is Linux's")
def test_a_full_disk_at_attach_names_the_logdir(tmp_path) -> None:
    """A real full filesystem: a 16 KiB tmpfs filled up, in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "attach.py"
    script.write_text(_ATTACH)
    shell = (
        'mount -t tmpfs -o size=16k tmpfs "$1" || exit 77; mkdir "$1/run"; '
        'dd if=/dev/zero of="$1/fill" bs=4k 2>/dev/null; exec "$2" "$3" "$1/run"'
    )
    result = _run(
        ["unshare", "-rm", "sh", "-c", shell, "sh", str(mount), sys.executable, str(script)]
    )
    if result.returncode in (1, 77) and "ERRNO" not in result.stdout:
        pytest.skip(f"this system allows no private tmpfs: {result.stderr.strip()[:200]}")
    _assert_clear_disk_error(result, str(mount / "run"), 28)


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_a_file_size_limit_at_attach_names_the_logdir(tmp_path) -> None:
    """The process may write no byte (``RLIMIT_FSIZE`` 0): writes fail with EFBIG."""
    script = tmp_path / "attach.py"
    limit = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
    )
    script.write_text(_ATTACH.replace("# SETUP\n", limit))
    logdir = tmp_path / "run"
    logdir.mkdir()
    _assert_clear_disk_error(_run([sys.executable, str(script), str(logdir)]), str(logdir), 27)
