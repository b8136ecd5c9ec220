"""The rules: which symptoms (alerts) point to which cause, one function per cause family.

Each rule looks at the alerts, the history and the model's facts and proposes a
:class:`Candidate`: the alerts that *trigger* it (a symptom only this cause explains this
way, at warning or error), the alerts it would also explain (its consequences), the
summary sentence and the remedies. :func:`gradwatch._diagnosis.diagnose.diagnose` then
orders the candidates (the cause whose first trigger came first is the root: a root comes
before its consequences) and gives every alert to one diagnosis only.

How an alert is read: its kind, its step, its layer, its value, and for ``not_learning``
which remedy its detector chose (frozen weights, collapsed steps, a rate too high), which
says more reliably than its wording what the detector saw.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from gradwatch._alerts import Alert
from gradwatch._detectors import not_learning
from gradwatch._detectors.update_size import HEALTHY_RATIO
from gradwatch._diagnosis import remedies as fix
from gradwatch._diagnosis.facts import ModelFacts, latest_lr, saw_warmup
from gradwatch._format import fmt
from gradwatch._history import History

#: Alerts before this step describe the model as it was built (its initialisation).
EARLY = 10
#: A learning rate below this (or 0) cannot train a model in any reasonable time.
TINY_LR = 1e-5
#: Causes by how specific they are, to order candidates whose first symptom is on the
#: same step: a located non-finite value beats a guess, dead units beat the
#: initialisation that drove the signal down, and so on.
PRIORITY = {
    "nonfinite_data": 100,
    "nonfinite_loss": 95,
    "numeric_overflow": 90,
    "dead_relus": 80,
    "recurrent_instability": 75,
    "poor_initialisation": 70,
    "saturating_activations": 65,
    "depth_without_skip_or_norm": 60,
    "missing_warmup": 55,
    "learning_rate_too_high": 50,
    "learning_rate_too_low": 45,
    "parameters_not_updated": 44,
    "attention_logit_growth": 40,
    "output_logit_divergence": 35,
}
#: Kinds that a cause starving the gradient (init, depth, dead units...) also explains.
_STARVED = ("vanishing", "exploding", "saturation", "dead_units", "poor_init", "not_learning")


@dataclasses.dataclass
class Candidate:
    """A cause proposed by one rule, before the alerts are shared out."""

    cause: str
    triggers: list[Alert]
    explains: list[Alert]
    summary: str
    remedies: list[str]
    layer: str | None = None

    @property
    def first_step(self) -> int:
        return min(alert.step for alert in self.triggers)


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What every rule reads."""

    alerts: tuple[Alert, ...]
    history: History
    facts: ModelFacts

    def of(self, *kinds: str, loud: bool = True) -> list[Alert]:
        """The alerts of ``kinds`` (all kinds when none), warning or error when ``loud``."""
        return [
            a
            for a in self.alerts
            if (not kinds or a.kind in kinds) and (not loud or a.severity != "info")
        ]


def loud(alert: Alert) -> bool:
    return alert.severity != "info"


def _origin(alert: Alert, evidence: Evidence) -> str | None:
    """Where a non-finite value came from: ``"input"``, ``"loss"``, ``"forward"``,
    ``"backward"`` (with ``locate_nonfinite=True``), else None."""
    for record in evidence.history:
        if record.step == alert.step and record.nonfinite_origin is not None:
            return record.nonfinite_origin.phase
    if "the data did" in alert.message:
        return "input"
    if "the loss (or code between the model and the loss)" in alert.message:
        return "loss"
    return None


def clause(alert: Alert) -> str:
    """The measured part of an alert's message, to quote inside a sentence: its first
    sentence, without the detector's conclusion, starting lower-case."""
    text = alert.message
    for end in (": gradients are", ". Gradients are", ". "):
        text = text.split(end)[0]
    text = text.rstrip(".")
    return text[:1].lower() + text[1:]


