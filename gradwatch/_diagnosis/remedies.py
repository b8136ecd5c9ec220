"""What to change, per cause, written for this model: the layers by name and the code.

Each function returns the ranked remedies of one cause. None suggests what the model
already has: normalisation only to a model without any, residual connections only to one
without residual-looking blocks, He/Xavier initialisation matched to the activation that
follows each layer, a warmup only when none was seen, gradient clipping never as the cure
for an adaptive optimizer's step size (Adam divides the gradient's scale out).
"""

from __future__ import annotations

from collections.abc import Sequence

from gradwatch._diagnosis.facts import BOUNDED, RECTIFIERS, ModelFacts, code_path
from gradwatch._format import fmt

#: What a warmup looks like in code.
WARMUP = (
    "torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500), "
    "stepped after every optimizer.step()"
)
CLIP = (
    "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before optimizer.step() "
    "(or gradwatch.watch(..., clip=1.0))"
)


def names(layers: Sequence[str], most: int = 4) -> str:
    """``'0', '2', '4' and 7 more``."""
    shown = ", ".join(repr(name) for name in layers[:most])
    return shown + (f" and {len(layers) - most} more" if len(layers) > most else "")


def _loop(layers: Sequence[str], body: str) -> str:
    """``for layer in (model[0], model[2]): body`` (or one call for one layer)."""
    paths = [code_path(name) for name in layers]
    if len(paths) == 1:
        return body.replace("layer.", paths[0] + ".")
    shown = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
    return f"for layer in ({shown}): {body}"


def init_remedies(facts: ModelFacts, layers: Sequence[str] | None = None) -> list[str]:
    """Re-initialise the weight layers with the init that fits the activation after each."""
    chosen = set(layers) if layers else None
    groups: dict[str, list[str]] = {}
    for name, activation in facts.activation_after:
        if chosen is not None and name not in chosen:
            continue
        if name == facts.head and chosen is None and len(facts.weight_layers) > 1:
            continue  # the output layer is judged on its own (no activation follows it)
        groups.setdefault(activation, []).append(name)
    out = []
    for activation, group in groups.items():
        if activation in RECTIFIERS or activation in ("LeakyReLU", "PReLU", "RReLU"):
            body = "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')"
            why = f"He init for the {activation} layers"
        elif activation in BOUNDED:
            gain = "tanh" if activation in ("Tanh", "Hardtanh", "Softsign") else "sigmoid"
            body = f"nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain('{gain}'))"
            why = f"Xavier/Glorot init for the {activation} layers"
        elif activation:
            body = "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')"
            why = f"He-like init for the {activation} layers"
        else:
            body = "nn.init.orthogonal_(layer.weight)"
            why = "orthogonal init (every singular value 1) for the layers with no activation"
        if any(facts.type_of(name) == "Linear" for name in group):
            body += "; nn.init.zeros_(layer.bias)"
        out.append(
            f"re-initialise {names(group)} with {why}, keeping each layer's gain near 1: "
            f"{_loop(group, body)}."
        )
    return out


def structure_remedies(facts: ModelFacts, deep: bool) -> list[str]:
    """Normalisation and skip connections, only where the model has none."""
    out = []
    if not facts.norms:
        norm = (
            "nn.BatchNorm2d" if any("Conv" in kind for _, kind in facts.types) else ("nn.LayerNorm")
        )
        where = "before each activation" if facts.activations else "after each weight layer"
        out.append(
            f"add normalisation ({norm}(width)) {where} of the {facts.depth}-layer stack, so "
            "every layer sees inputs of scale 1."
        )
    if deep and not facts.residual:
        out.append(
            "add residual connections (x = x + block(x)) around groups of layers, so "
            "gradient reaches the input side through the identity path."
        )
    return out


def lower_lr(facts: ModelFacts, lr: float | None, factor: float, warmup: bool | None) -> list[str]:
    """Lower the rate ``factor`` times; warm it up if it was not; clip unless adaptive."""
    optimizer = facts.optimizer
    name = optimizer.name if optimizer is not None else "the optimizer"
    factor = min(max(factor, 3.0), 1000.0)
    if lr:
        first = (
            f"lower the learning rate of {name} about {fmt(factor, 2)}x, from {fmt(lr)} to "
            f"about {fmt(lr / factor, 2)} (e.g. torch.optim.{name}(model.parameters(), "
            f"lr={fmt(lr / factor, 2)}))."
            if optimizer is not None
            else f"lower the learning rate about {fmt(factor, 2)}x, from {fmt(lr)}."
        )
    else:
        first = f"lower the learning rate of {name} about {fmt(factor, 2)}x."
    out = [first]
    if not warmup:
        out.append(f"warm the learning rate up over the first few hundred steps: {WARMUP}.")
    if optimizer is None or not optimizer.adaptive:
        out.append(f"clip the gradient norm: {CLIP}.")
    return out
