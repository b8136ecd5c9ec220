"""One walk over the watched model, made once at attach time: :class:`ModelMap`.

The walk unwraps the model (DDP's ``.module``, ``torch.compile``'s ``._orig_mod``),
visits every module in ``named_modules()`` order and records, per module, its qualified
name without wrapper prefixes, its class name, the parameters counted to it (a parameter
shared by several modules counts to the first that owns it, so it is counted once in
every norm), whether it is compiled, and its structural roles (linear-like,
normalisation, activation, attention, recurrent, embedding, plain container).
:class:`~gradwatch._measure.layers.LayerIndex`, the activation probe and the NaN
locator all read this one map instead of walking the model each. How a module's name
is written (its tag, ``(root module)``) is :mod:`gradwatch._names`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

from torch import nn

# ------------------------------------------------------------------------ roles
#: A weighted sum of its inputs, whose weights set the signal's gain: ``Linear``,
#: ``Bilinear``, convolutions, and Hugging Face's ``Conv1D`` (a transposed Linear).
LINEAR_LIKE = "linear_like"
#: A normalisation layer (batch, layer, group, instance, RMS, local response).
NORM = "norm"
#: One of torch's activation modules (``ReLU``, ``GELU``, ``Tanh``, ...).
ACTIVATION = "activation"
#: An attention block: ``nn.MultiheadAttention``, or a class named ``*Attention*``
#: (how Hugging Face and most model code name theirs).
ATTENTION = "attention"
#: A recurrent layer or cell (``RNN``, ``LSTM``, ``GRU`` and their cells).
RECURRENT = "recurrent"
#: A lookup table: ``Embedding``, ``EmbeddingBag``.
EMBEDDING = "embedding"
#: ``Sequential``, ``ModuleList``, ``ModuleDict`` themselves (not subclasses): a forward
#: that only chains children, with no code of its own.
CONTAINER = "container"

#: torch's linear-like classes (Hugging Face's ``Conv1D`` is recognised by name, so that
#: transformers need not be imported).
TORCH_LINEAR_LIKE: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
)
TORCH_NORM: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
TORCH_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.RReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softsign,
    nn.Softplus,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
    nn.GLU,
)
_RECURRENT: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)
_EMBEDDING: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def roles_of(module: nn.Module) -> frozenset[str]:
    """The structural roles of one module (often none: a custom block has no role)."""
    cls = type(module)
    roles: set[str] = set()
    hf_conv1d = cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
    if hf_conv1d or isinstance(module, TORCH_LINEAR_LIKE):
        roles.add(LINEAR_LIKE)
    if isinstance(module, TORCH_NORM):
        roles.add(NORM)
    if isinstance(module, TORCH_ACTIVATIONS):
        roles.add(ACTIVATION)
    if isinstance(module, nn.MultiheadAttention) or "Attention" in cls.__name__:
        roles.add(ATTENTION)
    if isinstance(module, _RECURRENT):
        roles.add(RECURRENT)
    if isinstance(module, _EMBEDDING):
        roles.add(EMBEDDING)
    if cls in _CONTAINERS:
        roles.add(CONTAINER)
    return frozenset(roles)


# ------------------------------------------------------------------ unwrapping
def strip_wrapper_prefix(name: str) -> str:
    """Drop prefixes added by wrappers (DDP's ``module.``, torch.compile's ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
        name = name.replace("." + prefix, ".")
    if name in ("module", "_orig_mod"):
        return ""
    return name


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    return _unwrap(model)[0]


def _unwrap(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """The user's model, and the wrappers taken off on the way to it (outermost first)."""
    wrappers: list[nn.Module] = []
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and type(model).__name__ == "DistributedDataParallel":
            inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            wrappers.append(model)
            model = inner
    return model, wrappers


def is_compiled(module: nn.Module) -> bool:
    """``torch.compile(module)``'s wrapper (it has ``_orig_mod``), or a module compiled in
    place with ``module.compile()``."""
    wrapper = isinstance(getattr(module, "_orig_mod", None), nn.Module)
    return wrapper or getattr(module, "_compiled_call_impl", None) is not None


# ----------------------------------------------------------------------- the map
@dataclasses.dataclass(frozen=True, eq=False)
class ModuleInfo:
    """What the walk learned about one module. The module itself is held weakly.

    Attributes:
        name: qualified name as in ``named_modules()``, wrapper prefixes dropped
            (``""`` for the root module).
        type_name: the module's class name.
        roles: its structural roles (:data:`LINEAR_LIKE`, :data:`NORM`, ...).
        params: ``(local name, parameter)`` of the parameters counted to it: those it
            owns directly that no module earlier in the walk owns too.
        owns_any_param: whether it owns any parameter directly, counted to it or not
            (a tied output head owns the embedding's weight, counted to the embedding).
        has_parameterised_children: whether a submodule (at any depth) has parameters.
    """

    name: str
    type_name: str
    roles: frozenset[str]
    params: tuple[tuple[str, nn.Parameter], ...]
    owns_any_param: bool
    has_parameterised_children: bool
    ref: weakref.ref[nn.Module] = dataclasses.field(repr=False)

    @property
    def module(self) -> nn.Module | None:
        """The module, or None once it has been garbage collected."""
        return self.ref()

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclasses.dataclass(frozen=True, eq=False)
class ModelMap:
    """Every module of the unwrapped model in ``named_modules()`` order, walked once.

    Build it with :meth:`of`. A module compiled in place and its compiled wrapper's
    inner module share one name (``torch.compile(block)`` assigned to ``model.block``
    appears as the wrapper ``block`` and the module ``block``).

    Attributes:
        modules: one :class:`ModuleInfo` per module, the root first.
        compiled: names of the compiled modules, the model itself (``""``) included when
            it was given as ``torch.compile(model)``.
    """

    modules: tuple[ModuleInfo, ...]
    compiled: tuple[str, ...]

    @classmethod
    def of(cls, model: nn.Module | ModelMap) -> ModelMap:
        """Walk ``model`` (or return it, when it is already a map)."""
        if isinstance(model, ModelMap):
            return model
        root, wrappers = _unwrap(model)
        compiled: list[str] = [""] if any(is_compiled(w) for w in wrappers) else []
        below: dict[int, bool] = {}
        counted: set[int] = set()  # parameters already counted to an earlier module
        modules: list[ModuleInfo] = []
        for qualified, module in root.named_modules():
            name = strip_wrapper_prefix(qualified)
            direct = list(module.named_parameters(recurse=False))
            params = tuple((local, p) for local, p in direct if id(p) not in counted)
            counted.update(id(p) for _, p in params)
            if is_compiled(module) and name not in compiled:
                compiled.append(name)
            modules.append(
                ModuleInfo(
                    name=name,
                    type_name=type(module).__name__,
                    roles=roles_of(module),
                    params=params,
                    owns_any_param=bool(direct),
                    has_parameterised_children=any(
                        _subtree_has_params(child, below) for child in module.children()
                    ),
                    ref=weakref.ref(module),
                )
            )
        return cls(tuple(modules), tuple(compiled))

    # ------------------------------------------------------------------- queries
    @property
    def root(self) -> ModuleInfo:
        """The unwrapped model itself."""
        return self.modules[0]

    @functools.cached_property
    def layers(self) -> tuple[ModuleInfo, ...]:
        """The modules that parameters are counted to: gradwatch's *layers*."""
        return tuple(info for info in self.modules if info.params)

    def with_role(self, role: str) -> tuple[ModuleInfo, ...]:
        """The modules that have ``role``, in walk order."""
        return tuple(info for info in self.modules if role in info.roles)

    def find(self, name: str) -> ModuleInfo | None:
        """The first module named ``name`` (wrapper prefixes dropped), or None."""
        return next((info for info in self.modules if info.name == name), None)

    def output_head(self) -> ModuleInfo | None:
        """The last linear-like module in walk order: usually the output head
        (``lm_head``, ``classifier``, ``fc``).

        A guess from registration order, which need not be execution order; a residual
        connection (``x + f(x)``) is plain code, not a module, and no walk can see it.
        """
        return next((info for info in reversed(self.modules) if LINEAR_LIKE in info.roles), None)


def _subtree_has_params(module: nn.Module, memo: dict[int, bool]) -> bool:
    """Whether ``module`` or a submodule has a parameter (memoised: each module once)."""
    key = id(module)
    known = memo.get(key)
    if known is None:
        memo[key] = False  # a module reachable from itself is not counted twice
        known = memo[key] = next(module.parameters(recurse=False), None) is not None or any(
            _subtree_has_params(child, memo) for child in module.children()
        )
    return known