def grown_after_start(alert: Alert) -> bool:
    """A ``poor_init`` from the activations of a later sampled step (step 0 is always
    sampled): the weights were fine at the start and the updates grew them. (The loss
    test judges the first steps' loss, at step 2: that one is about the start.)"""
    return alert.kind == "poor_init" and alert.step > 0 and "loss starts" not in alert.message


def _remedy_is(alert: Alert, remedy: str) -> bool:
    return alert.kind == "not_learning" and alert.remedy == remedy


def _counted(alerts: Sequence[Alert]) -> str:
    kinds: list[str] = []
    for alert in alerts:
        if alert.kind not in kinds:
            kinds.append(alert.kind)
    return ", ".join(kinds)


# --------------------------------------------------------------------- non-finite
def nonfinite_rules(evidence: Evidence) -> list[Candidate]:
    """A non-finite value located in the input batch or the loss; an overflow under AMP."""
    facts = evidence.facts
    out = []
    for alert in evidence.of("nonfinite"):
        origin = _origin(alert, evidence)
        later = [a for a in evidence.of() if a.step >= alert.step and a is not alert]
        if origin == "input":
            out.append(
                Candidate(
                    "nonfinite_data",
                    [alert],
                    later,
                    f"The input batch of step {alert.step} already held NaN/inf before any "
                    "layer ran: the data, not the model, produced it.",
                    [
                        "check the batches before the forward pass (assert "
                        "torch.isfinite(inputs).all()) and fix the preprocessing that "
                        "produced NaN/inf (missing values, a division by a zero std).",
                        "drop or impute such samples in the Dataset; "
                        "gradwatch.watch(..., on_nonfinite='skip') skips such steps "
                        "meanwhile.",
                    ],
                )
            )
        elif origin == "loss":
            out.append(
                Candidate(
                    "nonfinite_loss",
                    [alert],
                    later,
                    f"At step {alert.step} the model's output was finite but the loss (or the "
                    "code between the model and the loss) made NaN/inf: a log of 0, a "
                    "division by 0 or a NaN target.",
                    [
                        "compute the loss from logits: F.cross_entropy(logits, y) or "
                        "nn.BCEWithLogitsLoss instead of log(softmax(x)) or BCELoss(sigmoid(x)).",
                        "clamp what goes into log/sqrt/division, e.g. "
                        "torch.log(p.clamp_min(1e-8)), and check the targets for NaN.",
                    ],
                )
            )
        elif facts.amp and origin in ("forward", None):
            out.append(
                Candidate(
                    "numeric_overflow",
                    [alert],
                    later,
                    f"Under mixed precision a value left the float16 range at step "
                    f"{alert.step} ({alert.message.split(': ', 1)[-1].split('.')[0]}).",
                    _overflow_remedies(),
                )
            )
    persistent = evidence.of("amp_skip")
    if persistent:
        out.append(
            Candidate(
                "numeric_overflow",
                persistent,
                [a for a in evidence.of() if a.step >= persistent[0].step],
                f"The GradScaler skipped every step from step {persistent[0].step} on: the "
                "gradients overflow float16 at every loss scale it tries.",
                _overflow_remedies(),
            )
        )
    return out


def _overflow_remedies() -> list[str]:
    return [
        "train in bfloat16 instead of float16: torch.autocast('cuda', dtype=torch.bfloat16) "
        "(the range of float32, no GradScaler needed).",
        "keep the loss and the softmax in float32 (compute them outside autocast, or "
        "logits.float()).",
    ]


