"""Running the real ``gradwatch`` console script in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: The console script installed next to this interpreter (``pip install -e .``).
SCRIPT = Path(sys.executable).with_name("gradwatch")


def gradwatch_command() -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT)]
    found = shutil.which("gradwatch")
    if found is None:
        raise RuntimeError("the gradwatch console script is not installed (pip install -e .)")
    return [found]


def run_cli(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    module: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``gradwatch ARGS`` (or ``python -m gradwatch ARGS``); output is piped, not a TTY."""
    command = [sys.executable, "-m", "gradwatch"] if module else gradwatch_command()
    full_env = dict(os.environ, OMP_NUM_THREADS="1")
    full_env.pop("NO_COLOR", None)
    full_env.update(env or {})
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI's ``main()`` in this process (for the many usage-error cases, where a
    subprocess per case would only re-import torch); returns (status, stdout, stderr)."""
    from gradwatch._cli import main

    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        status = int(exit.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err
