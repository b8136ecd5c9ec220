"""Attention-logit growth and entropy collapse, sampled per attention module.

At a high learning rate the queries and keys of some attention layers can grow
together, so the pre-softmax logits q·k/√d grow quadratically; once they reach tens to
thousands the softmax is one-hot (its entropy collapses), the gradient through it
vanishes and the loss diverges (Dehghani et al. 2023; Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities"). This probe measures, on a
sampled step and per attention module, the largest attention logit and the mean
attention entropy.

How the logits are seen. Attention has no module of its own to hook: it is a call to
``F.scaled_dot_product_attention`` (SDPA), or a matmul followed by a softmax, made inside
a module's forward. So while an attention module (``nn.MultiheadAttention``, or a class
named ``*Attention*``: Hugging Face's, timm's, most model code's; the roles of
:mod:`gradwatch._measure.model`) runs its forward on a sampled step, a
:class:`torch.overrides.TorchFunctionMode` watches the torch calls it makes:

* ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale,
  enable_gqa)``: the scores are recomputed from q and k (scale as given, default
  1/√E; masks and causality applied as SDPA does; fewer key heads than query heads
  repeated as ``enable_gqa`` does) when there are at most :data:`EXACT_ELEMENTS` of
  them; above that, a full score matrix would cost as much as the attention itself, and
  the cheap bound max‖q‖·max‖k‖·scale per head (plus the largest additive mask value)
  is reported instead, marked as a bound, without entropy;
* a softmax over the last dimension of a 4-D (batch, heads, queries, keys) tensor, or
  of a 3-D one inside an attention module (``nn.MultiheadAttention`` with
  ``need_weights=True``: ``bmm`` then softmax): the eager attention paths. The input is
  the logits (mask included), the output the probabilities, both already computed.

``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer`` and its kin) needs
no mode: its forward pre-hook recomputes the scores from the call's query and key and
the module's own projection weights (:func:`mha_call_stats`), as SDPA would see them,
with its masks. A mode costs a Python dispatch on every torch op of the forward (the
module's own attention ran about a sixth slower under it on a sampled step). Only an
``nn.MultiheadAttention`` with ``add_bias_kv``/``add_zero_attn``, a subclass with its own
``forward``, or one inside another watched attention module goes through the mode:
``F.multi_head_attention_forward`` itself dispatches on torch-function modes, so the mode
would see that one call and none of the SDPA or softmax calls inside it; it is run
instead as a copy whose only difference is that its own dispatch check answers "no",
with the mode active inside.

The calls are attributed to the innermost attention module running (a stack kept by
forward pre-hooks and always-called forward hooks); a model with no module recognised
as attention is watched as a whole, under the root module's name ``""``.

Per call: the largest logit over the positions that take part (masked positions are
-inf, or a large negative number: anything at or below :data:`MASKED_BELOW` counts as
masked; NaN and +inf count, they are the divergence); the mean over query rows of the
entropy of the attention distribution; and the mean over rows of ln(number of keys taking
part), the entropy of a uniform distribution over them, which normalises the entropy
(causal rows see fewer keys). Per module: the maximum over its calls, the mean over all
its rows. All in float32, under ``torch.no_grad()``, on the device, in slices of at most
:data:`SLICE_ELEMENTS` values, without host syncs and without drawing random numbers (a
dropout in the model draws exactly the numbers it would draw unwatched).

Only training forwards count (gradients enabled, module in training mode) unless
``include_eval=True``. A forward traced by ``torch.compile`` is not watched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from gradwatch._measure.devices import gather_device, on_device
from gradwatch._measure.hooks import SafeHook, being_traced
from gradwatch._measure.model import ATTENTION, ModelMap

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10+; only read by type checkers

logger = logging.getLogger(__name__)

#: Largest score matrix (batch·heads·queries·keys) recomputed exactly from q and k
#: (64 MiB in float32).
EXACT_ELEMENTS = 2**24
#: The statistics of a score matrix are computed in slices of at most this many values
#: (16 MiB in float32): the temporaries on a sampled step stay small next to the
#: attention's own.
SLICE_ELEMENTS = 2**22
#: Logits at or below this count as masked. Masks add -inf, ``finfo.min`` of the dtype,
#: or, in older code, -10000; a logit this negative that is not masked only occurs in a
#: model whose largest logits are already huge.
MASKED_BELOW = -5e3

_SDPA = F.scaled_dot_product_attention
_SDPA_ARGS = (
    "query",
    "key",
    "value",
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
)
_MHA_ARGS = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)
#: Compared by identity: a function handed to a mode need not be hashable.
_SOFTMAXES = (F.softmax, torch.softmax, torch.special.softmax, Tensor.softmax)
_MHA_FORWARD = F.multi_head_attention_forward


@dataclasses.dataclass
class AttentionSample:
    """One sampled step's attention statistics, per attention module, on the device.

    Attributes:
        modules: names of the attention modules that made attention calls, in execution
            order (the root module is ``""``).
        max_logit: float32 (modules,): the largest pre-softmax logit of each module's
            calls; NaN when every position was masked. An upper bound where ``bounded``.
        entropy: float32 (modules,): mean attention entropy over all query rows of the
            module's calls, in nats; NaN when no probabilities were at hand (bound path).
        max_entropy: float32 (modules,): mean over the same rows of ln(keys taking
            part), the entropy of uniform attention: ``entropy / max_entropy`` is 1 for
            uniform attention and 0 for one-hot. ln(key length) where ``entropy`` is NaN.
        bounded: per module, whether some call's logit is the bound max‖q‖·max‖k‖·scale
            rather than the exact maximum.
    """

    modules: tuple[str, ...]
    max_logit: Tensor
    entropy: Tensor
    max_entropy: Tensor
    bounded: tuple[bool, ...]

    @property
    def entropy_fraction(self) -> Tensor:
        """``entropy / max_entropy``: 1 uniform, 0 one-hot (NaN where unknown)."""
        return self.entropy / self.max_entropy


@dataclasses.dataclass
class CallStats:
    """What one attention call contributes: device scalars and host facts."""

    #: The largest logit; at or below :data:`MASKED_BELOW` when every position was masked
    #: (:meth:`AttentionProbe.collect` reports that as NaN).
    max_logit: Tensor
    #: float32 (3,): over the query rows with a key taking part, the sum of their entropy,
    #: the sum of ln(keys taking part) and their count, in one tensor so that a call adds
    #: to its module's sums in one op. None on the bound path.
    sums: Tensor | None
    keys: int  # the key length, a shape
    bounded: bool = False

    @property
    def entropy_sum(self) -> Tensor | None:
        return None if self.sums is None else self.sums[0]

    @property
    def log_keys_sum(self) -> Tensor | None:
        return None if self.sums is None else self.sums[1]

    @property
    def rows(self) -> Tensor | None:
        return None if self.sums is None else self.sums[2]


# ---------------------------------------------------------------- the statistics
def softmax_stats(
    logits: Tensor, probs: Tensor | None = None, *, scratch: bool = False
) -> CallStats:
    """Statistics of a softmax over the last dimension, from its input (and output).

    ``probs`` is the softmax's output when it has been computed already; otherwise the
    probabilities are computed here, slice by slice. ``scratch``: the logits are this
    module's own (scores it computed) and may be overwritten, which saves a full-size
    temporary.
    """
    keys = int(logits.shape[-1])
    flat = _detached(logits).reshape(-1, keys)
    flat_probs = None if probs is None else probs.detach().reshape(-1, keys)
    total = int(flat.shape[0])
    if total == 0:
        empty = flat.new_full((), float("-inf"), dtype=torch.float32)
        return CallStats(empty, flat.new_zeros(3, dtype=torch.float32), keys)
    step = max(1, SLICE_ELEMENTS // keys)
    top: Tensor | None = None
    sums: Tensor | None = None
    for start in range(0, total, step):
        # One slice (the usual case) is the tensor itself: no slicing ops.
        piece = flat if total <= step else flat[start : start + step]
        chunk = piece if piece.dtype == torch.float32 else piece.float()
        p = None
        if flat_probs is not None:
            p = flat_probs if total <= step else flat_probs[start : start + step]
        piece_top, piece_sums = _slice_stats(chunk, p, writable=scratch or chunk is not piece)
        top = piece_top if top is None else torch.maximum(top, piece_top)
        sums = piece_sums if sums is None else sums.add_(piece_sums)
    assert top is not None
    return CallStats(top, sums, keys)


def _slice_stats(chunk: Tensor, p: Tensor | None, *, writable: bool) -> tuple[Tensor, Tensor]:
    """The largest logit of a (rows, keys) float32 slice and its :attr:`CallStats.sums`.

    ``writable``: ``chunk`` may be overwritten (it is, in place: no full-size temporary).
    """
    row_max = chunk.amax(dim=-1)
    if p is None:
        p = torch.softmax(chunk, dim=-1)
    elif p.dtype != torch.float32:
        p = p.float()
    # H = -sum p·log p = lse - sum p·s, with lse = max s - log(max p): two cheap
    # reductions and one dot product per row instead of a log per element (an
    # elementwise log costs more than the softmax itself on a CPU). Masked logits are
    # clamped to a finite value where p is 0, so they add exactly 0.
    finite = chunk.clamp_min_(MASKED_BELOW) if writable else chunk.clamp_min(MASKED_BELOW)
    entropy = row_max - p.amax(dim=-1).log_()
    entropy.sub_(torch.linalg.vecdot(p, finite))
    # Keys taking part, counted as floats in the clamped logits' own memory (a masked
    # logit is now exactly MASKED_BELOW): a float comparison and a float sum are several
    # times cheaper on a CPU than a boolean one and an integer sum.
    taking_part = finite.gt_(MASKED_BELOW).sum(dim=-1)
    seen = taking_part > 0  # rows with every key masked say nothing
    # (entropy, ln keys, 1) per row, summed over the rows seen: one where, one sum.
    per_row = torch.stack((entropy, taking_part.log_(), seen))
    return row_max.amax(), torch.where(seen, per_row, 0.0).sum(dim=-1)


def sdpa_stats(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    first_sequence: bool = False,
    masks: MaskCache | None = None,
) -> CallStats:
    """Statistics of one ``F.scaled_dot_product_attention`` call, from its arguments.

    Exact when the score matrix has at most :data:`EXACT_ELEMENTS` entries, else the
    bound max‖q‖·max‖k‖·scale per head (plus the mask's largest value).
    ``first_sequence``: of the first sequence of a (batch, heads, length, dim) call only.
    Every sequence of the batch goes through the same query and key weights, whose
    growth is what attention-logit growth is; the largest logit of one sequence shows
    it as well as the batch's, at 1/batch of the cost of recomputing the scores.
    ``masks``: where the additive masks built from ``attn_mask`` and ``is_causal`` are
    kept for the next call (the same mask tensor is usually passed to every layer).
    """
    q, k = _detached(query), _detached(key)
    first = first_sequence and q.dim() == 4 and k.dim() == 4 and q.shape[0] > 1
    if first:
        q, k = q[:1], k[:1]

    def first_of(mask: Tensor) -> Tensor:
        return mask[:1] if first and mask.dim() == 4 and mask.shape[0] > 1 else mask

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    length, keys = int(q.shape[-2]), int(k.shape[-2])
    if _elements(q, k) > EXACT_ELEMENTS:
        return _sdpa_bound(q, k, None if attn_mask is None else first_of(attn_mask), scale)
    cache = masks if masks is not None else MaskCache()  # a caller's own: nothing kept
    mask = cache.causal(length, keys, q.device) if is_causal else None
    if attn_mask is not None:
        if attn_mask.dtype == torch.float32:  # already what is added: nothing to build
            extra: Tensor | None = first_of(_detached(attn_mask))
        else:  # SDPA's boolean mask: True takes part
            extra = cache.get(
                (attn_mask,), ("sdpa", first), lambda: _additive(first_of(attn_mask), masked=False)
            )
        assert extra is not None
        mask = extra if mask is None else mask + extra
    return softmax_stats(_scores(q, _repeat_key_heads(k, q), mask, scale), scratch=True)


def _detached(tensor: Tensor) -> Tensor:
    """``tensor.detach()`` only where it requires grad (a view op each, and the
    projections made here under no_grad need none)."""
    return tensor.detach() if tensor.requires_grad else tensor


def _elements(q: Tensor, k: Tensor) -> int:
    """The number of scores of a (..., heads, length, dim) call: batch·heads·queries·keys."""
    batch = 1
    if q.dim() >= 3 and max(q.dim(), k.dim()) > 3:  # batch dimensions broadcast
        q_batch, k_batch = q.shape[:-3][::-1], k.shape[:-3][::-1]
        for i in range(max(len(q_batch), len(k_batch))):
            a = q_batch[i] if i < len(q_batch) else 1
            b = k_batch[i] if i < len(k_batch) else 1
            batch *= a if b == 1 else b
    heads = int(q.shape[-3]) if q.dim() >= 3 else 1
    return batch * heads * int(q.shape[-2]) * int(k.shape[-2])


def _scores(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``scale·q·kᵀ + mask`` in float32, a tensor of this module's own.

    One sequence of (heads, length, dim) (the sampled case) is one ``baddbmm``: the
    product, the scale and the mask in a single op, with no temporary.
    """
    q = q if q.dtype == torch.float32 else q.float()
    k = k if k.dtype == torch.float32 else k.float()
    if q.dim() == 4 and k.dim() == 4 and q.shape[0] == k.shape[0] == 1:
        q, k = q[0], k[0]  # one sequence: one batched matrix product over the heads
    if q.dim() == 3 and mask is not None and mask.dim() == 4 and mask.shape[0] == 1:
        mask = mask[0]
    k_t = k.transpose(-2, -1)
    if q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0]:
        shape = (q.shape[0], q.shape[1], k.shape[1])
        if mask is None:
            return torch.bmm(q, k_t).mul_(scale)
        if _fits(mask.shape, shape):
            return torch.baddbmm(mask, q, k_t, alpha=scale)
    scores = torch.matmul(q, k_t).mul_(scale)
    return scores if mask is None else _add_mask(scores, mask)


