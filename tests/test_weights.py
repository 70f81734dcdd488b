"""Weight sync: bucketing round trips, and each transport leaving the rollout worker with exactly
the learner's weights and policy version, with real Ray actors (collective over gloo on the CPU,
bucket payloads by value) and in local mode. CUDA IPC proper needs a GPU: that test is skipped
here and runs on the benchmark machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rlft.cli import load_config
from rlft.cluster import Cluster
from rlft.learner.batch import Sample
from rlft.modeling import load_model
from rlft.trainers.online import start_workers
from rlft.weights import (
    CollectiveTransport,
    CudaIpcTransport,
    ObjectStoreTransport,
    Transport,
    copy_into,
    make_transport,
    pack,
    plan_buckets,
    resolve_transport,
    unpack,
)
from rlft.weights.buckets import BucketPacker, StagingBuffer, unique_named_tensors

# --- bucketing -----------------------------------------------------------------------------------


def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.bf16": torch.randn(7, generator=g).bfloat16(),
        "c.i64": torch.randint(-(2**40), 2**40, (4, 2), generator=g),
        "d.f32.big": torch.randn(40, 10, generator=g),  # 1600 bytes: larger than a bucket
        "e.bool": torch.rand(9, generator=g) > 0.5,
        "f.f32.scalar": torch.tensor(3.25),
        "g.f16": torch.randn(2, 3, 4, generator=g).half(),
        "h.f32": torch.randn(25, generator=g),
        "i.bf16": torch.randn(300, generator=g).bfloat16(),
    }


def test_plan_groups_by_dtype_and_respects_bucket_size() -> None:
    tensors = _mixed_tensors()
    plan = plan_buckets(tensors, bucket_bytes=256)
    names = [slot.name for spec in plan for slot in spec.slots]
    assert sorted(names) == sorted(tensors), "every tensor in exactly one bucket"
    for spec in plan:
        assert all(tensors[s.name].dtype == spec.dtype for s in spec.slots)
        assert spec.nbytes <= 256 or len(spec.slots) == 1, "only a lone oversized tensor may overflow"
    big = next(spec for spec in plan if spec.slots[0].name == "d.f32.big")
    assert len(big.slots) == 1 and big.nbytes == 1600
    # dtype groups in order of first appearance
    assert [spec.dtype for spec in plan][:2] == [torch.float32, torch.float32]


def test_plan_boundaries_are_exact() -> None:
    tensors = {f"t{i}": torch.zeros(10) for i in range(6)}  # 40 bytes each
    assert [len(s.slots) for s in plan_buckets(tensors, 120)] == [3, 3], "filling a bucket exactly"
    assert [len(s.slots) for s in plan_buckets(tensors, 119)] == [2, 2, 2]
    assert [len(s.slots) for s in plan_buckets(tensors, 10)] == [1] * 6, "each larger than a bucket"
    with pytest.raises(ValueError, match="positive"):
        plan_buckets(tensors, 0)


@pytest.mark.parametrize("bucket_bytes", [1, 64, 256, 10_000])
def test_pack_unpack_round_trip_is_exact(bucket_bytes: int) -> None:
    tensors = _mixed_tensors()
    plan = plan_buckets(tensors, bucket_bytes)
    staging = StagingBuffer(plan, torch.device("cpu"))
    assert staging.bytes.numel() == max(spec.nbytes for spec in plan)
    received: dict[str, torch.Tensor] = {}
    for spec in plan:  # one staging buffer reused for every bucket, as the transports do
        flat = pack(spec, tensors, out=staging.view(spec))
        assert flat.data_ptr() == staging.bytes.data_ptr() and flat.numel() == spec.numel
        received.update((name, view.clone()) for name, view in unpack(spec, flat))
    assert received.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor), name


def test_unpack_rejects_a_buffer_of_the_wrong_layout() -> None:
    spec = plan_buckets({"x": torch.zeros(4)}, 1024)[0]
    with pytest.raises(ValueError, match="spec says"):
        list(unpack(spec, torch.zeros(5)))
    with pytest.raises(ValueError, match="spec says"):
        list(unpack(spec, torch.zeros(4, dtype=torch.float64)))


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_travel_once_and_land_in_both_names() -> None:
    sender, receiver = _Tied(), _Tied()
    unique = unique_named_tensors(sender)
    assert "embed.weight" in unique and "head.weight" not in unique
    packer = BucketPacker(sender, bucket_bytes=64)
    targets = receiver.state_dict(keep_vars=True)
    nbytes = sum(copy_into(targets, unpack(spec, packer.pack(i))) for i, spec in enumerate(packer.plan))
    assert nbytes == packer.nbytes == sum(t.numel() * t.element_size() for t in unique.values())
    for name, tensor in sender.state_dict().items():
        assert torch.equal(receiver.state_dict()[name], tensor), name
    assert receiver.head.weight.data_ptr() == receiver.embed.weight.data_ptr(), "copied in place"


def test_copy_into_rejects_unknown_names_and_shapes() -> None:
    targets = {"w": torch.zeros(2, 3)}
    with pytest.raises(KeyError, match="no tensor named 'v'"):
        copy_into(targets, [("v", torch.zeros(2, 3))])
    with pytest.raises(ValueError, match=r"\(2, 3\) here but \(3, 2\)"):
        copy_into(targets, [("w", torch.zeros(3, 2))])
    assert copy_into(targets, [("w", torch.ones(2, 3, dtype=torch.float64))]) == 48
    assert torch.equal(targets["w"], torch.ones(2, 3)) and targets["w"].dtype == torch.float32


def test_make_transport() -> None:
    assert isinstance(make_transport("object_store"), ObjectStoreTransport)
    assert isinstance(make_transport("collective", 64), CollectiveTransport)
    assert isinstance(make_transport("collective", 64, local=True), CudaIpcTransport)
    assert make_transport("cuda_ipc", 0.5).bucket_bytes == 512 * 1024
    with pytest.raises(ValueError, match="object_store"):
        make_transport("carrier_pigeon")
    with pytest.raises(ValueError, match="resolve_transport"):
        make_transport("auto")


class _Placed:
    """An actor handle stand-in that reports ``gpu`` as the GPU its weights are on."""

    def __init__(self, gpu: str | None):
        self.weight_sync_device = type("Method", (), {"remote": staticmethod(lambda: gpu)})


@pytest.mark.parametrize(
    ("local", "learner", "workers", "sharded", "expected"),
    [
        (False, "GPU-a", ["GPU-a", "GPU-a"], False, "cuda_ipc"),  # colocated
        (False, "GPU-a", ["GPU-b", "GPU-c"], False, "collective"),  # a GPU each
        (False, "GPU-a", ["GPU-a", "GPU-b"], False, "object_store"),  # neither works for all
        (False, "GPU-a", ["GPU-b", None], False, "object_store"),  # a worker on the CPU
        (False, None, [None], False, "object_store"),  # all on the CPU
        (False, "GPU-a", ["GPU-a"], True, "object_store"),  # fsdp2: rank 0 lacks the other shards
        (True, "GPU-a", ["GPU-a"], False, "cuda_ipc"),  # local mode: buckets handed over in-process
        (True, None, [None], False, "object_store"),
    ],
)
def test_auto_transport_follows_placement(
    local: bool, learner: str | None, workers: list[str | None], sharded: bool, expected: str
) -> None:
    """weights.transport=auto picks by the GPUs the actors report; an explicit name stays."""
    cluster = type("FakeCluster", (), {"local": local, "get": staticmethod(lambda refs: refs)})()
    handles = [_Placed(gpu) for gpu in workers]
    assert resolve_transport("auto", cluster, _Placed(learner), handles, sharded) == expected
    assert resolve_transport("collective", cluster, _Placed(learner), handles, sharded) == "collective"


# --- transports between real workers --------------------------------------------------------------


def _config(tiny_model_dir: Path, *overrides: str) -> Any:
    return load_config(
        [
            "recipe=quickstart",
            f"model.path={tiny_model_dir}",
            "algorithm.beta=0.0",
            "algorithm.group_size=2",
            *overrides,
        ]
    )


def _scramble(cluster: Cluster, worker: Any) -> None:
    """Overwrite the worker's weights with noise, so that a sync has to move every tensor."""
    own = cluster.get(worker.get_weights.remote())
    noise = [(name, torch.rand(t.shape, dtype=t.dtype)) for name, t in own.items()]
    cluster.get(worker.load_named_tensors.remote(noise))


