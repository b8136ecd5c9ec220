"""What a diagnosis may know of the model's structure: :class:`ModelFacts`, built once
at attach time from the watcher's :class:`~gradwatch._measure.model.ModelMap` and the
optimizer's :class:`~gradwatch._measure.optimizer.OptimizerFacts`, and the learning-rate
schedule as the history saw it (:func:`saw_warmup`).

Structure is read from module classes, so some of it is a guess: a residual connection
is plain code (``x + f(x)``), invisible to any walk, and is inferred from class names
(``*Block``, ``Res*``, ``*Bottleneck``, transformer layers).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from gradwatch._history import History
from gradwatch._measure.model import (
    ACTIVATION,
    ATTENTION,
    EMBEDDING,
    LINEAR_LIKE,
    NORM,
    RECURRENT,
    ModelMap,
)
from gradwatch._measure.optimizer import OptimizerFacts
from gradwatch._names import quoted_name

#: Activations bounded on both sides: they saturate, and pass almost no gradient there.
BOUNDED = frozenset({"Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Softsign", "LogSigmoid"})
#: Rectifiers whose units can die (zero output and zero gradient for every input).
RECTIFIERS = frozenset({"ReLU", "ReLU6"})
#: Class names of blocks that add their input back (residual structure), by pattern.
_RESIDUAL = re.compile(r"Res|Residual|Block|Bottleneck|Transformer|EncoderLayer|DecoderLayer")
#: Hugging Face's Post-LN encoder layers (BERT family): normalisation after the residual.
_POST_LN_TYPES = frozenset(
    {"BertLayer", "RobertaLayer", "XLMRobertaLayer", "ElectraLayer", "CamembertLayer"}
)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """The model and optimizer as the diagnosis sees them.

    Attributes:
        types: ``(name, class name)`` of every module, in walk order.
        weight_layers: the linear-like modules (Linear, Conv, ...), in walk order.
        activation_after: ``(weight layer, class name of the activation module that
            follows it in walk order, or "")`` for each weight layer.
        activations: class names of the activation modules.
        norms: class names of the normalisation modules.
        residual: some module looks like a residual block (see the module docstring).
        recurrent: names of the recurrent layers.
        attention: the model has attention blocks.
        embedding: the model has embedding tables.
        post_ln: names of Post-LN transformer layers (``norm_first=False``, BERT-style).
        norm_before_head: the module just before the output head is a normalisation.
        head_tied: the output head's weight is shared with an earlier module (an
            embedding tied to the output layer).
        optimizer: the optimizer's facts, None without one.
        amp: mixed precision (a GradScaler, or half-precision parameters).
        depth: how many modules hold weights that multiply the signal (every layer with
            parameters but normalisation and embedding layers): the depth of the stack.
    """

    types: tuple[tuple[str, str], ...] = ()
    weight_layers: tuple[str, ...] = ()
    activation_after: tuple[tuple[str, str], ...] = ()
    activations: frozenset[str] = frozenset()
    norms: frozenset[str] = frozenset()
    residual: bool = False
    recurrent: tuple[str, ...] = ()
    attention: bool = False
    embedding: bool = False
    post_ln: tuple[str, ...] = ()
    norm_before_head: bool = False
    head_tied: bool = False
    optimizer: OptimizerFacts | None = None
    amp: bool = False
    depth: int = 0

    @classmethod
    def of(
        cls, model_map: ModelMap, optimizer: OptimizerFacts | None = None, *, amp: bool = False
    ) -> ModelFacts:
        """Read the facts off ``model_map`` (one pass over its modules)."""
        modules = model_map.modules
        weight_layers: list[str] = []
        after: dict[str, str] = {}
        pending: str | None = None  # the last weight layer with no activation after it yet
        post_ln: list[str] = []
        residual = False
        for info in modules:
            if info.has(LINEAR_LIKE):
                weight_layers.append(info.name)
                after[info.name] = ""
                pending = info.name
            elif info.has(ACTIVATION) and pending is not None:
                after[pending] = info.type_name
                pending = None
            if _RESIDUAL.search(info.type_name) and not info.roles - {"container"}:
                residual = True
            if info.type_name in _POST_LN_TYPES:
                post_ln.append(info.name)
            elif info.type_name in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
                module = info.module
                if module is not None and not getattr(module, "norm_first", False):
                    post_ln.append(info.name)
        head = model_map.output_head()
        before_head = None
        if head is not None:
            index = next(i for i, info in enumerate(modules) if info is head)
            before_head = next(
                (m for m in reversed(modules[:index]) if m.roles - {"container"}), None
            )
        return cls(
            types=tuple((info.name, info.type_name) for info in modules),
            weight_layers=tuple(weight_layers),
            activation_after=tuple((name, after[name]) for name in weight_layers),
            activations=frozenset(m.type_name for m in model_map.with_role(ACTIVATION)),
            norms=frozenset(m.type_name for m in model_map.with_role(NORM)),
            residual=residual or bool(post_ln),
            recurrent=tuple(m.name for m in model_map.with_role(RECURRENT)),
            attention=bool(model_map.with_role(ATTENTION)),
            embedding=bool(model_map.with_role(EMBEDDING)),
            post_ln=tuple(post_ln),
            norm_before_head=before_head is not None and before_head.has(NORM),
            head_tied=head is not None and head.owns_any_param and not head.params,
            optimizer=optimizer,
            amp=amp,
            depth=sum(
                1 for info in model_map.layers if not (info.has(NORM) or info.has(EMBEDDING))
            ),
        )

    # ------------------------------------------------------------------- queries
    @property
    def bounded(self) -> bool:
        """Hidden activations include sigmoid/tanh-like ones."""
        return bool(self.activations & BOUNDED)

    @property
    def rectified(self) -> bool:
        """Activations include ReLU/ReLU6 (units that can die)."""
        return bool(self.activations & RECTIFIERS)

    @property
    def head(self) -> str | None:
        """The output head: the last weight layer in walk order (a guess)."""
        return self.weight_layers[-1] if self.weight_layers else None

    def type_of(self, name: str | None) -> str:
        """The class name of module ``name`` ("" when unknown)."""
        return next((kind for module, kind in self.types if module == name), "")

    def label(self, name: str | None) -> str:
        """``layer '0' (Linear)``: a layer as a sentence names it."""
        if name is None:
            return "the whole model"
        kind = self.type_of(name)
        return f"layer {quoted_name(name)}" + (f" ({kind})" if kind else "")

    def feeding(self, activation: str) -> str | None:
        """The weight layer just before activation module ``activation`` in walk order."""
        last = None
        for name, _ in self.types:
            if name == activation:
                return last
            if name in self.weight_layers:
                last = name
        return None

    def is_recurrent(self, name: str | None) -> bool:
        """``name`` is a recurrent layer or inside one."""
        return name is not None and any(
            name == r or name.startswith(r + ".") for r in self.recurrent if r
        )


def saw_warmup(history: History) -> bool | None:
    """Did the learning rate rise over the first steps? None when unknown (no rates
    recorded, or the history no longer holds step 0)."""
    if not len(history) or history[0].step != 0:
        return None
    rates = history.series("lr")
    rates = rates[np.isfinite(rates)]
    if rates.size < 2:
        return None
    return bool(rates[0] < 0.9 * float(rates.max()))


def latest_lr(history: History, facts: ModelFacts) -> float | None:
    """The learning rate at the latest step, else the one seen at attach time."""
    for record in reversed(history):
        if record.lr is not None:
            return record.lr
    return facts.optimizer.lr if facts.optimizer is not None else None


def code_path(name: str, root: str = "model") -> str:
    """Python that reaches module ``name`` from the model: ``model.layers[0].fc``."""
    path = root
    for part in name.split(".") if name else ():
        path += f"[{part}]" if part.isdigit() else f".{part}"
    return path
