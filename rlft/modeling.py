"""Loading models and tokenizers (always through the Auto classes, from a hub id or a directory),
and per-token log-probabilities computed from the final hidden states in chunks."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from rlft.config import ModelConfig
from rlft.tiny_model import TINY_MODEL_NAME, resolve_model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("none", "4bit")
"""``model.lora.quantize`` values: 4bit = QLoRA (NF4 base weights through bitsandbytes)."""


def _quiet_transformers() -> None:
    """No per-load progress bars: with several actors they flood the driver's console."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Config attributes that hold a model's context length (positions), by model family."""


def check_model_source(path: str, key: str) -> None:
    """Raise a ValueError naming ``key`` if ``path`` is neither a directory nor a hub id that can be
    loaded: a path that does not exist, a file, or a hub id while the hub cannot be reached (or is
    switched off with ``HF_HUB_OFFLINE``) and the model is not in the local hub cache."""
    if path == TINY_MODEL_NAME:
        return
    local = Path(path).expanduser()
    if local.is_dir():
        return
    if local.exists():
        raise ValueError(f"{key}={path!r} is a file; give the directory that holds the model's files")
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        relative = "" if local.is_absolute() else f" (relative to {Path.cwd()})"
        raise ValueError(f"{key}={path!r}: the directory does not exist{relative}")
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(path, "config.json"), str):
        return  # cached: loads without the hub
    offline = huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    if offline or not hub_reachable():
        why = "the hub is switched off (HF_HUB_OFFLINE is set)" if offline else "the hub cannot be reached"
        raise ValueError(
            f"{key}={path!r} is no local directory, so it is taken as a Hugging Face hub id, but {why} "
            f"and the model is not in the local hub cache. Fix: point {key} at the model's directory, or "
            f"download it where the hub is reachable (huggingface-cli download {path}) into this "
            "machine's hub cache (HF_HOME)"
        )


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub's host opens within ``timeout_s`` (without
    this check an unreachable hub costs minutes of retries before from_pretrained gives up)."""
    import huggingface_hub

    url = urlsplit(huggingface_hub.constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def context_length(cfg: ModelConfig) -> int | None:
    """The number of positions the model at ``model.path`` was built for (its config's
    ``max_position_embeddings`` or the family's equivalent); None if its config names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(cfg.path), trust_remote_code=cfg.trust_remote_code)
    config = getattr(config, "text_config", None) or config
    return next((int(v) for k in CONTEXT_KEYS if isinstance(v := getattr(config, k, None), int)), None)


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer of ``model.tokenizer_path`` (default ``model.path``); it must have a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.tokenizer_path or cfg.path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The causal LM at ``model.path`` in ``model.dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is not one of {sorted(DTYPES)}")
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.path), dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    return model.to(device)


def load_policy(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model the learner trains: :func:`load_model` with LoRA adapters (:func:`apply_lora`),
    or with ``model.lora.quantize=4bit`` (QLoRA, Dettmers et al. 2023, arXiv 2305.14314) the base
    weights quantized to NF4 (double quantization) by bitsandbytes, prepared with peft's
    ``prepare_model_for_kbit_training`` (norms and embeddings in float32, base frozen), and
    adapters in float32 on top. Computation runs in ``model.dtype``. The rollout engines keep the
    unquantized base and receive the adapters."""
    if cfg.lora.quantize not in QUANTIZATIONS:
        raise ValueError(f"model.lora.quantize={cfg.lora.quantize!r} is not one of {QUANTIZATIONS}")
    if cfg.lora.quantize == "none":
        return apply_lora(load_model(cfg, device), cfg)
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError(
            "model.lora.quantize=4bit needs bitsandbytes: pip install 'rlft[qlora]' (or bitsandbytes)"
        ) from e
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _quiet_transformers()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[cfg.dtype],
    )
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.path),
        dtype=DTYPES[cfg.dtype],
        quantization_config=quantization,
        device_map={"": str(device)},
        trust_remote_code=cfg.trust_remote_code,
    )
    # Gradient checkpointing is the learner's choice (learner.gradient_checkpointing), not peft's.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for module in model.modules():
        # bitsandbytes repacks CPU weights for inference when a layer in eval mode (as the learner
        # keeps it) gets an input without gradient; that layout cannot be trained through.
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return apply_lora(model, cfg)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (``model`` itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def default_device() -> torch.device:
    """The first GPU Ray (or the user) made visible to this process, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def apply_lora(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """``model`` with peft LoRA adapters (``model.lora``), or unchanged when ``model.lora.rank`` is 0.
    Adapters start as a no-op (B = 0), so learner and rollout engine begin from the same function."""
    if cfg.lora.rank <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of storing them
    (transformers' checkpointing, non-reentrant). Transformers only checkpoints layers in training
    mode, while the learner keeps the model in eval mode (no dropout, so it scores tokens as the
    sampler did); so only the decoder layers themselves are flagged as training, their submodules
    (attention, dropout) stay in eval mode and compute exactly as before."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(
            f"learner.gradient_checkpointing: {type(model).__name__} has no transformers "
            "GradientCheckpointingLayer to checkpoint; set learner.gradient_checkpointing=false"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in layers:
        layer.training = True


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """``torch.compile`` every transformers decoder layer of ``model`` in place (regional
    compilation: the layers share one compiled graph, so compiling costs about one layer's time;
    with gradient checkpointing the recompute runs the compiled layer too). Returns the count."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(
            f"learner.compile: {type(model).__name__} has no transformers decoder layers "
            "(GradientCheckpointingLayer) to compile; set learner.compile=false"
        )
    for layer in layers:
        layer.compile()
    return len(layers)


