"""Attention over rows that hold several sequences, registered in transformers'
``AttentionInterface``: packed rows (``learner.packing``) and shared-prompt preference pairs
(``learner.share_prompt``). On a GPU both go to torch's variable-length flash kernel; elsewhere
one sdpa per sequence (:func:`_segment_attention`)."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rlft.modeling import base_model

PACKED_ATTENTION = ("auto", "varlen", "mask")
"""``learner.packed_attention`` values (see :func:`use_varlen_attention`)."""
VARLEN_ATTENTION = "rlft_varlen"
"""Name of :func:`_varlen_attention` in transformers' ``AttentionInterface``."""
SHARED_PROMPT_ATTENTION = "rlft_shared_prompt"
"""Name of :func:`_shared_prompt_attention` in transformers' ``AttentionInterface``."""


def varlen_kernel_available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen`` (flash attention over packed rows)."""
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def wants_varlen_attention(packed_attention: str, device: torch.device) -> bool:
    """Whether rows holding several sequences (packed rows, shared-prompt preference pairs) attend
    with a variable-length kernel (``learner.packed_attention``)."""
    if packed_attention not in PACKED_ATTENTION:
        raise ValueError(f"learner.packed_attention={packed_attention!r} is not one of {PACKED_ATTENTION}")
    auto = device.type == "cuda" and varlen_kernel_available()
    return packed_attention == "varlen" or (packed_attention == "auto" and auto)


def use_varlen_attention(model: torch.nn.Module) -> None:
    """Make ``model`` attend with :func:`_varlen_attention` (packed rows only): on a GPU in
    bf16/fp16, torch's variable-length flash-attention kernel, which does causal attention within
    each sample of a packed row at the cost of the samples alone. The default transformers path
    for packed rows instead builds a [T, T] block-diagonal mask and attends over the whole row."""
    _use_attention(model, VARLEN_ATTENTION, _varlen_attention, "learner.packed_attention=mask")


def use_shared_prompt_attention(model: torch.nn.Module) -> None:
    """Make ``model`` attend with :func:`_shared_prompt_attention` (shared-prompt preference rows
    only): the flash kernel over each pair's two sequences, no [L, L] mask."""
    _use_attention(model, SHARED_PROMPT_ATTENTION, _shared_prompt_attention, "learner.share_prompt=false")


def _use_attention(model: torch.nn.Module, name: str, function: Callable[..., Any], fix: str) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)
    base = base_model(model)
    base.set_attn_implementation(name)
    if base.config._attn_implementation != name:
        raise ValueError(f"{type(base).__name__} cannot switch its attention implementation: set {fix}")


def _varlen_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Causal attention within each sample of one packed row, for transformers' attention
    interface: ``query`` [1, Hq, T, D], ``key``/``value`` [1, Hkv, T, D] (grouped-query heads
    allowed), samples at ``cu_seq_lens_q``. Returns [1, T, Hq, D]. CUDA bf16/fp16 inputs go to
    ``torch.nn.attention.varlen.varlen_attn``; anything else to one causal sdpa per sample (the
    same function; used on the CPU)."""
    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise ValueError(
            f"{VARLEN_ATTENTION} attention takes one packed row with cu_seq_lens_q (learner.packing)"
        )
    _refuse_window_and_dropout(VARLEN_ATTENTION, sliding_window, dropout, "learner.packed_attention=mask")
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, H, D]
    longest = int(max_length_q)
    return _segment_attention(q, k, v, cu_seq_lens_q, cu_seq_lens_q, longest, longest, scaling)[None], None


def _shared_prompt_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    shared_prompt: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention over :class:`~rlft.learner.batch.SharedPromptRows`, for transformers' attention
    interface: ``query`` [N, Hq, L, D], ``key``/``value`` [N, Hkv, L, D]. Each pair is two
    segments: prompt + chosen attends causally to itself; the rejected segment (the copy of the
    prompt's last token, then the rejected completion) attends to the prompt without its last
    token, then causally to itself, i.e. bottom-right aligned causal attention of r + 1 queries
    over p + r keys. ``shared_prompt`` (from ``SharedPromptRows.segment_index``) holds the flat
    token indices of each segment's queries and keys and their boundaries. Returns [N, L, Hq, D],
    0 on padding."""
    if shared_prompt is None:
        raise ValueError(
            f"{SHARED_PROMPT_ATTENTION} attention takes shared-prompt rows (learner.share_prompt)"
        )
    _refuse_window_and_dropout(SHARED_PROMPT_ATTENTION, sliding_window, dropout, "learner.share_prompt=false")
    n, heads, length, dim = query.shape
    q_index, k_index = shared_prompt["q_index"], shared_prompt["k_index"]

    def flat(t: Tensor, index: Tensor) -> Tensor:  # [N, H, L, D] -> [tokens at index, H, D]
        return t.transpose(1, 2).reshape(n * length, t.shape[1], dim)[index]

    out = _segment_attention(
        flat(query, q_index),
        flat(key, k_index),
        flat(value, k_index),
        shared_prompt["cu_q"],
        shared_prompt["cu_k"],
        shared_prompt["max_q"],
        shared_prompt["max_k"],
        scaling,
    )
    full = out.new_zeros(n * length, heads, dim).index_copy(0, q_index, out)
    return full.view(n, length, heads, dim), None


def _refuse_window_and_dropout(name: str, sliding_window: int | None, dropout: float, fix: str) -> None:
    if sliding_window or dropout:
        raise ValueError(f"{name} attention has no sliding window or dropout: set {fix}")


def _segment_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int, scaling: float | None
) -> Tensor:
    """Causal attention within each segment of flat ``q`` [Tq, Hq, D] and ``k``/``v`` [Tk, Hkv, D]
    (segment i: queries cu_q[i]:cu_q[i+1], keys cu_k[i]:cu_k[i+1]), bottom-right aligned: the last
    query sees every key of its segment, query j of lq sees the first lk - lq + j + 1 keys. CUDA
    bf16/fp16: torch's variable-length flash kernel (``torch.nn.attention.varlen``, whose causal
    mode has that alignment); anything else: one sdpa per segment. Returns [Tq, Hq, D]."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        # torch releases differ: causal is window_size=(-1, 0) (>= 2.11) or is_causal=True; GQA
        # heads are passed through to flash attention, and newer releases ask for enable_gqa.
        params = inspect.signature(varlen_attn).parameters
        options: dict[str, Any] = {"scale": scaling}
        options.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
        if "enable_gqa" in params:
            options["enable_gqa"] = q.shape[1] != k.shape[1]
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **options)
    parts = []
    for (qa, qb), (ka, kb) in zip(
        itertools.pairwise(cu_q.tolist()), itertools.pairwise(cu_k.tolist()), strict=True
    ):
        lq, lk = qb - qa, kb - ka
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[qa:qb].transpose(0, 1),
                k[ka:kb].transpose(0, 1),
                v[ka:kb].transpose(0, 1),
                attn_mask=mask,
                scale=scaling,
                enable_gqa=True,
            ).transpose(0, 1)
        )
    return torch.cat(parts)
