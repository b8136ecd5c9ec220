"""The loss a model scores when it predicts nothing: recognised from the autograd graph.

A classifier that has learned nothing predicts the uniform distribution, and its
cross-entropy is then ln C for C classes, whatever the targets (one-hot, soft, label
smoothed, class weighted: every weighted mean of ln C is ln C). A loss stuck there is the
signature of a model that is not learning; a loss far above it at the start of training
is a badly initialised output layer. :func:`chance_loss` finds C without being told, by
walking the loss tensor's autograd graph on the host: node class names, Python
attributes and the *shape* of one saved tensor, never its values, so it costs no device
work or synchronisation.

Recognised, when every branch of the graph above the loss ends in one of them:

* cross-entropy: ``NllLossBackward0`` / ``NllLoss2DBackward0`` fed (through reshapes
  only) by ``LogSoftmaxBackward0``: ``F.cross_entropy``, ``F.nll_loss(F.log_softmax())``,
  Hugging Face's causal-LM and sequence-classification losses (a cross-entropy, or a
  summed one divided by the number of tokens). Label smoothing and soft targets add a
  branch ``-sum(log_softmax)``, recognised too. Chance: ln C;
* binary cross-entropy, on logits or on sigmoid probabilities. Chance: ln 2.

Between the loss and those, only arithmetic and reshapes (``+ - * /``, sums, means,
masking, views, dtype casts) may appear, and a sum of per-element losses must be divided
somewhere (a mean) for the value to be per element. Anything else, MSE, a custom loss,
cross-entropy plus a weight penalty, gives None.

Before ``backward()`` frees the graph's saved tensors the class count comes from them;
afterwards (``record_loss`` is called after ``backward()``) from the sizes of the model's
logits, which the caller passes as ``class_dims``; without them it returns None. Under saved-tensor
hooks that offload activations (``torch.autograd.graph.save_on_cpu``), reading the one
saved tensor's shape unpacks it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch import Tensor

logger = logging.getLogger(__name__)

#: How far above the loss the walk goes, and how many nodes it visits at most.
MAX_DEPTH = 16
MAX_NODES = 64

#: Nodes that only reshape, copy or cast: the class dimension survives them unchanged.
_RESHAPES = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "AliasBackward0",
        "CloneBackward0",
        "ToCopyBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "PermuteBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "SliceBackward0",
        "ExpandBackward0",
    }
)
#: Arithmetic that keeps "a per-element loss" a per-element loss: combining terms,
#: scaling, masking, reducing.
_ARITHMETIC = frozenset(
    {
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "MulBackward0",
        "MulBackward1",
        "NegBackward0",
        "SumBackward0",
        "SumBackward1",
        "MaskedFillBackward0",
        "WhereBackward0",
    }
)
#: Arithmetic that makes a sum a mean.
_NORMALISING = frozenset(
    {
        "DivBackward0",
        "DivBackward1",
        "DivBackward2",
        "DivBackward3",
        "MeanBackward0",
        "MeanBackward1",
    }
)
_NLL = frozenset({"NllLossBackward0", "NllLoss2DBackward0", "NllLoss2dBackward0"})
_LOG_SOFTMAX = "LogSoftmaxBackward0"
_BCE_LOGITS = "BinaryCrossEntropyWithLogitsBackward0"
_BCE = "BinaryCrossEntropyBackward0"
_SIGMOID = "SigmoidBackward0"
#: ``reduction`` as autograd saves it (torch's ``Reduction`` enum).
_REDUCTION_MEAN = 1


class _Unrecognised(Exception):
    """A node the walk does not know: the loss is not a recognised kind."""


def chance_loss(loss: Tensor, class_dims: tuple[int, ...] = ()) -> float | None:
    """ln C for a cross-entropy over C classes, ln 2 for a binary one, else None.

    After ``backward()`` the saved tensor that gives C is freed, but the graph's node
    types still say what the loss is: ``class_dims``, the sizes of the model's logits'
    last two dimensions (from the logit probe), then give C (the last for a (..., C)
    input, the one before it for a 2-d loss over (N, C, H, W)). Never raises: anything
    unexpected (no graph, a new autograd node layout) gives None.
    """
    try:
        root = getattr(loss, "grad_fn", None)
        if root is None:
            return None
        classes: set[int] = set()
        _walk(root, classes, class_dims)
        if len(classes) != 1:
            return None  # nothing recognised, or terms over different class counts
        count = classes.pop()
        return math.log(count) if count >= 2 else None
    except _Unrecognised:
        return None
    except Exception:  # an autograd layout this code does not know: no answer, no error
        logger.debug("gradwatch: could not read the loss's kind", exc_info=True)
        return None


def _walk(root: Any, classes: set[int], class_dims: tuple[int, ...] = ()) -> None:
    """Visit the graph above the loss; record class counts; raise on anything foreign.

    Each pending entry is ``(node, depth, normalised)``: ``normalised`` says a mean or a
    division lies between the node and the loss.
    """
    pending: list[tuple[Any, int, bool]] = [(root, 0, False)]
    seen: set[int] = set()
    while pending:
        node, depth, normalised = pending.pop()
        if node is None or id(node) in seen:
            continue  # a constant operand, or a node already visited
        seen.add(id(node))
        if depth > MAX_DEPTH or len(seen) > MAX_NODES:
            raise _Unrecognised
        name = type(node).__name__
        if name in _NLL:
            classes.add(_nll_classes(node, normalised, name, class_dims))
        elif name == _LOG_SOFTMAX:
            # Reached without an NLL: the soft-target / label-smoothing branch,
            # -sum(target * log_softmax), which must be a mean to be per element.
            if not normalised:
                raise _Unrecognised
            classes.add(_saved_size(node, "_saved_result", int(node._saved_dim), class_dims))
        elif name in (_BCE_LOGITS, _BCE):
            if not (normalised or int(node._saved_reduction) == _REDUCTION_MEAN):
                raise _Unrecognised
            if name == _BCE and _through_reshapes(node.next_functions[0][0]) != _SIGMOID:
                raise _Unrecognised  # probabilities from somewhere else: chance unknown
            classes.add(2)
        elif name in _ARITHMETIC or name in _NORMALISING or name in _RESHAPES:
            below = normalised or name in _NORMALISING
            pending.extend((child, depth + 1, below) for child, _ in node.next_functions)
        else:
            raise _Unrecognised


def _nll_classes(node: Any, normalised: bool, name: str, class_dims: tuple[int, ...]) -> int:
    """The class count of an NLL node fed by a log-softmax."""
    if not (normalised or int(node._saved_reduction) == _REDUCTION_MEAN):
        raise _Unrecognised  # a sum over elements: its chance level grows with the batch
    if _through_reshapes(node.next_functions[0][0]) != _LOG_SOFTMAX:
        raise _Unrecognised  # log-probabilities from elsewhere may not be normalised
    try:
        # The input is (C,) or (N, C, d1, ...): the class dimension is 1 from rank 2 on.
        shape = node._saved_self.shape
        return int(shape[1] if len(shape) >= 2 else shape[0])
    except RuntimeError:  # freed by backward(): the logits' shape tells instead
        return _hinted(class_dims, spatial=name != "NllLossBackward0")


def _saved_size(node: Any, attribute: str, dim: int, class_dims: tuple[int, ...]) -> int:
    try:
        return int(getattr(node, attribute).shape[dim])
    except RuntimeError:  # freed by backward()
        return _hinted(class_dims, spatial=False)


def _hinted(class_dims: tuple[int, ...], *, spatial: bool) -> int:
    """The class count from the logits' last two sizes; unknown without them."""
    if not class_dims:
        raise _Unrecognised
    # A 2-d loss's input is (N, C, H, W): W is last, C is not among the last two.
    if spatial:
        raise _Unrecognised
    return class_dims[-1]


def _through_reshapes(node: Any) -> str | None:
    """The class name of the first node below ``node`` that is not a reshape."""
    for _ in range(MAX_DEPTH):
        if node is None:
            return None
        name = type(node).__name__
        if name not in _RESHAPES:
            return name
        node = node.next_functions[0][0]
    return None
