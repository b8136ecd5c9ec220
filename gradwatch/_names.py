"""How gradwatch spells a module's name: in a TensorBoard tag, in tables and alerts, and
inside a sentence.

The one owner of the root module's spellings (its qualified name is the empty string),
which users and tests read: the tag ``_root_``, ``(root module)`` in tables and alert
locations, ``the root module`` in sentences. Imports nothing from gradwatch, so that any
layer may use it: the measuring stage (tags, localisation), the detectors, the alerts,
the report and the CLI.
"""

from __future__ import annotations

#: TensorBoard tag of the root module.
ROOT_TAG = "_root_"
#: The root module's name in tables, alert locations and quoted layer names.
ROOT_DISPLAY_NAME = "(root module)"
#: The root module named inside a sentence ("produced by the root module").
ROOT_IN_SENTENCE = "the root module"


def tag_of(name: str) -> str:
    """The TensorBoard tag suffix of a module: its qualified name, or ``_root_``."""
    return name or ROOT_TAG


def display_name(name: str) -> str:
    """A module's name as tables and alerts show it: its name, or ``(root module)``."""
    return name or ROOT_DISPLAY_NAME


def quoted_name(name: str) -> str:
    """``'block.0'`` quoted, or ``(root module)`` (already set apart by its brackets)."""
    return repr(name) if name else ROOT_DISPLAY_NAME


def sentence_name(name: str) -> str:
    """``'block.0'`` quoted, or ``the root module``, to name a module inside a sentence."""
    return repr(name) if name else ROOT_IN_SENTENCE
