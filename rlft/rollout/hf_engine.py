"""Generation with transformers models, without vLLM: runs anywhere.

Two decoders, picked by ``rollout.hf.decode``:

- ``static``: rlft's own sampling loop over a preallocated KV cache. Every prompt row is
  left-padded to one width, so all rows write the same cache slot at each step and a decode step
  has fixed shapes; on a GPU that step (the whole transformer forward, hundreds of small kernels
  at rollout batch sizes) is captured once as a CUDA graph and replayed, which removes the
  per-kernel launch overhead that dominates ``generate`` at these sizes. Sampling stays outside
  the graph; nothing in the loop waits for the GPU except an "all finished?" check every
  ``_DONE_CHECK_EVERY`` steps.
- ``generate``: transformers ``generate`` (any model it supports).

Both return, per token, its log-probability under the distribution it was sampled from: at the
sampling temperature and, with top-k / top-p, renormalised over the kept tokens (as vLLM's
``processed_logprobs``). Without truncation that is log_softmax(logits / temperature) over the full
vocabulary, the quantity the learner recomputes.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from rlft.config import HFEngineConfig, ModelConfig, SamplingConfig
from rlft.modeling import apply_lora, base_model, default_device, load_model, load_tokenizer
from rlft.rollout.engine import Completion, cut_at_stop
from rlft.weights.buckets import copy_into

STATIC_MODEL_TYPES = ("llama", "qwen2", "qwen3")
"""Model types ``decode=auto`` runs with the static decoder (their forward takes a ready 4D mask
and positions, and calls the cache only through ``update``)."""

_CACHE_LEN_MULTIPLE = 64
"""KV-cache lengths are rounded up to this, so prompts of nearby widths share one captured graph."""
_MAX_GRAPHS = 4
"""Captured decode graphs kept (one per batch size and cache length); the oldest is dropped."""
_DONE_CHECK_EVERY = 16
"""Decode steps between the checks (one GPU sync each) for "every row finished"."""


class HFEngine:
    """A causal LM sampled with rlft's static-cache decoder or with ``model.generate``."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        max_prompts_per_generate: int = 64,
        hf_cfg: HFEngineConfig | None = None,
    ):
        hf_cfg = hf_cfg or HFEngineConfig()
        self.device = default_device()
        self.tokenizer = load_tokenizer(model_cfg)
        # With LoRA the engine carries the same (unmerged) adapters and receives only their weights.
        self.model = apply_lora(load_model(model_cfg, self.device), model_cfg).eval()
        self.max_prompts_per_generate = max_prompts_per_generate
        self.decode = _resolve_decode(hf_cfg.decode, self.model)
        self._static = (
            StaticDecoder(
                self.model,
                self.tokenizer.pad_token_id,
                self.tokenizer.eos_token_id,
                cuda_graph=hf_cfg.cuda_graph and self.device.type == "cuda",
                compile=hf_cfg.compile and self.device.type == "cuda",
            )
            if self.decode == "static"
            else None
        )

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int
    ) -> list[list[Completion]]:
        # A private RNG stream: in local mode the learner shares this process's global RNG.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            out: list[list[Completion]] = []
            for start in range(0, len(prompts), self.max_prompts_per_generate):
                chunk = prompts[start : start + self.max_prompts_per_generate]
                if self._static is not None:
                    rows = [p for p in chunk for _ in range(n)]
                    tokens, logprobs = self._static.sample(rows, sampling)
                else:
                    tokens, logprobs = self._generate_hf(chunk, n, sampling)
                completions = [
                    self._completion(t, lp, sampling.stop)
                    for t, lp in zip(tokens.tolist(), logprobs.tolist(), strict=True)
                ]
                out += [completions[i * n : (i + 1) * n] for i in range(len(chunk))]
        return out

    def _generate_hf(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[len(prompts) * n, T] tokens and logprobs from transformers ``generate``."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        config = GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            eos_token_id=eos,
            pad_token_id=pad,
            output_scores=True,  # the processed scores: tempered, top-k / top-p tokens kept
            return_dict_in_generate=True,
        )
        result = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
        tokens = result.sequences[:, width:]
        scores = torch.stack(result.scores, dim=1).float()  # -inf outside the kept tokens
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        return tokens, logprobs

    def _completion(self, tokens: list[int], logprobs: list[float], stop: list[str]) -> Completion:
        eos = self.tokenizer.eos_token_id
        if eos in tokens:
            end = tokens.index(eos) + 1
            tokens, logprobs, reason = tokens[:end], logprobs[:end], "stop"
        else:
            reason = "length"
        text = self._decode(tokens)
        if any(s in text for s in stop):
            # Generation ran on past the stop string: keep the tokens up to the one completing it
            # and the text up to the end of the first stop string.
            end = next(
                k for k in range(1, len(tokens) + 1) if any(s in self._decode(tokens[:k]) for s in stop)
            )
            tokens, logprobs, reason = tokens[:end], logprobs[:end], "stop"
            text = cut_at_stop(self._decode(tokens), stop)
        return Completion(token_ids=tokens, logprobs=logprobs, text=text, finish_reason=reason)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.load_named_tensors(weights.items())

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def sleep(self, level: int = 1) -> None:
        """Nothing to release: transformers' generate keeps no cache between calls."""

    def wake_up(self) -> None:
        """Nothing to take back (see :meth:`sleep`)."""

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy each ``(name, tensor)`` into the model's state-dict entry of that name, in place
        (``param.copy_``, no reload; captured graphs keep reading the same memory); returns the
        bytes copied. Tied weights need one name only."""
        return copy_into(self._state_by_name, tensors)

    def finish_update(self) -> None:
        """Nothing to close: the model computes with the tensors as they were copied in."""

    @functools.cached_property
    def _state_by_name(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict(keep_vars=True)


def _resolve_decode(decode: str, model: torch.nn.Module) -> str:
    """``auto`` -> ``static`` for the model types known to work with it, else ``generate``."""
    config = model.config
    full_attention = set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    supported = full_attention and not config.is_encoder_decoder
    if decode == "auto":
        return "static" if supported and config.model_type in STATIC_MODEL_TYPES else "generate"
    if decode == "static" and not supported:
        raise ValueError(
            f"rollout.hf.decode=static needs a decoder-only model with full attention in every layer; "
            f"{config.model_type!r} has layer types {sorted(set(config.layer_types))}: "
            "use rollout.hf.decode=generate"
        )
    return decode


class _StaticKVCache:
    """Per-layer key/value tensors of a fixed [B, H_kv, L, D] shape, allocated at the first write.

    Duck-types the part of transformers' ``Cache`` that attention layers call: ``update`` writes
    this forward's keys and values at the cache slots ``slots`` and returns the whole cache (the
    attention mask hides slots not written yet).
    """

    def __init__(self, length: int):
        self.length = length
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = torch.zeros(0, dtype=torch.long)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(key.new_zeros(*key.shape[:2], self.length, key.shape[3]))
            self.values.append(value.new_zeros(*value.shape[:2], self.length, value.shape[3]))
        self.keys[layer_idx].index_copy_(2, self.slots, key)
        self.values[layer_idx].index_copy_(2, self.slots, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Only used by models to derive positions/masks, which the decoder always passes."""
        return 0