# ------------------------------------------------------------------ learning rate
def learning_rate_rules(evidence: Evidence) -> list[Candidate]:
    """A rate too high (steps that undo learning, a loss that rose, a blow-up after the
    first update), too low (weights that do not move), or a warmup that was needed."""
    facts, history = evidence.facts, evidence.history
    optimizer = facts.optimizer
    adaptive = optimizer is not None and optimizer.adaptive
    warmup = saw_warmup(history)
    lr = latest_lr(history, facts)
    exploding = evidence.of("exploding")
    triggers: list[Alert] = []
    for alert in evidence.of("update_size"):
        # Under SGD a huge step can be a huge gradient times an ordinary rate: then the
        # gradient (init, depth, recurrence) is the cause, not the rate.
        if adaptive or not any(e.step <= alert.step for e in exploding):
            triggers.append(alert)
    for alert in exploding:
        if alert.step >= 1 and not facts.is_recurrent(alert.layer):
            triggers.append(alert)  # a gradient that blew up after updates, not at init
    # Activations that drift with depth only after the first steps: the updates made them.
    triggers += [a for a in evidence.of("poor_init") if grown_after_start(a)]
    if not _logits_diverge_unnormalised(evidence):
        triggers += evidence.of("loss_spike", "grad_spike")
    triggers += [
        a for a in evidence.of("not_learning") if _remedy_is(a, not_learning.REMEDY_TOO_HIGH)
    ]
    collapsed = [
        a for a in evidence.of("not_learning") if _remedy_is(a, not_learning.REMEDY_COLLAPSED)
    ]
    if collapsed and warmup:
        triggers += collapsed
    out = []
    if triggers:
        triggers.sort(key=lambda a: a.step)
        first = triggers[0]
        sizes = [a for a in triggers if a.kind == "update_size"]
        # The factor that brings the update ratio back to a healthy size (10x unknown).
        factor = sizes[0].value / HEALTHY_RATIO if sizes and sizes[0].value else 10.0
        rate = f"{optimizer.name} at lr={fmt(lr)}" if optimizer is not None and lr else "the rate"
        out.append(
            Candidate(
                "learning_rate_too_high",
                triggers,
                [a for a in evidence.of() if a.step >= first.step],
                f"The learning rate is too high ({rate}): {_proof_too_high(first)}.",
                fix.lower_lr(facts, lr, factor if math.isfinite(factor) else 10.0, warmup),
            )
        )
    if collapsed and not warmup:
        alert = collapsed[0]
        post = facts.post_ln
        remedies = [f"warm the learning rate up over the first few hundred steps: {fix.WARMUP}."]
        if post:
            remedies.append(
                f"use Pre-LN layers ({fix.names(post)} are Post-LN): "
                "nn.TransformerEncoderLayer(..., norm_first=True), which trains without warmup."
            )
        remedies.append("lower the peak learning rate 3x if the loss still stalls with a warmup.")
        out.append(
            Candidate(
                "missing_warmup",
                collapsed,
                # Post-LN layers pass little gradient to the input side at the start
                # (Xiong et al. 2020): the vanishing seen then is the same cause.
                [
                    a
                    for a in evidence.of()
                    if a.step >= alert.step or (post and a.kind == "vanishing")
                ],
                "Training started at full learning rate without a warmup"
                + (f" in a Post-LN transformer ({fix.names(post)})" if post else "")
                + f": {clause(alert)}.",
                remedies,
            )
        )
    frozen = [a for a in evidence.of("not_learning") if _remedy_is(a, not_learning.REMEDY_FROZEN)]
    generic = [a for a in evidence.of("not_learning") if _remedy_is(a, not_learning.REMEDY)]
    tiny = lr is not None and lr < TINY_LR
    if frozen or (generic and tiny and not evidence.of("vanishing", "dead_units", "saturation")):
        alert = (frozen or generic)[0]
        if tiny or lr is None:
            name = optimizer.name if optimizer is not None else "the optimizer"
            usual = "1e-3" if adaptive else "1e-2"
            out.append(
                Candidate(
                    "learning_rate_too_low",
                    [alert],
                    evidence.of("not_learning"),
                    f"The learning rate is {fmt(lr) if lr is not None else 'unknown'}"
                    f"{' (' + name + ')' if optimizer is not None else ''}: the weights barely "
                    f"move and the loss stays where it began ({clause(alert)}).",
                    [
                        f"raise the learning rate of {name} to a usual value, e.g. "
                        f"torch.optim.{name}(model.parameters(), lr={usual}), and check that "
                        "the scheduler does not decay it to 0.",
                    ],
                )
            )
        else:
            out.append(
                Candidate(
                    "parameters_not_updated",
                    [alert],
                    evidence.of("not_learning"),
                    f"The weights do not move although the learning rate is {fmt(lr)}: "
                    f"{alert.message.split('. ')[-2] if '. ' in alert.message else alert.message}.",
                    [
                        "pass the model's parameters to the optimizer "
                        "(torch.optim.X(model.parameters(), ...)) after any layer was "
                        "replaced, and check that they require grad.",
                    ],
                )
            )
    return out