def _train_one_step(cluster: Cluster, learner: Any, worker: Any, cfg: Any) -> None:
    prompt_ids = [[5, 6, 7], [8, 9]]
    groups = cluster.get(worker.generate.remote(prompt_ids, 2, cfg.rollout.sampling, 0))
    samples = [
        Sample(prompt_ids[i], c.token_ids, c.logprobs, r, i, c.policy_version)
        for i, group in enumerate(groups)
        for c, r in zip(group, [1.0, -1.0], strict=True)
    ]
    learner.train_step(samples)  # a LearnerGroup (start_workers)


def _assert_synced(cluster: Cluster, learner: Any, worker: Any, cfg: Any, metrics: dict[str, float]) -> None:
    """Rollout weights == learner weights, bytes counted, and the engine stamps the learner's version."""
    update = cluster.get(learner.get_weights.remote())
    rollout = cluster.get(worker.get_weights.remote())
    assert update.tensors.keys() == unique_named_tensors(load_model(cfg.model)).keys(), "tied ones once"
    for name, tensor in update.tensors.items():
        assert torch.equal(rollout[name], tensor), name
    assert metrics["weight_sync/bytes"] == _unique_bytes(cfg)
    assert metrics["timing/weight_sync_s"] > 0
    groups = cluster.get(worker.generate.remote([[5, 6]], 2, cfg.rollout.sampling, 1))
    assert {c.policy_version for g in groups for c in g} == {update.version}


