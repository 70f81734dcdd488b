"""Generation with transformers' ``generate``: runs anywhere, the fallback to vLLM."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from transformers import GenerationConfig

from rlft.config import ModelConfig, SamplingConfig
from rlft.modeling import apply_lora, default_device, load_model, load_tokenizer
from rlft.rollout.engine import Completion
from rlft.weights.buckets import copy_into


class HFEngine:
    """A causal LM sampled with ``model.generate`` over left-padded prompt batches."""

    def __init__(self, model_cfg: ModelConfig, max_prompts_per_generate: int = 64):
        self.device = default_device()
        self.tokenizer = load_tokenizer(model_cfg)
        # With LoRA the engine carries the same (unmerged) adapters and receives only their weights.
        self.model = apply_lora(load_model(model_cfg, self.device), model_cfg).eval()
        self.max_prompts_per_generate = max_prompts_per_generate

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int
    ) -> list[list[Completion]]:
        # A private RNG stream: in local mode the learner shares this process's global RNG.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            out: list[list[Completion]] = []
            for start in range(0, len(prompts), self.max_prompts_per_generate):
                out += self._generate_chunk(
                    prompts[start : start + self.max_prompts_per_generate], n, sampling
                )
        return out

    def _generate_chunk(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig
    ) -> list[list[Completion]]:
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
            output_logits=True,
            return_dict_in_generate=True,
        )
        result = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
        tokens = result.sequences[:, width:]
        logits = torch.stack(result.logits, dim=1).float() / sampling.temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        completions = [
            self._completion(t.tolist(), lp.tolist(), eos) for t, lp in zip(tokens, logprobs, strict=True)
        ]
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _completion(self, tokens: list[int], logprobs: list[float], eos: int) -> Completion:
        if eos in tokens:
            end = tokens.index(eos) + 1
            tokens, logprobs, reason = tokens[:end], logprobs[:end], "stop"
        else:
            reason = "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(token_ids=tokens, logprobs=logprobs, text=text, finish_reason=reason)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.load_named_tensors(weights.items())

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy each ``(name, tensor)`` into the model's state-dict entry of that name, in place
        (``param.copy_``, no reload); returns the bytes copied. Tied weights need one name only."""
        return copy_into(self._state_by_name, tensors)

    @functools.cached_property
    def _state_by_name(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict(keep_vars=True)
