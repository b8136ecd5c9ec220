"""MkDocs hooks (mkdocs.yml, ``hooks:``): what the site takes from the code at build time.

- The options table of docs/reference/options.md is generated from
  :class:`gradwatch.WatchConfig`: the option names, their defaults and their meanings have
  one owner, the dataclass (its fields and its docstring). The page holds the marker
  ``<!-- gradwatch:options -->`` and the table is put there, so the page cannot drift from
  the code. An option without a description in the docstring fails the build.

tests/test_docs.py builds the site and tests these functions.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

MARKER = "<!-- gradwatch:options -->"

#: ``    name: text`` at the docstring's entry indent, its continuation lines indented deeper.
_ENTRY = re.compile(r"^(?P<indent> +)(?P<name>[a-z_]+): (?P<text>.*)$")


def option_descriptions(docstring: str) -> dict[str, str]:
    """Each documented option's description, from the ``name: text`` entries of the
    docstring (the ``Attributes:`` section and the detector thresholds after it), with
    continuation lines joined."""
    descriptions: dict[str, str] = {}
    name: str | None = None
    indent = 0
    for line in docstring.splitlines():
        match = _ENTRY.match(line)
        if match and (name is None or len(match["indent"]) <= indent):
            name, indent = match["name"], len(match["indent"])
            descriptions[name] = match["text"].strip()
        elif name is not None and line.strip() and len(line) - len(line.lstrip()) > indent:
            descriptions[name] += " " + line.strip()
        elif not line.strip():
            continue
        else:
            name = None
    return descriptions


def _markdown(text: str) -> str:
    """Docstring markup as Markdown: ``x`` -> `x`, :class:`x` -> `x`, table-safe pipes."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


def _default(field: dataclasses.Field[Any]) -> str:
    """The default as Python would accept it: ``1e4`` rather than ``10000.0``."""
    value = field.default
    if isinstance(value, float) and (value >= 1e4 or 0 < value < 1e-2):
        mantissa, exponent = f"{value:e}".split("e")
        return f"`{float(mantissa):g}e{int(exponent)}`"
    return f"`{value!r}`"


def options_table(config: Any = None) -> str:
    """The Markdown table of every ``watch()`` option (the fields of ``config``, by default
    :class:`gradwatch.WatchConfig`): name, default, meaning."""
    if config is None:
        from gradwatch import WatchConfig as config

    descriptions = option_descriptions(config.__doc__ or "")
    rows = ["| option | default | meaning |", "|---|---|---|"]
    missing = []
    for field in dataclasses.fields(config):
        if field.name not in descriptions:
            missing.append(field.name)
            continue
        rows.append(
            f"| `{field.name}` | {_default(field)} | {_markdown(descriptions[field.name])} |"
        )
    if missing:
        raise ValueError(
            f"WatchConfig's docstring does not describe {missing}: add a 'name: meaning' "
            "entry for each (the options page is generated from it)."
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs event: put the options table where the marker is."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, options_table())
    return markdown