def _unique_bytes(cfg: Any) -> int:
    """Bytes of one copy of the model's weights, tied ones counted once."""
    tensors = unique_named_tensors(load_model(cfg.model))
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _check_transport(cluster: Cluster, learner: Any, worker: Any, cfg: Any, transport: Transport) -> None:
    """Sync twice: onto scrambled weights, then after a training step (the version advances)."""
    version = cluster.get(learner.get_weights.remote()).version
    _scramble(cluster, worker)
    _assert_synced(cluster, learner, worker, cfg, transport.sync(cluster, learner, [worker]))
    _train_one_step(cluster, learner, worker, cfg)
    _scramble(cluster, worker)
    _assert_synced(cluster, learner, worker, cfg, transport.sync(cluster, learner, [worker]))
    assert cluster.get(learner.get_weights.remote()).version == version + 1


class TestRayActors:
    """A local 2-CPU Ray with one learner and one rollout worker (half a CPU each), on the CPU even
    where a GPU exists (so the collective runs over gloo); stopped after this class's tests."""

    @pytest.fixture(scope="class")
    def ray_workers(self, tiny_model_dir: Path) -> Iterator[tuple[Cluster, Any, Any, Any]]:
        cfg = _config(
            tiny_model_dir,
            "cluster.num_cpus=2",
            "learner.num_cpus_per_worker=0.5",
            "rollout.num_cpus_per_worker=0.5",
        )
        with pytest.MonkeyPatch.context() as env:
            env.setenv("CUDA_VISIBLE_DEVICES", "")  # inherited by the Ray started here
            with Cluster(cfg.cluster) as cluster:
                learner, workers = start_workers(cluster, cfg)
                yield cluster, learner, workers[0], cfg

    def test_collective_sync_over_gloo(self, ray_workers) -> None:
        cluster, learner, worker, cfg = ray_workers
        assert not cluster.local
        transport = make_transport("collective", bucket_mb=0.05)  # several buckets for the tiny model
        _check_transport(cluster, learner, worker, cfg, transport)

    def test_bucket_payloads_by_value(self, ray_workers) -> None:
        """The CUDA IPC transport's protocol with the learner on the CPU: buckets travel by value."""
        cluster, learner, worker, cfg = ray_workers
        _check_transport(cluster, learner, worker, cfg, CudaIpcTransport(bucket_mb=0.05))


def test_bucket_sync_in_local_mode(tiny_model_dir: Path) -> None:
    cfg = _config(tiny_model_dir, "cluster.mode=local")
    with Cluster(cfg.cluster) as cluster:
        learner, workers = start_workers(cluster, cfg)
        transport = make_transport("collective", bucket_mb=0.05, local=True)
        _check_transport(cluster, learner, workers[0], cfg, transport)
        with pytest.raises(ValueError, match=r"cluster\.mode=ray"):
            CollectiveTransport().sync(cluster, learner, workers)
        _check_transport(cluster, learner, workers[0], cfg, make_transport("object_store", bucket_mb=0.05))