def _add_mask(scores: Tensor, mask: Tensor) -> Tensor:
    """``scores + mask``, in place (the scores are this module's own) unless the mask
    broadcasts them to a larger shape. An additive mask, mask-sized to build, is
    cheaper to apply than a boolean one broadcast over the scores."""
    if _fits(mask.shape, scores.shape):
        return scores.add_(mask)
    return scores + mask


def _fits(mask: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a tensor of shape ``mask`` broadcasts to ``shape`` without enlarging it
    (``torch.broadcast_shapes`` costs tens of microseconds: this is a few tuple reads)."""
    if len(mask) > len(shape):
        return False
    return all(m in (1, n) for m, n in zip(mask[::-1], shape[::-1]))


def _repeat_key_heads(k: Tensor, q: Tensor) -> Tensor:
    """Keys with fewer heads than the queries (grouped-query attention), repeated per
    group as ``enable_gqa=True`` does: query head h reads key head h // group."""
    if q.dim() < 3 or k.dim() < 3 or k.shape[-3] in (q.shape[-3], 1):
        return k
    group, rest = divmod(int(q.shape[-3]), int(k.shape[-3]))
    if rest:
        raise ValueError(f"{q.shape[-3]} query heads cannot share {k.shape[-3]} key heads")
    return k.repeat_interleave(group, dim=-3)


def _sdpa_bound(q: Tensor, k: Tensor, attn_mask: Tensor | None, scale: float) -> CallStats:
    """max over heads of max‖q‖·max‖k‖·scale: Cauchy-Schwarz, one pass over q and k."""
    q_norms = torch.linalg.vector_norm(q, dim=-1, dtype=torch.float32)
    k_norms = torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32)
    if q.dim() >= 3 and k.dim() >= 3:
        # (..., heads, rows) -> (heads,), keys repeated per query group as in GQA.
        q_top = q_norms.amax(dim=-1).reshape(-1, q.shape[-3]).amax(dim=0)
        k_top = k_norms.amax(dim=-1).reshape(-1, k.shape[-3]).amax(dim=0)
        if k_top.shape[0] not in (q_top.shape[0], 1):
            k_top = k_top.repeat_interleave(q_top.shape[0] // k_top.shape[0])
        bound = (q_top * k_top).amax() * scale
    else:
        bound = q_norms.amax() * k_norms.amax() * scale
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        bound = bound + attn_mask.detach().float().amax()
    return CallStats(bound, None, int(k.shape[-2]), bounded=True)


def is_plain_mha(module: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` whose statistics :func:`mha_call_stats` can compute
    from its inputs: torch's own forward, and no extra key/value rows."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and type(module).forward is nn.MultiheadAttention.forward
        and module.bias_k is None
        and not module.add_zero_attn
    )


def mha_call_stats(
    mha: nn.MultiheadAttention,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    first_sequence: bool,
    masks: MaskCache | None = None,
) -> CallStats | None:
    """Statistics of one ``nn.MultiheadAttention`` call, from its arguments (before it
    runs): queries and keys projected with the module's weights, split into heads,
    scaled by 1/√head_dim, with its ``attn_mask`` and ``key_padding_mask`` (a boolean
    one masks where True, a float one is added), as ``F.multi_head_attention_forward``
    hands them to SDPA (``is_causal`` is only a hint there: ``attn_mask`` holds the
    mask). ``first_sequence``: the first sequence of the batch only. ``masks``: where the
    combined mask is kept for the next layer given the same mask tensors. None when the
    call is not one this can read (then nothing is measured for it)."""
    params = dict(zip(_MHA_ARGS, args))
    params.update(kwargs)
    query, key = params.get("query"), params.get("key")
    if not (_plain(query) and _plain(key)) or query.dim() != key.dim():
        return None
    same = query is key  # self-attention: one projection for the queries and the keys
    if query.dim() == 2:  # unbatched: (length, embed)
        query, key = query.unsqueeze(0), key.unsqueeze(0)
    elif query.dim() != 3:
        return None
    elif not mha.batch_first:  # (length, batch, embed)
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    batch = int(query.shape[0])
    sequences = 1 if first_sequence else batch
    length, keys = int(query.shape[1]), int(key.shape[1])
    if batch == 0 or length == 0 or keys == 0:
        return None
    if sequences == 1:
        query, key = query[0], key[0]
    q, k = _project(mha, query, None if same else key, sequences)
    heads = mha.num_heads
    attn_mask, padding = params.get("attn_mask"), params.get("key_padding_mask")
    attn_mask = attn_mask if isinstance(attn_mask, Tensor) else None
    padding = padding if isinstance(padding, Tensor) else None
    mask = None
    if attn_mask is not None or padding is not None:
        cache = masks if masks is not None else MaskCache()  # a caller's own: nothing kept
        mask = cache.get(
            (attn_mask, padding),
            (batch, heads, sequences),
            lambda: _mha_mask(attn_mask, padding, batch, heads, sequences),
        )
    return sdpa_stats(q, k, mask)  # a float mask is additive for SDPA too


def _project(
    mha: nn.MultiheadAttention, query: Tensor, key: Tensor | None, sequences: int
) -> tuple[Tensor, Tensor]:
    """Queries and keys projected with the module's weights, split into heads:
    (heads, length, head_dim) from one (length, embed) sequence, else (sequences,
    heads, length, head_dim). ``key`` None: self-attention, the queries and keys are
    one product with the first two thirds of the packed weight."""
    embed, heads = mha.embed_dim, mha.num_heads
    bias = mha.in_proj_bias
    if key is None and mha._qkv_same_embed_dim:
        w_qk, b_qk = mha.in_proj_weight[: 2 * embed], None if bias is None else bias[: 2 * embed]
        # (..., length, 2, heads, head_dim) -> (2, ..., heads, length, head_dim): views.
        qk = F.linear(query, w_qk, b_qk).unflatten(-1, (2, heads, -1))
        order = (1, 2, 0, 3) if sequences == 1 else (2, 0, 3, 1, 4)
        q, k = qk.permute(order).unbind(0)
        return q, k
    if key is None:
        key = query
    if mha._qkv_same_embed_dim:
        w_q, w_k = mha.in_proj_weight[:embed], mha.in_proj_weight[embed : 2 * embed]
    else:
        w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
    b_q, b_k = (None, None) if bias is None else (bias[:embed], bias[embed : 2 * embed])
    q = F.linear(query, w_q, b_q).unflatten(-1, (heads, -1)).transpose(-3, -2)
    k = F.linear(key, w_k, b_k).unflatten(-1, (heads, -1)).transpose(-3, -2)
    return q, k


def _mha_mask(
    attn_mask: Tensor | None, padding: Tensor | None, batch: int, heads: int, sequences: int
) -> Tensor | None:
    """``nn.MultiheadAttention``'s two masks as one additive float mask that broadcasts
    over (sequences, heads, queries, keys), for the first ``sequences`` of the batch:
    (queries, keys) or (sequences, heads or 1, queries or 1, keys)."""
    mask: Tensor | None = None
    if attn_mask is not None:
        if attn_mask.dim() == 3:  # (batch·heads, queries, keys), batch-major
            attn_mask = attn_mask.view(batch, heads, *attn_mask.shape[-2:])[:sequences]
        mask = _additive(attn_mask)
    if padding is not None:
        if padding.dim() == 2:  # (batch, keys), or (keys,) unbatched
            padding = padding[:sequences]
        extra = _additive(padding).view(-1, 1, 1, padding.shape[-1])
        mask = extra if mask is None else mask + extra
    return mask


def _additive(mask: Tensor, *, masked: bool = True) -> Tensor:
    """A mask as float32 to add to the scores: a float one as it is; a boolean one -inf
    where it equals ``masked`` (``nn.MultiheadAttention``: True is masked; SDPA: False
    is), 0 elsewhere."""
    mask = mask.detach()
    if mask.dtype == torch.bool:
        hidden = mask if masked else ~mask
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
            hidden, -math.inf
        )
    return mask if mask.dtype == torch.float32 else mask.float()


class MaskCache:
    """The additive masks built on one sampled step, reused while their sources last.

    A model passes the same mask tensor to every layer; converting it (a boolean mask to
    an additive one, two masks into one, the causal mask) once per step rather than once
    per layer saves ops on the training thread. An entry is keyed by the identity and
    version counter of each source tensor (an in-place change to a mask bumps its
    version, so the mask is rebuilt) and by the shape facts it was built for. The
    sources are held by the entry, so that no other tensor can take their identity while
    it lives: the probe clears the cache at the end of each sampled step, and at most
    :attr:`SIZE` entries are kept (the oldest goes first). A write that bypasses the
    version counter (through ``.data``, ``.numpy()`` or DLPack) goes unseen for the rest
    of that sampled step at most.
    """

    SIZE = 8

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[tuple[Tensor | None, ...], Tensor | None]]
        self._entries = {}
        self._lock = threading.Lock()  # DataParallel replicas run forwards on threads

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(
        self,
        sources: tuple[Tensor | None, ...],
        facts: Any,
        build: Callable[[], Tensor | None],
    ) -> Tensor | None:
        """The mask ``build()`` makes from ``sources`` (tensors or None), built once while
        the sources are unchanged."""
        key: list[Any] = [facts]
        for source in sources:
            if source is None:
                key.append(None)
                continue
            try:
                key.append((id(source), source._version))
            except RuntimeError:  # an inference tensor has no version counter
                return build()
        return self._lookup(tuple(key), sources, build)

    def causal(self, length: int, keys: int, device: torch.device) -> Tensor:
        """SDPA's causal mask (aligned to the top left) as an additive float32 mask."""

        def build() -> Tensor:
            above = torch.ones(length, keys, dtype=torch.bool, device=device).triu_(1)
            return torch.zeros(length, keys, dtype=torch.float32, device=device).masked_fill_(
                above, -math.inf
            )

        mask = self._lookup(("causal", length, keys, device), (), build)
        assert mask is not None
        return mask

    def _lookup(
        self,
        key: tuple[Any, ...],
        sources: tuple[Tensor | None, ...],
        build: Callable[[], Tensor | None],
    ) -> Tensor | None:
        entry = self._entries.get(key)
        if entry is not None:
            return entry[1]
        mask = build()
        with self._lock:
            while len(self._entries) >= self.SIZE:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (sources, mask)
        return mask


# ------------------------------------------------------------------- the probe
@dataclasses.dataclass
class _Frame:
    """One attention module's forward in progress."""

    name: str
    counting: bool  # a training forward, or include_eval
    attention: bool  # recognised as attention (False: the whole model, watched as a fallback)


@dataclasses.dataclass
class _Accumulator:
    """One module's calls in this step, combined on the device."""

    max_logit: Tensor
    sums: Tensor | None  # as CallStats.sums, over all the module's exact calls
    keys: int
    bounded: bool

    def add(self, call: CallStats) -> None:
        self.max_logit = torch.maximum(self.max_logit, call.max_logit)
        self.bounded = self.bounded or call.bounded
        self.keys = call.keys
        if call.sums is not None:
            self.sums = call.sums if self.sums is None else self.sums + call.sums


class _ThreadState(threading.local):
    """The attention modules running in this thread, and the mode watching them."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.mode: _AttentionMode | None = None


class AttentionProbe:
    """Watches the attention calls of one sampled step and gathers what they showed.

    ``model`` may be a module or an already built
    :class:`~gradwatch._measure.model.ModelMap` (its attention role says which modules
    are attention); the probe holds the modules weakly, and its hooks and mode hold the
    probe weakly.

    ``first_sequence``: recompute the scores of SDPA and ``nn.MultiheadAttention`` calls
    for the first sequence of the batch only (see :func:`sdpa_stats`), 1/batch of the
    cost; the Watcher uses it.
    """

    def __init__(
        self,
        model: nn.Module | ModelMap,
        *,
        include_eval: bool = False,
        first_sequence: bool = False,
    ) -> None:
        self.first_sequence = first_sequence
        self.include_eval = include_eval
        model_map = ModelMap.of(model)
        attention = model_map.with_role(ATTENTION)
        self.fallback = not attention
        watched = attention or (model_map.root,)
        # (name, module, whether its statistics come from its inputs: see is_plain_mha)
        self._modules: list[tuple[str, weakref.ref[nn.Module], bool]] = [
            (info.name, info.ref, info.module is not None and is_plain_mha(info.module))
            for info in watched
        ]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._seen: dict[str, _Accumulator] = {}
        self._state = _ThreadState()
        self._modes: weakref.WeakSet[_AttentionMode] = weakref.WeakSet()
        self._warned = False
        self._masks = MaskCache()  # cleared when disarmed: nothing held between steps
        self._uniform_cache: tuple[tuple[tuple[int, ...], torch.device], Tensor] | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """Names of the watched modules: the attention modules, or the root (``""``)."""
        return tuple(name for name, _, _ in self._modules)

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Install the forward pre-hooks and hooks (idempotent)."""
        if self._handles:
            return
        self._seen = {}
        for name, ref, direct in self._modules:
            module = ref()
            if module is None:
                continue
            leave = SafeHook(self, "_leave", name)
            if direct:
                enter = SafeHook(self, "_enter_mha", name)
                self._handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
            else:
                enter = SafeHook(self, "_enter", name, not self.fallback)
                self._handles.append(module.register_forward_pre_hook(enter))
            # always_call: a forward that raises still leaves, and the mode is removed.
            self._handles.append(module.register_forward_hook(leave, always_call=True))

    def disarm(self) -> None:
        """Remove the hooks (idempotent); what they measured is kept until collected."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        for mode in list(self._modes):
            mode.retired = True  # one left on another thread's stack stops watching
        self._masks.clear()
        state = self._state
        state.frames.clear()
        if state.mode is not None:
            _remove_mode(state.mode)
            state.mode = None

    def collect(self) -> AttentionSample | None:
        """Remove the hooks and return what they measured (None if no attention ran)."""
        self.disarm()
        seen, self._seen = self._seen, {}
        if not seen:
            return None
        accs = list(seen.values())
        device = gather_device(acc.max_logit.device for acc in accs)
        # All modules at once: a handful of ops on (modules,) vectors, not a dozen each.
        tops = torch.stack([on_device(acc.max_logit, device) for acc in accs])
        # At or below MASKED_BELOW: every position was masked (NaN stays NaN).
        tops.masked_fill_(tops <= MASKED_BELOW, float("nan"))
        unknown: Tensor | None = None  # (entropy, ln keys, rows) of a module with no exact call
        rows_of: list[Tensor] = []
        for acc in accs:
            if acc.sums is None:
                if unknown is None:
                    unknown = torch.full((3,), float("nan"), dtype=torch.float32, device=device)
                rows_of.append(unknown)
            else:
                rows_of.append(on_device(acc.sums, device))
        sums = torch.stack(rows_of)  # (modules, 3)
        means = sums[:, :2] / sums[:, 2:]  # entropy, ln keys: NaN where no rows were seen
        uniform = self._uniform(tuple(acc.keys for acc in accs), device)
        return AttentionSample(
            modules=tuple(seen),
            max_logit=tops,
            entropy=means[:, 0],
            max_entropy=torch.where(sums[:, 2] > 0, means[:, 1], uniform),
            bounded=tuple(acc.bounded for acc in accs),
        )

    def _uniform(self, keys: tuple[int, ...], device: torch.device) -> Tensor:
        """ln(key length) per module, on the device: built with fills (a copy from the
        host would wait for the device) once, and kept while the key lengths stay."""
        cached = self._uniform_cache
        if cached is None or cached[0] != (keys, device):
            values = [
                torch.full((), math.log(max(n, 1)), dtype=torch.float32, device=device)
                for n in keys
            ]
            cached = self._uniform_cache = ((keys, device), torch.stack(values))
        return cached[1]

    # ------------------------------------------------------------------ hooks
    def _enter(self, name: str, attention: bool, module: nn.Module, args: Any) -> None:
        counting = self.include_eval or (module.training and torch.is_grad_enabled())
        state = self._state
        state.frames.append(_Frame(name, counting, attention))
        # Only around forwards that count: an evaluation forward keeps, for instance,
        # nn.MultiheadAttention's fast path, which any active mode turns off.
        if counting and state.mode is None:
            mode = _AttentionMode(self)
            mode.__enter__()
            state.mode = mode
            self._modes.add(mode)

    def _enter_mha(
        self, name: str, module: nn.MultiheadAttention, args: Any, kwargs: dict[str, Any]
    ) -> None:
        """A plain ``nn.MultiheadAttention`` starts: measure it from its inputs, no mode.

        Inside another watched attention module's forward (a mode already watches this
        thread) it is watched like any attention module instead, so that the calls are
        attributed as before."""
        if self._state.mode is not None:
            self._enter(name, True, module, args)
            return
        counting = self.include_eval or (module.training and torch.is_grad_enabled())
        # A frame that watches nothing: _leave pops it, and calls inside it are not seen.
        self._state.frames.append(_Frame(name, False, True))
        if not counting:
            return
        try:
            with torch.no_grad():
                call = mha_call_stats(
                    module, args, kwargs, first_sequence=self.first_sequence, masks=self._masks
                )
        except Exception as error:  # a statistic must never break the user's forward
            self._failed(error)
            return
        if call is not None:
            self._record(name, call)

    def _leave(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        state = self._state
        frames = state.frames
        while frames:  # the innermost frame of this name, and any left open inside it
            if frames.pop().name == name:
                break
        if state.mode is not None and not any(frame.counting for frame in frames):
            _remove_mode(state.mode)
            state.mode = None

    def _observe(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        """Called by the mode after an SDPA or softmax call inside a watched module."""
        frames = self._state.frames
        if not frames or not frames[-1].counting:
            return
        frame = frames[-1]
        with torch.no_grad():
            call = (
                self._sdpa(args, kwargs)
                if func is _SDPA
                else self._softmax(frame, args, kwargs, out)
            )
        if call is not None:
            self._record(frame.name, call)

    def _record(self, name: str, call: CallStats) -> None:
        """Add one attention call's statistics to its module's for this step."""
        acc = self._seen.get(name)
        if acc is None:
            # The first call of this module at this step: dict order is execution order.
            self._seen[name] = _Accumulator(call.max_logit, call.sums, call.keys, call.bounded)
        elif acc.max_logit.device == call.max_logit.device:
            acc.add(call)

    def _sdpa(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallStats | None:
        params = dict(zip(_SDPA_ARGS, args))
        params.update(kwargs)
        q, k = params.get("query"), params.get("key")
        if not (_plain(q) and _plain(k)) or q.dim() < 2 or q.numel() == 0 or k.numel() == 0:
            return None
        mask = params.get("attn_mask")
        if mask is not None and type(mask) is not Tensor:
            return None  # a mask of a tensor subclass: its meaning is its own
        return sdpa_stats(
            q,
            k,
            mask,
            bool(params.get("is_causal", False)),
            params.get("scale"),
            first_sequence=self.first_sequence,
            masks=self._masks,
        )

    @staticmethod
    def _softmax(
        frame: _Frame, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> CallStats | None:
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not _plain(x) or not isinstance(dim, int) or not isinstance(out, Tensor):
            return None
        # (batch, heads, queries, keys), or (batch·heads, queries, keys) inside a module
        # known to be attention: a softmax over the keys.
        if not (x.dim() == 4 or (x.dim() == 3 and frame.attention)):
            return None
        if dim % x.dim() != x.dim() - 1 or out.shape != x.shape or x.numel() == 0:
            return None
        return softmax_stats(x, out)

    def _failed(self, error: Exception) -> None:
        """A statistic failed: the call went through unchanged; say so once per probe."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(level, "gradwatch: attention statistics failed and were skipped: %r", error)


def _plain(value: Any) -> TypeGuard[Tensor]:
    """A plain floating-point tensor: not a subclass (DTensor, fake), not nested."""
    return (
        type(value) in (Tensor, nn.Parameter) and value.is_floating_point() and not value.is_nested
    )


class _AttentionMode(TorchFunctionMode):
    """Passes every torch call through unchanged; reports SDPA and softmax calls.

    Holds the probe weakly. ``retired`` makes it a pure pass-through (a mode that could
    not be taken off its stack).
    """

    def __init__(self, probe: AttentionProbe) -> None:
        super().__init__()
        self.probe = weakref.ref(probe)
        self.retired = False

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is _MHA_FORWARD and not self.retired:
            inner = _reentrant_mha_forward()
            if inner is not None:
                with self:  # watch the calls inside it
                    return inner(*args, **kwargs)
        out = func(*args, **kwargs)
        watched = func is _SDPA or any(func is softmax for softmax in _SOFTMAXES)
        if self.retired or not watched or being_traced():
            return out
        probe = self.probe()
        if probe is not None:
            try:
                probe._observe(func, args, kwargs, out)
            except Exception as error:  # a statistic must never break the user's forward
                probe._failed(error)
        return out


def _remove_mode(mode: _AttentionMode) -> None:
    """Take ``mode`` off this thread's stack if it is on top; otherwise retire it.

    Something pushed inside the attention forward and not popped sits above it: popping
    would remove that instead.
    """
    try:
        top = torch.overrides._get_current_function_mode()
    except AttributeError:  # a torch without the helper: trust the nesting
        top = mode
    if top is mode:
        mode.__exit__(None, None, None)
    else:
        mode.retired = True
        logger.debug("gradwatch: the attention mode is not on top of the stack; retired")


def _reentrant_mha_forward() -> Callable[..., Any] | None:
    """``F.multi_head_attention_forward`` with its torch-function dispatch check off.

    The function starts with ``if has_torch_function(...): return
    handle_torch_function(...)``, which under any mode hands the whole call to the mode,
    with the mode off. The copy runs the same code (same results, same random draws)
    with that one global answering False, so the mode, kept on, sees the SDPA or
    softmax inside. Made afresh for each call (a dict copy, microseconds), so that it
    reads ``torch.nn.functional``'s globals as they are now, patches included. None when
    the function is not laid out that way.
    """
    function: Any = _MHA_FORWARD
    if not isinstance(function, types.FunctionType):
        return None
    if "has_torch_function" not in function.__code__.co_names:
        return None
    namespace = dict(function.__globals__)
    namespace["has_torch_function"] = _never
    copy = types.FunctionType(
        function.__code__,
        namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


def _never(*args: Any) -> bool:
    return False