def _proof_too_high(alert: Alert) -> str:
    if alert.kind == "update_size":
        return (
            f"each step changes the weights by {fmt(alert.value)} of their own size at step "
            f"{alert.step} (healthy: 1e-4 to 1e-2)"
        )
    if alert.kind == "exploding":
        return (
            f"the gradients blew up at step {alert.step}, after the first updates ({clause(alert)})"
        )
    if alert.kind == "poor_init":
        grown = clause(alert).replace("at the start of training ", "", 1)
        return f"by step {alert.step} the updates had grown the weights: {grown}"
    if alert.kind in ("loss_spike", "grad_spike"):
        return clause(alert).split(" (robust")[0]
    return clause(alert)


# --------------------------------------------------------------- initialisation
def init_rules(evidence: Evidence) -> list[Candidate]:
    """Badly scaled initial weights; activations that saturate; ReLUs that died; depth
    with neither normalisation nor skip connections."""
    facts = evidence.facts
    out = []
    poor = [a for a in evidence.of("poor_init") if not grown_after_start(a)]
    early_blowup = [
        a
        for a in evidence.of("exploding", "nonfinite", "output_logits", "attention_logits")
        if a.step == 0 and not facts.is_recurrent(a.layer)
    ]
    starved = [
        a
        for a in evidence.alerts
        if a.kind in _STARVED
        or a.kind in ("nonfinite", "output_logits", "attention_logits", "update_size")
    ]
    deep = facts.depth >= 8
    bare = not facts.norms and not facts.residual
    dead = [a for a in evidence.of("dead_units")]
    zero = [
        a
        for a in evidence.of("vanishing")
        if "exactly zero gradient" in a.message and facts.rectified
    ]
    if dead or zero:
        alert = (dead or zero)[0]
        feeding = facts.feeding(alert.layer) if dead and alert.layer else None
        remedies = []
        if feeding:
            remedies.append(
                f"start the bias of {facts.label(feeding)}, which feeds the dead ReLU "
                f"{alert.layer!r}, at zero or slightly positive: "
                f"nn.init.constant_({fix.code_path(feeding)}.bias, 0.01)."
            )
        remedies += fix.init_remedies(facts, [feeding] if feeding else None)
        remedies.append(
            "use nn.LeakyReLU(0.01) or nn.GELU() instead of nn.ReLU: they never stop passing "
            "gradient."
        )
        remedies += fix.structure_remedies(facts, deep=False)
        what = (
            f"{alert.value or 0:.0%} of the units of {facts.label(alert.layer)} output zero for "
            "every sample"
            if dead
            else alert.message.split(" while ")[0]
        )
        out.append(
            Candidate(
                "dead_relus",
                dead + zero,
                starved,
                f"ReLU units are dead: {what}, so no gradient passes through them to the "
                "layers below.",
                remedies,
                layer=feeding or alert.layer,
            )
        )
    if poor or early_blowup:
        alert = (poor or early_blowup)[0]
        out.append(
            Candidate(
                "poor_initialisation",
                poor + early_blowup,
                starved,
                f"The initial weights are badly scaled for this network: "
                f"{_proof_init(alert, facts)}.",
                _init_fix(facts, deep),
            )
        )
    saturated = evidence.of("saturation")
    if facts.bounded and (saturated or evidence.of("saturation", loud=False)):
        vanishing = [a for a in evidence.of("vanishing") if not facts.is_recurrent(a.layer)]
        triggers = saturated + vanishing
        if triggers:
            alert = (saturated or vanishing)[0]
            kinds = sorted(facts.activations & {"Sigmoid", "Tanh", "Hardtanh", "Softsign"})
            out.append(
                Candidate(
                    "saturating_activations",
                    triggers,
                    starved,
                    f"The {'/'.join(kinds)} units saturate, where their derivative is near "
                    f"0: {alert.message.split(';')[0].split(' over the last')[0]}.",
                    fix.init_remedies(facts)
                    + _bounded_tip(facts)
                    + fix.structure_remedies(facts, deep),
                    layer=alert.layer,
                )
            )
    depth_symptoms = [
        a for a in evidence.of("vanishing", "exploding") if not facts.is_recurrent(a.layer)
    ]
    if depth_symptoms and deep and bare:
        alert = depth_symptoms[0]
        out.append(
            Candidate(
                "depth_without_skip_or_norm",
                depth_symptoms,
                starved,
                f"A stack of {facts.depth} weight layers with neither normalisation "
                f"nor skip connections multiplies the gradient at every layer: "
                f"{clause(alert)}.",
                fix.structure_remedies(facts, deep=True) + fix.init_remedies(facts),
                layer=alert.layer,
            )
        )
    # A gradient wrong from the start (exploding before the first update, vanishing at
    # the first judgement) is what the initialisation set.
    initial = [
        a for a in depth_symptoms if a.step == 0 or (a.kind == "vanishing" and a.step < EARLY)
    ]
    if initial and not (deep and bare) and not poor and not facts.norms:
        alert = initial[0]
        out.append(
            Candidate(
                "poor_initialisation",
                initial,
                starved,
                f"The initial weights are badly scaled for this network: "
                f"{_proof_init(alert, facts)}.",
                fix.init_remedies(facts) + fix.structure_remedies(facts, deep),
                layer=alert.layer,
            )
        )
    return out