def test_weight_update_survives_serialisation_read_only() -> None:
    """A WeightUpdate's buckets are byte arrays that Ray stores without a pickle copy; after a
    pickle round trip, even read-only (as Ray's object store hands them out), every tensor comes
    back bit-exact in its own dtype, bfloat16 included, without a warning."""
    import pickle
    import warnings

    from rlft.weights import WeightUpdate

    tensors = _mixed_tensors()
    update = pickle.loads(pickle.dumps(WeightUpdate.pack(tensors, version=3, bucket_bytes=64)))
    assert len(update.buckets) > 1 and update.version == 3
    for data in update.buckets:
        data.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = update.tensors
    assert update.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert got.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def test_object_store_update_is_bucketed(tiny_model_dir: Path) -> None:
    cfg = _config(tiny_model_dir, "cluster.mode=local")
    with Cluster(cfg.cluster) as cluster:
        learner, _ = start_workers(cluster, cfg)
        update = cluster.get(learner.get_weights.remote(int(0.05 * 2**20)))
    assert len(update.plan) == len(update.buckets) > 1
    assert all(spec.nbytes <= 0.05 * 2**20 or len(spec.slots) == 1 for spec in update.plan)
    assert update.nbytes == _unique_bytes(cfg)


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_lora_sync_sends_only_adapters(tiny_model_dir: Path, transport: str) -> None:
    """With LoRA every transport moves the adapters alone (bytes = adapter bytes), and afterwards
    the engine's sampler log-probs equal the learner's for the same tokens."""
    cfg = _config(tiny_model_dir, "cluster.mode=local", "model.lora.rank=4", "model.lora.alpha=64")
    with Cluster(cfg.cluster) as cluster:
        learner, workers = start_workers(cluster, cfg)
        worker = workers[0]
        sync = make_transport(transport, bucket_mb=0.01, local=True)
        own = cluster.get(worker.get_weights.remote())  # noise in the engine's adapters only
        noise = [(k, torch.randn(t.shape, dtype=t.dtype)) for k, t in own.items() if "lora_" in k]
        cluster.get(worker.load_named_tensors.remote(noise))
        rollout_before = {k: t.clone() for k, t in cluster.get(worker.get_weights.remote()).items()}
        metrics = sync.sync(cluster, learner, [worker])
        update = cluster.get(learner.get_weights.remote())
        rollout = cluster.get(worker.get_weights.remote())
        groups = cluster.get(worker.generate.remote([[5, 6, 7]], 4, cfg.rollout.sampling, 3))
        samples = [Sample([5, 6, 7], c.token_ids, c.logprobs, 0.0, 0, c.policy_version) for c in groups[0]]
        learner_logprobs = cluster.get(learner.completion_logprobs.remote(samples))
    assert update.tensors and all("lora_" in name for name in update.tensors)
    adapter_bytes = sum(t.numel() * t.element_size() for t in update.tensors.values())
    assert metrics["weight_sync/bytes"] == adapter_bytes == update.nbytes
    assert adapter_bytes < 0.25 * _unique_bytes(cfg)
    assert all(not torch.equal(rollout_before[k], t) for k, t in update.tensors.items())
    for name, tensor in update.tensors.items():
        assert torch.equal(rollout[name], tensor), name
    diffs = [
        abs(a - b)
        for s, lp in zip(samples, learner_logprobs, strict=True)
        for a, b in zip(s.sampler_logprobs, lp, strict=True)
    ]
    assert diffs and max(diffs) < 1e-4, max(diffs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC needs a GPU")
def test_cuda_ipc_sync_on_one_gpu(tiny_model_dir: Path) -> None:
    """Learner and rollout worker share one GPU (half each); weights move by IPC handle."""
    cfg = _config(
        tiny_model_dir,
        "cluster.num_cpus=2",
        "learner.num_cpus_per_worker=0.5",
        "rollout.num_cpus_per_worker=0.5",
        "learner.num_gpus_per_worker=0.5",
        "rollout.num_gpus_per_worker=0.5",
    )
    with Cluster(cfg.cluster) as cluster:
        learner, workers = start_workers(cluster, cfg)
        _check_transport(cluster, learner, workers[0], cfg, CudaIpcTransport(bucket_mb=0.05))
