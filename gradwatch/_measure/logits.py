"""Output-logit divergence, sampled: how large the model's output logits grow.

Logits that drift upwards, all together, are one of the ways a large language model's
training diverges (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities"): the softmax normaliser log Z = logsumexp(logits) runs away while
the loss still looks fine, until it does not. The z-loss of PaLM penalises exactly
(log Z)². This probe measures, on a sampled step, from a forward hook on the root model:

* the mean over tokens of log Z;
* the largest log Z of any token;
* the largest |logit|.

The logits are the model's output: a tensor, the ``.logits`` of a Hugging Face
``ModelOutput`` (or a mapping's ``"logits"``), or the first tensor of a tuple, when its last
dimension (the classes) has at least 2 entries. Everything is computed in float32 on the
logits' device, in slices of at most :data:`CHUNK_ELEMENTS` values so that a
(batch, tokens, vocabulary) tensor in bf16 never gets a full float32 copy, and nothing is
read back to the host. Above :data:`MEASURED_VALUES` values, every k-th token is
measured (at least :data:`MIN_TOKENS` tokens): the mean is estimated without bias, and
logits that drift upward drift for every token, so the maxima over thousands of tokens
see it as well as the maxima over all (a (32, 2048, 50257) output is 3.3e9 values, which
would cost a sampled step more than the model's own output layer). Several forwards in
one step (gradient accumulation) give the mean over all their tokens and the maxima over
all of them.

Only training forwards count (gradients enabled, root module in training mode) unless
``include_eval=True``, as for the activation statistics.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradwatch._measure.hooks import SafeHook
from gradwatch._measure.model import unwrap_model

#: The statistics :meth:`LogitProbe.collect` returns, in order.
LOGIT_STATS: tuple[str, ...] = ("lse_mean", "lse_max", "abs_max")
#: Largest slice of the logits converted to float32 at once (64 MiB).
CHUNK_ELEMENTS = 2**24
#: Logits with more values than this are measured on every k-th token (1 MiB in float32)...
MEASURED_VALUES = 2**18
#: ...but on at least this many tokens (a vocabulary of 50k: 64 tokens, 13 MiB).
MIN_TOKENS = 64


def find_logits(output: Any) -> Tensor | None:
    """The output logits of a model's forward, or None when there are none to measure."""
    candidate: Any = None
    if isinstance(output, Tensor):
        candidate = output
    elif isinstance(getattr(output, "logits", None), Tensor):
        candidate = output.logits
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        candidate = output["logits"]
    elif isinstance(output, (tuple, list)):
        candidate = next((item for item in output if isinstance(item, Tensor)), None)
    if candidate is None or not candidate.is_floating_point():
        return None
    if candidate.dim() < 1 or candidate.shape[-1] < 2 or candidate.numel() == 0:
        return None
    return candidate


def logit_sums(logits: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Sum and max over tokens of logsumexp, the max |logit|, and the token count
    (of the tokens measured: every k-th above :data:`MEASURED_VALUES` values).

    The three tensors are float32 scalars on the logits' device; the count is a shape.
    """
    classes = logits.shape[-1]
    flat = logits.detach().reshape(-1, classes)
    keep = max(MIN_TOKENS, MEASURED_VALUES // classes)
    if flat.shape[0] > keep:
        flat = flat[:: -(-flat.shape[0] // keep)]  # every k-th token, at most `keep`
    tokens = int(flat.shape[0])
    rows = max(1, CHUNK_ELEMENTS // classes)
    sums: tuple[Tensor, Tensor, Tensor] | None = None
    # One slice (the usual case) is the tensor itself: no slicing op.
    for chunk in (flat,) if tokens <= rows else flat.split(rows):
        values = chunk if chunk.dtype == torch.float32 else chunk.float()
        lse, high, low = _row_stats(values)
        piece = (lse.sum(), lse.amax(), torch.maximum(high.amax(), low.neg_()))
        if sums is None:
            sums = piece
        else:
            sums = (
                sums[0] + piece[0],
                torch.maximum(sums[1], piece[1]),
                torch.maximum(sums[2], piece[2]),
            )
    assert sums is not None
    return sums[0], sums[1], sums[2], tokens


def _row_stats(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(logsumexp per row, max per row, min of all)`` of a (rows, classes) float32
    slice, equal to ``torch.logsumexp`` and ``torch.aminmax``.

    Through ``log_softmax``, whose kernel is vectorised, instead of ``torch.logsumexp``
    (four full passes with temporaries) and ``aminmax`` (a copy of a strided slice). The
    largest value of a row of log-softmax is exactly ``-log(sum exp(x - max))``, which
    logsumexp adds to the row's max. (Not written over ``values`` with ``out=``: torch
    does not document that an input may alias the output.)
    """
    high = values.amax(dim=-1)
    low = values.amin()
    shifted = torch.log_softmax(values, dim=-1)
    lse = high - shifted.amax(dim=-1)
    # logsumexp's own rule for a row whose max is infinite: +inf, or -inf when every
    # logit is -inf (log-softmax is NaN there).
    lse = torch.where(high.isinf(), high, lse)
    return lse, high, low


class LogitProbe:
    """A forward hook on the root model for one sampled step, and what it measured.

    ``arm()`` installs the hook, ``collect()`` removes it and returns a float32 vector
    in :data:`LOGIT_STATS` order on the logits' device (NaN when no logits were seen),
    without a host synchronisation. The probe holds the model weakly.
    """

    def __init__(self, model: nn.Module, *, include_eval: bool = False) -> None:
        self.include_eval = include_eval
        #: Sizes of the logits' last two dimensions when last seen (host ints from the
        #: shape), for reading a cross-entropy's class count after backward() freed it.
        self.class_dims: tuple[int, ...] = ()
        self._model = weakref.ref(unwrap_model(model))
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._reset()

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self) -> None:
        """Install the forward hook (idempotent)."""
        if self._handle is not None:
            return
        self._reset()
        model = self._model()
        if model is not None:
            # SafeHook: held weakly, inert while traced (compiled code is not sampled),
            # errors logged once and the step's partial sums dropped.
            hook = SafeHook(self, "_observe", on_error="_reset")
            self._handle = model.register_forward_hook(hook)

    def disarm(self) -> None:
        """Remove the hook (idempotent); what it measured is kept until :meth:`collect`."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.remove()

    def collect(self) -> Tensor:
        """Remove the hook and return ``(lse_mean, lse_max, abs_max)`` on the device."""
        self.disarm()
        sums, tokens = self._sums, self._tokens
        self._reset()
        if sums is None or tokens == 0:
            return torch.full((len(LOGIT_STATS),), float("nan"), dtype=torch.float32)
        total, lse_max, abs_max = sums
        return torch.stack([total / tokens, lse_max, abs_max])

    def _reset(self) -> None:
        self._sums: tuple[Tensor, Tensor, Tensor] | None = None
        self._tokens = 0

    def _observe(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self.include_eval and (not module.training or not torch.is_grad_enabled()):
            return  # validation / inference forwards are not the training signal
        logits = find_logits(output)
        if logits is None:
            return
        self.class_dims = tuple(int(size) for size in logits.shape[-2:])
        with torch.no_grad():
            total, lse_max, abs_max, tokens = logit_sums(logits)
            if self._sums is not None and self._sums[0].device == total.device:
                seen_total, seen_lse, seen_abs = self._sums
                total = seen_total + total
                lse_max = torch.maximum(seen_lse, lse_max)
                abs_max = torch.maximum(seen_abs, abs_max)
                tokens += self._tokens
        self._sums = (total, lse_max, abs_max)
        self._tokens = tokens