def load_value_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A critic: the causal LM's backbone at ``model.critic_path`` (default ``model.path``) with a
    fresh scalar head per token (``AutoModelForTokenClassification``, one label)."""
    from transformers import AutoModelForTokenClassification

    _quiet_transformers()
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model_path(cfg.critic_path or cfg.path),
        num_labels=1,
        dtype=DTYPES[cfg.dtype],
        trust_remote_code=cfg.trust_remote_code,
    )
    return model.to(device)


def token_values(
    critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[N, L] critic values aligned with ``input_ids`` like :func:`causal_lm_logprobs`: column t
    holds V of the state before token t is generated (read at position t - 1); column 0 is 0."""
    scores = critic(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()
    return torch.nn.functional.pad(scores[:, :-1], (1, 0))


# --- log-probabilities ----------------------------------------------------------------------------


def causal_lm_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    score_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 0,
    entropy: bool = False,
    compiled: bool = False,
    **forward_kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability (and entropy) of the next-token distribution at the positions ``score_mask``
    selects, aligned with ``input_ids``.

    ``input_ids`` [N, L]; ``score_mask`` [N, L] marks the tokens to score (column 0 has no context
    and is never scored). ``forward_kwargs`` go to the model's forward (``attention_mask``, or
    ``position_ids`` and varlen arguments for packed rows). Returns float32 [N, L] tensors: column
    t holds log p(input_ids[:, t] | input_ids[:, :t]) at the sampling ``temperature`` (softmax of
    logits / temperature) and that distribution's entropy (``None`` unless ``entropy``); 0 at the
    positions not scored (float64 for a float64 model). Both are differentiable.

    ``chunk_tokens`` > 0: the backbone's final hidden states of the scored positions go through
    the LM head ``chunk_tokens`` at a time (:func:`lm_head_logprobs`), so the [tokens, vocab]
    logits never exist at once, in float32 or otherwise; ``compiled`` runs that head's per-chunk
    arithmetic through ``torch.compile``. 0: the model's own forward returns the logits of every
    position and they are reduced in one piece (any model; the reference path).
    """
    scored = score_mask[:, 1:].bool()
    targets = input_ids[:, 1:][scored]
    if chunk_tokens > 0:
        backbone, head = _backbone_and_head(model)
        hidden = _backbone_hidden(model, backbone, input_ids, forward_kwargs)[:, :-1][scored]
        logprobs, entropies = lm_head_logprobs(
            hidden, head, targets, temperature, chunk_tokens, entropy, compiled
        )
    else:
        logits = model(input_ids=input_ids, use_cache=False, **forward_kwargs).logits[:, :-1][scored]
        logprobs, entropies = _logprobs_from_logits(logits, targets, temperature, entropy)
    where = torch.nn.functional.pad(scored, (1, 0))
    zeros = torch.zeros(input_ids.shape, dtype=logprobs.dtype, device=input_ids.device)
    return (
        zeros.masked_scatter(where, logprobs),
        None if entropies is None else zeros.masked_scatter(where, entropies),
    )


def lm_head_logprobs(
    hidden: Tensor,
    head: torch.nn.Module,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 4096,
    entropy: bool = False,
    compiled: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """[T] log p(targets) (and entropy) of ``softmax(head(hidden) / temperature)``, computed
    ``chunk_tokens`` rows of ``hidden`` [T, H] at a time.

    A bias-free ``nn.Linear`` head (every common causal LM, tied or not) takes a fused path
    (:class:`_LinearLogprobs`): only the chunk's logits exist at once, forward or backward, and
    the backward recomputes them and forms the logit gradient in place; ``compiled`` runs each
    chunk's arithmetic through ``torch.compile``. Any other head (e.g. a peft LoRA layer on
    ``lm_head``) runs each chunk under activation checkpointing instead, uncompiled.
    """
    if type(head) is torch.nn.Linear and head.bias is None:
        logprobs, entropies = _LinearLogprobs.apply(
            hidden, head.weight, targets, temperature, chunk_tokens, entropy, compiled
        )
        return logprobs, entropies if entropy else None
    parts = []
    for lo in range(0, len(hidden), chunk_tokens):
        h, t = hidden[lo : lo + chunk_tokens], targets[lo : lo + chunk_tokens]

        def chunk(h: Tensor, t: Tensor = t) -> tuple[Tensor, Tensor | None]:
            return _logprobs_from_logits(head(h), t, temperature, entropy)

        grad = torch.is_grad_enabled() and (
            h.requires_grad or any(p.requires_grad for p in head.parameters())
        )
        parts.append(torch.utils.checkpoint.checkpoint(chunk, h, use_reentrant=False) if grad else chunk(h))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if entropy else None
    logprobs = torch.cat([p[0] for p in parts])
    return logprobs, torch.cat([p[1] for p in parts]) if entropy else None


def _logprobs_from_logits(
    logits: Tensor, targets: Tensor, temperature: float, entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """[T] log-softmax of ``logits`` [T, V] / temperature at ``targets`` (in float32, or float64 for
    float64 logits), and the entropy."""
    z = logits.to(_at_least_float32(logits.dtype))
    logp = torch.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)
    picked = logp.gather(-1, targets[:, None]).squeeze(-1)
    return picked, -(logp.exp() * logp).sum(-1) if entropy else None


def _backbone_hidden(
    model: torch.nn.Module, backbone: torch.nn.Module, input_ids: Tensor, forward_kwargs: dict[str, Any]
) -> Tensor:
    """The backbone's last hidden states [N, L, H]. A model sharded with FSDP2 gathers its
    top-level weights (embeddings, LM head) only in its own forward, so that forward runs (with
    one position's logits) and a hook takes the backbone's output; otherwise the backbone alone."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return backbone(input_ids=input_ids, use_cache=False, **forward_kwargs).last_hidden_state
    captured: list[Tensor] = []
    hook = backbone.register_forward_hook(lambda module, args, out: captured.append(out.last_hidden_state))
    try:
        model(input_ids=input_ids, use_cache=False, logits_to_keep=1, **forward_kwargs)
    finally:
        hook.remove()
    return captured[0]


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and the LM head of a transformers causal LM (peft-wrapped or not)."""
    base = base_model(model)
    for attribute in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(base.config, attribute, None) not in (None, 1, 1.0):
            raise ValueError(
                f"{type(base).__name__} transforms its logits ({attribute}), which the chunked LM "
                "head does not reproduce: set learner.logprob_chunk_tokens=0"
            )
    return base.get_decoder(), base.get_output_embeddings()


class _LinearLogprobs(torch.autograd.Function):
    """log softmax(h W^T / tau)[target] and the entropy, chunk by chunk over the rows of h.

    Forward keeps only the per-row logsumexp and entropy. Backward recomputes each chunk's
    logits z = h W^T / tau, p = softmax(z), and uses (Jacobians of a softmax)
        d logp_t / d z = onehot(t) - p,        d H / d z = -p * (z - E_p[z]),  E_p[z] = lse - H,
    so dL/dz = g_lp * (onehot - p) - g_H * p * (z - E_p[z]), then dL/dh = dL/dz W / tau and
    dL/dW = (dL/dz)^T h / tau (accumulated in float32 over chunks). Matmuls run in the autocast
    dtype when autocast is on (as an autocast nn.Linear would), else in the weight's dtype; the
    softmax arithmetic is in float32.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        temperature: float,
        chunk: int,
        entropy: bool,
        compiled: bool,
    ) -> tuple[Tensor, Tensor]:
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        n = hidden.shape[0]
        lse = torch.empty(n, dtype=_at_least_float32(dtype), device=hidden.device)
        logprobs = torch.empty_like(lse)
        entropies = torch.empty_like(lse) if entropy else lse.new_empty(0)
        stats = _compiled(_chunk_stats) if compiled else _chunk_stats
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            for lo in range(0, n, chunk):
                rows = slice(lo, lo + chunk)
                lse[rows], logprobs[rows], chunk_entropy = stats(
                    hidden[rows], w, targets[rows], dtype, temperature, entropy
                )
                if entropy:
                    entropies[rows] = chunk_entropy
        ctx.save_for_backward(hidden, weight, targets, lse, entropies)
        ctx.temperature, ctx.chunk, ctx.dtype, ctx.compiled = temperature, chunk, dtype, compiled
        ctx.set_materialize_grads(False)
        return logprobs, entropies

    @staticmethod
    def backward(
        ctx: Any, grad_logprobs: Tensor | None, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        hidden, weight, targets, lse, entropies = ctx.saved_tensors
        needs_hidden, needs_weight = ctx.needs_input_grad[:2]
        if (grad_logprobs is None and grad_entropy is None) or not (needs_hidden or needs_weight):
            return None, None, None, None, None, None, None
        tau, chunk, dtype = ctx.temperature, ctx.chunk, ctx.dtype
        n = hidden.shape[0]
        if grad_logprobs is None:
            grad_logprobs = torch.zeros_like(lse)
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=lse.dtype) if needs_weight else None
        logit_grad = _compiled(_chunk_logit_grad) if ctx.compiled else _chunk_logit_grad
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for lo in range(0, n, chunk):
                rows = slice(lo, lo + chunk)
                h = hidden[rows].to(dtype)
                expected_z = None if grad_entropy is None else lse[rows] - entropies[rows]
                g_entropy = None if grad_entropy is None else grad_entropy[rows]
                grad_z = logit_grad(
                    h, w, targets[rows], lse[rows], expected_z, grad_logprobs[rows], g_entropy, dtype, tau
                )
                if needs_hidden:
                    grad_hidden[rows] = (grad_z @ w).to(hidden.dtype)
                if needs_weight:
                    grad_weight += grad_z.t() @ h
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def _chunk_stats(
    hidden: Tensor, weight: Tensor, targets: Tensor, dtype: torch.dtype, temperature: float, entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk's logsumexp of z = hidden W^T / temperature, log p(targets) and (if ``entropy``)
    the entropy H = lse - E_p[z]."""
    z = _chunk_logits(hidden, weight, dtype, temperature)
    lse = torch.logsumexp(z, -1)
    logprobs = z.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not entropy:
        return lse, logprobs, None
    return lse, logprobs, lse - (torch.exp(z - lse[:, None]) * z).sum(-1)


def _chunk_logit_grad(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    lse: Tensor,
    expected_z: Tensor | None,
    grad_logprobs: Tensor,
    grad_entropy: Tensor | None,
    dtype: torch.dtype,
    temperature: float,
) -> Tensor:
    """dL/d(hidden W^T) of one chunk, in ``dtype`` (see :class:`_LinearLogprobs`): the logits are
    recomputed, then g_lp * (onehot - p) - g_H * p * (z - E_p[z]), divided by the temperature."""
    z = _chunk_logits(hidden, weight, dtype, temperature)
    g = grad_logprobs[:, None]
    if grad_entropy is not None:
        g = (z - expected_z[:, None]).mul_(grad_entropy[:, None]).add_(g)
    grad_z = z.sub_(lse[:, None]).exp_().mul_(g).neg_()  # -p * g
    grad_z.scatter_add_(1, targets[:, None], grad_logprobs[:, None])
    if temperature != 1.0:
        grad_z.div_(temperature)
    return grad_z.to(dtype)


@functools.cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile`` of a chunk function, made once: its elementwise work and reductions over
    the vocabulary fuse into a few kernels that read the logits once or twice."""
    return torch.compile(fn, dynamic=True)


def _chunk_logits(hidden: Tensor, weight: Tensor, dtype: torch.dtype, temperature: float) -> Tensor:
    """Logits / temperature of one chunk of rows (at least float32), the matmul in ``dtype``."""
    z = (hidden.to(dtype) @ weight.t()).to(_at_least_float32(dtype))
    return z if temperature == 1.0 else z.div_(temperature)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)