@dataclass
class _DecodeState:
    """Buffers of one (batch size, cache length): a decode step reads ``token``, ``position`` and
    ``slot`` and writes the next-token logits; a CUDA graph, once captured, replays that step."""

    cache: _StaticKVCache
    mask: torch.Tensor
    """[B, 1, 1, L] bool: which cache slots each row attends to."""
    token: torch.Tensor
    """[B, 1] the token fed at this step."""
    position: torch.Tensor
    """[B, 1] its position id (prompt length + tokens generated before it)."""
    slot: torch.Tensor
    """[1] the cache slot it is written to (the same for every row: prompts are left-padded)."""
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None
    """The captured step's output buffer."""


class StaticDecoder:
    """Samples completions token by token over a static KV cache (see the module docstring).

    Rows are left-padded prompts; position ids count real tokens only, so every row's positions
    are those of the same sequence without padding (the learner's view). Tokens after a row's EOS
    are ``pad`` with logprob 0.
    """

    def __init__(self, model: torch.nn.Module, pad: int, eos: int, cuda_graph: bool, compile: bool = False):
        # peft wraps the transformers model; its LoRA layers live inside the inner model.
        self.model = base_model(model)
        self.pad, self.eos = pad, eos
        self.cuda_graph = cuda_graph
        # Compiled once per (batch, cache length): those are the shapes a decode step can have.
        self._decode = torch.compile(self._decode_step, dynamic=False) if compile else self._decode_step
        self._states: OrderedDict[tuple[int, int], _DecodeState] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if cuda_graph else None

    @torch.no_grad()
    def sample(self, rows: list[list[int]], sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """[len(rows), max_new_tokens] sampled tokens and their logprobs."""
        device = self.model.device
        width, new = max(map(len, rows)), sampling.max_new_tokens
        length = -(-(width + new) // _CACHE_LEN_MULTIPLE) * _CACHE_LEN_MULTIPLE
        state = self._state(len(rows), length, device)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows], device=device)
        valid = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows], device=device)

        logits = self._prefill(state, ids, valid)
        tokens = torch.full((len(rows), new), self.pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((len(rows), new), dtype=torch.float32, device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        state.position.copy_(valid.sum(-1, keepdim=True))
        state.slot.fill_(width)
        for t in range(new):
            if t > 0:
                logits = self._step(state)
                state.position.add_(1)
                state.slot.add_(1)
            token, logprob = sample_next(logits, sampling)
            token = token.masked_fill(done, self.pad)
            tokens[:, t] = token
            logprobs[:, t] = logprob.masked_fill(done, 0.0)
            done |= token == self.eos
            state.token.copy_(token[:, None])
            if t % _DONE_CHECK_EVERY == _DONE_CHECK_EVERY - 1 and bool(done.all()):
                break
        return tokens.cpu(), logprobs.cpu()

    def _state(self, batch: int, length: int, device: torch.device) -> _DecodeState:
        key = (batch, length)
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key]
        while len(self._states) >= _MAX_GRAPHS:
            self._states.popitem(last=False)
        state = _DecodeState(
            cache=_StaticKVCache(length),
            mask=torch.zeros((batch, 1, 1, length), dtype=torch.bool, device=device),
            token=torch.zeros((batch, 1), dtype=torch.long, device=device),
            position=torch.zeros((batch, 1), dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device),
        )
        self._states[key] = state
        return state

    def _prefill(self, state: _DecodeState, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Run the prompts through the model, filling cache slots [0, width); next-token logits [B, V]."""
        width, length = ids.shape[1], state.cache.length
        causal = torch.ones((width, width), dtype=torch.bool, device=ids.device).tril()
        # Padding queries attend to themselves only: no fully masked row (NaN) reaches the cache.
        attend = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        mask = torch.zeros((len(ids), 1, width, length), dtype=torch.bool, device=ids.device)
        mask[:, 0, :, :width] = attend
        state.mask.zero_()
        state.mask[:, 0, 0, :width] = valid
        state.cache.slots = torch.arange(width, device=ids.device)
        positions = (valid.cumsum(-1) - 1).clamp_min(0)
        out = self._forward(ids, mask, positions, state.cache, logits_to_keep=1)
        state.cache.slots = state.slot
        return out[:, -1].float()

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: _StaticKVCache,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        return self.model(
            input_ids=ids,
            attention_mask=mask,  # a ready 4D mask: transformers uses it as is
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        ).logits

    def _decode_step(self, state: _DecodeState) -> torch.Tensor:
        state.mask.index_fill_(-1, state.slot, True)
        return self._forward(state.token, state.mask, state.position, state.cache)

    def _step(self, state: _DecodeState) -> torch.Tensor:
        """Next-token logits [B, V] (float32) of the tokens in ``state.token``."""
        if not self.cuda_graph:
            return self._decode(state)[:, -1].float()
        if state.graph is None:
            self._capture(state)
        state.graph.replay()
        return state.logits[:, -1].float()

    def _capture(self, state: _DecodeState) -> None:
        """Record one decode step as a CUDA graph. The step is idempotent for fixed inputs (it
        rewrites the same cache slot and mask bit), so the warm-up runs before capture are harmless."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._decode(state)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            state.logits = self._decode(state)
        state.graph = graph


def sample_next(logits: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from [B, V] float32 ``logits``, and its log-probability.

    The token is drawn from q = softmax(logits / temperature) restricted to the top-k tokens and
    then to the smallest set whose probability reaches top-p (nucleus sampling, Holtzman et al.
    2020), renormalised over the kept tokens; the returned log-probability is log q(token), that
    of the distribution sampled from (vLLM's ``processed_logprobs``). Without top-k / top-p it is
    log_softmax(logits / temperature) over the full vocabulary, the value the learner recomputes.
    The draw is an exponential race, argmax_i q_i / E_i with E_i ~ Exp(1), which picks i with
    probability q_i and never waits for the GPU.
    """
    scaled = logits if sampling.temperature == 1.0 else logits / sampling.temperature
    logq = torch.log_softmax(_top_k_top_p(scaled, sampling.top_k, sampling.top_p), dim=-1)
    race = torch.empty_like(logq).exponential_().clamp_min_(1e-20)
    token = (logq.exp() / race).argmax(-1)
    return token, logq.gather(-1, token[:, None]).squeeze(-1)


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the top-k / top-p set at -inf (the top token always stays)."""
    if top_k <= 0 and top_p >= 1.0:
        return logits
    ordered, order = logits.sort(-1, descending=True)
    if 0 < top_k < logits.shape[-1]:
        ordered[:, top_k:] = -float("inf")
    if top_p < 1.0:
        probs = ordered.softmax(-1)
        ordered = ordered.masked_fill(probs.cumsum(-1) - probs > top_p, -float("inf"))
    return torch.full_like(logits, -float("inf")).scatter(-1, order, ordered)