def _proof_init(alert: Alert, facts: ModelFacts) -> str:
    if alert.kind == "poor_init":
        return clause(alert).replace("at the start of training ", "", 1)
    if alert.kind == "exploding":
        return f"at step {alert.step}, before any update, {clause(alert)}"
    if alert.kind == "output_logits":
        return f"before any update, {clause(alert).split(';')[0]}"
    if alert.kind == "nonfinite":
        found = alert.message.split(": ", 1)[-1].split(".")[0]
        return f"the first step's gradients were already non-finite ({found})"
    return clause(alert)


def _init_fix(facts: ModelFacts, deep: bool) -> list[str]:
    """Re-initialise to fit the activations; a normalised model (a transformer) instead
    wants small weights and a small output head."""
    if not facts.norms:
        return fix.init_remedies(facts) + fix.structure_remedies(facts, deep) + _bounded_tip(facts)
    out = [
        "initialise the weights with a small standard deviation: for m in model.modules(): "
        "if isinstance(m, nn.Linear): nn.init.normal_(m.weight, std=0.02) (for a Hugging "
        "Face model keep config.initializer_range at its default 0.02)."
    ]
    if facts.head and facts.head_tied:
        out.append(
            f"the output head {facts.label(facts.head)} shares the embedding's weight: "
            "initialise that embedding with std 0.02 (nn.init.normal_(embedding.weight, "
            "std=0.02))."
        )
    elif facts.head:
        out.append(
            f"start the output head {facts.label(facts.head)} small or at zero, so the first "
            f"predictions are near uniform: nn.init.zeros_({fix.code_path(facts.head)}.weight)."
        )
    return out


def _bounded_tip(facts: ModelFacts) -> list[str]:
    kinds = sorted(facts.activations & {"Sigmoid", "Tanh"})
    if not kinds:
        return []
    return [
        f"use nn.ReLU or nn.GELU instead of {'/'.join('nn.' + k for k in kinds)} in the hidden "
        "layers (their derivative is at most 0.25 for sigmoid and is 0 at the bounds)."
    ]


