"""Terminal output: rich tables and colour on a terminal, plain aligned text otherwise.

Colour is used only when all hold: ``rich`` is installed (the ``cli`` extra), the stream
is a terminal, ``NO_COLOR`` is unset (https://no-color.org) and ``TERM`` is not
``dumb``. Piped output is always plain text with the same content, so CI logs and
``grep`` see stable lines. Without rich the CLI prints the plain form everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import IO, Any

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def wants_color(stream: IO[str], environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` should get colour (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "NO_COLOR" in env or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and rich_available()


class Output:
    """Writes headings, tables and alerts to one stream, in colour or plain."""

    def __init__(self, stream: IO[str], *, color: bool, force_terminal: bool = False) -> None:
        self.stream = stream
        self.color = color
        self._console: Any = None
        if color:
            from rich.console import Console

            self._console = Console(
                file=stream,
                highlight=False,
                soft_wrap=True,
                force_terminal=True if force_terminal else None,
            )

    @classmethod
    def for_stream(cls, stream: IO[str]) -> Output:
        return cls(stream, color=wants_color(stream))

    def line(self, text: str = "", style: str | None = None) -> None:
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=style or ""))
        else:
            self.stream.write(text + "\n")

    def heading(self, text: str) -> None:
        if self._console is not None:
            self._console.rule(f"[bold]{_escape(text)}", align="left")
        else:
            self.stream.write(f"\n{text}\n{'-' * len(text)}\n")

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        right: Sequence[bool] | None = None,
        styles: Sequence[str | None] | None = None,
    ) -> None:
        """A table; ``right`` marks right-aligned (numeric) columns, ``styles`` per row."""
        align = list(right) if right is not None else [False] * len(columns)
        if self._console is not None:
            from rich.table import Table

            table = Table(show_edge=False, pad_edge=False, header_style="bold")
            for name, is_right in zip(columns, align):
                table.add_column(name, justify="right" if is_right else "left")
            for i, row in enumerate(rows):
                table.add_row(*row, style=(styles[i] if styles else None) or "")
            self._console.print(table)
            return
        widths = [
            max([len(name)] + [len(row[c]) for row in rows]) for c, name in enumerate(columns)
        ]

        def render(cells: Sequence[str]) -> str:
            parts = [
                cell.rjust(width) if is_right else cell.ljust(width)
                for cell, width, is_right in zip(cells, widths, align)
            ]
            return "  ".join(parts).rstrip()

        self.stream.write(render(columns) + "\n")
        self.stream.write("  ".join("-" * w for w in widths) + "\n")
        for row in rows:
            self.stream.write(render(row) + "\n")

    def alert(self, severity: str | None, text: str, remedy: str | None = None) -> None:
        """One alert: ``[severity] text`` and, indented, what to try."""
        label = f"[{severity or 'alert'}]"
        if self._console is not None:
            from rich.text import Text

            line = Text()
            line.append(label, style=SEVERITY_STYLE.get(severity or "", "bold"))
            line.append(" " + text)
            self._console.print(line)
            if remedy:
                self._console.print(Text("    Try: " + remedy, style="dim"))
            return
        self.stream.write(f"{label} {text}\n")
        if remedy:
            self.stream.write(f"    Try: {remedy}\n")

    def verdict(self, ok: bool, text: str) -> None:
        self.line(text, style="bold green" if ok else "bold red")


def _escape(text: str) -> str:
    from rich.markup import escape

    return str(escape(text))
