"""How gradwatch spells a module's name: in a TensorBoard tag, in tables and alerts, and
inside a sentence; and how a statistic is spelled as a TensorBoard tag (the tag groups
and their order on the dashboard's first screen, :func:`tensorboard_tag`) and read back
in either spelling (:func:`canonical_tag`).

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


# ------------------------------------------------------------------ TensorBoard tags
#
# Every statistic has a *canonical* name, ``<stat>/<layer tag>`` (``grad_norm/fc1``,
# ``act_std/3``, ``total/loss``, and ``log10/grad_norm/fc1`` for the log10 views), which
# is what the code, ``gradwatch report`` and its ``--json`` use. The event files carry a
# *TensorBoard tag* built from it for the dashboard's sake (see :func:`tensorboard_tag`).
# Before 0.1 the TensorBoard tags were the canonical names themselves; the log reader
# reads both spellings (:func:`canonical_tag`).

#: Tag group (the part before the first ``/``) of each statistic. TensorBoard lists tag
#: groups by name, so the number in front decides the order on screen: the totals and
#: the gradient flow first, activation internals last but one, then the log10 views that
#: feed the Custom Scalars charts.
TAG_GROUPS: dict[str, str] = {
    "total": "1_total",
    "grad_norm": "2_grad_norm",
    "update_ratio": "3_update_ratio",
    "weight_norm": "4_weight_norm",
    # act_<stat> -> 5_act_<stat> (one group per activation statistic)
    "act": "5_act",
    "log10": "6_log10",
}
#: Per-layer statistics that also get a log10 view (``log10/<stat>/<layer>``): the two
#: whose values across layers span decades and must be compared on one axis.
LOG10_STATS: tuple[str, ...] = ("grad_norm", "update_ratio")
#: Between a layer's depth index and its name in a TensorBoard tag (``2_grad_norm/03-fc1``).
DEPTH_SEPARATOR = "-"

_GROUP_TO_STAT = {group: stat for stat, group in TAG_GROUPS.items() if stat != "act"}
_ACT_GROUP = TAG_GROUPS["act"] + "_"


def depth_width(count: int) -> int:
    """Digits of the zero-padded depth index for ``count`` layers (at least 2)."""
    return max(2, len(str(max(count - 1, 0))))


def tensorboard_tag(canonical: str, depth: int | None = None, count: int = 0) -> str:
    """The TensorBoard tag of a canonical statistic name.

    ``depth`` is the layer's position (input side first) among ``count`` layers: it
    goes in front of the layer's name, zero-padded, so that every view that sorts tags
    by name (TensorBoard, W&B, ``ls``) lists layers in depth order. Totals take no depth.
    A name that is not gradwatch's comes back unchanged.

    >>> tensorboard_tag("grad_norm/fc1", 3, 12)
    '2_grad_norm/03-fc1'
    >>> tensorboard_tag("total/loss")
    '1_total/loss'
    """
    stat, _, rest = canonical.partition("/")
    if stat == "total":
        return f"{TAG_GROUPS['total']}/{rest}"
    if depth is None:
        return canonical
    index = f"{depth:0{depth_width(count)}d}{DEPTH_SEPARATOR}"
    if stat == "log10":
        inner, _, layer = rest.partition("/")
        return f"{TAG_GROUPS['log10']}/{inner}/{index}{layer}"
    if stat.startswith("act_"):
        return f"{_ACT_GROUP}{stat[len('act_') :]}/{index}{rest}"
    if stat in TAG_GROUPS:
        return f"{TAG_GROUPS[stat]}/{index}{rest}"
    return canonical


def _strip_depth(text: str) -> str | None:
    digits, separator, layer = text.partition(DEPTH_SEPARATOR)
    return layer if separator and digits.isdigit() and layer else None


def canonical_tag(tag: str) -> str:
    """The canonical name of a TensorBoard tag that :func:`tensorboard_tag` wrote, or of
    an old-style one (already canonical); any other tag comes back unchanged.

    >>> canonical_tag("2_grad_norm/03-fc1")
    'grad_norm/fc1'
    >>> canonical_tag("grad_norm/fc1")
    'grad_norm/fc1'
    """
    group, _, rest = tag.partition("/")
    stat = _GROUP_TO_STAT.get(group)
    if stat is None and group.startswith(_ACT_GROUP):
        stat = "act_" + group[len(_ACT_GROUP) :]
    if stat is None or not rest:
        return tag
    if stat == "total":
        return f"total/{rest}"
    if stat == "log10":
        inner, _, tail = rest.partition("/")
        layer = _strip_depth(tail)
        return tag if layer is None else f"log10/{inner}/{layer}"
    layer = _strip_depth(rest)
    return tag if layer is None else f"{stat}/{layer}"