# -------------------------------------------------------------- recurrent, logits
def structure_rules(evidence: Evidence) -> list[Candidate]:
    """Recurrent layers that explode or vanish through time; attention and output logits
    that grow."""
    facts, history = evidence.facts, evidence.history
    out = []
    recurrent = [a for a in evidence.of("vanishing", "exploding") if facts.is_recurrent(a.layer)]
    if recurrent:
        alert = recurrent[0]
        name = alert.layer or ""
        kind = facts.type_of(name)
        path = fix.code_path(name)
        remedies = []
        if alert.kind == "exploding":
            remedies.append(f"clip the gradient norm, as recurrent nets need: {fix.CLIP}.")
        remedies.append(
            f"initialise the recurrent weights orthogonally so their singular values are 1: "
            f"nn.init.orthogonal_({path}.weight_hh_l0)."
        )
        if kind in ("RNN", "RNNCell"):
            remedies.append(
                f"replace the vanilla nn.{kind} {name!r} with nn.LSTM or nn.GRU, whose gates "
                "carry gradient through many time steps."
            )
        if alert.kind == "vanishing":
            remedies.append("shorten the sequences (truncated backpropagation through time).")
        out.append(
            Candidate(
                "recurrent_instability",
                recurrent,
                [a for a in evidence.of() if a.step >= alert.step],
                f"The gradient {'explodes' if alert.kind == 'exploding' else 'vanishes'} "
                f"through time in {facts.label(name)}: "
                f"{clause(alert).split(': ', 1)[-1]}.",
                remedies,
                layer=name,
            )
        )
    attention = evidence.of("attention_logits")
    if attention:
        alert = attention[0]
        warmup = saw_warmup(history)
        lr = latest_lr(history, facts)
        remedies = [
            f"normalise queries and keys (QK-norm: nn.LayerNorm(head_dim) on q and k) in "
            f"{facts.label(alert.layer)} before their product.",
            *fix.lower_lr(facts, lr, 3.0, warmup),
        ]
        out.append(
            Candidate(
                "attention_logit_growth",
                attention,
                [a for a in evidence.of() if a.step >= alert.step],
                f"The attention logits grow until the softmax is one-hot: {clause(alert)}.",
                remedies,
                layer=alert.layer,
            )
        )
    logits = [a for a in evidence.of("output_logits") if a.step > 0]
    if logits:
        if _logits_diverge_unnormalised(evidence):
            # Loss and gradient spikes are its first symptoms when no norm caps the head.
            logits = sorted(
                logits
                + [a for a in evidence.of("loss_spike", "grad_spike") if a.step <= logits[0].step],
                key=lambda a: a.step,
            )
        alert = logits[0]
        measured = next(a for a in logits if a.kind == "output_logits")
        before = [a for a in logits if a.step < measured.step]
        remedies = []
        if not facts.norm_before_head and facts.head:
            remedies.append(
                f"add a final normalisation before the output head {facts.label(facts.head)} "
                "(e.g. nn.LayerNorm(d_model) on the last hidden state)."
            )
        remedies.append(
            "add a z-loss to the training loss: loss + 1e-4 * torch.logsumexp(logits, "
            "dim=-1).pow(2).mean(), which keeps log Z near 0."
        )
        remedies += fix.lower_lr(facts, latest_lr(history, facts), 3.0, saw_warmup(history))[:1]
        out.append(
            Candidate(
                "output_logit_divergence",
                logits,
                [a for a in evidence.of() if a.step >= alert.step],
                f"The output logits diverge ({clause(measured).split(' (healthy')[0]})"
                + (
                    f", after {len(before)} loss/gradient spike(s) from step {alert.step} on"
                    if before
                    else ""
                )
                + ".",
                remedies,
                layer=facts.head,
            )
        )
    return out


def _logits_diverge_unnormalised(evidence: Evidence) -> bool:
    """The output logits drift (after the first steps) in a normalised model whose head
    reads an unnormalised hidden state: the classic output-logit divergence."""
    facts = evidence.facts
    drifting = any(a.step > 0 for a in evidence.of("output_logits"))
    return drifting and bool(facts.norms) and not facts.norm_before_head


#: Every rule, in no particular order (the candidates are ranked afterwards).
RULES: tuple[Callable[[Evidence], list[Candidate]], ...] = (
    nonfinite_rules,
    learning_rate_rules,
    init_rules,
    structure_rules,
)
