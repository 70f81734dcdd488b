"""Starting workers: as Ray actors (``cluster.mode=ray``) or in this process (``cluster.mode=local``).

Both modes hand back handles with the same call shape, ``handle.method.remote(*args)``, and
``Cluster.get`` resolves what those calls return, so the trainer loop is the same code in both.
In local mode everything runs synchronously in the driver, where pdb works.

Beyond that, a :class:`Cluster` hands work out to several actors as each becomes free
(:meth:`Cluster.pull_map`), places learners and rollout workers on shared devices
(:meth:`Cluster.colocate`), and kills every actor it started (:meth:`Cluster.kill_all`) so that a
run can start them afresh after one died (:attr:`Cluster.actor_died`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rlft.config import ClusterConfig

MODES = ("ray", "local")


class _LocalMethod:
    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


class LocalActor:
    """An object behind the ``.method.remote()`` call shape of a Ray actor handle."""

    def __init__(self, obj: Any):
        self._obj = obj

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._obj, name))


class Cluster:
    """Where workers run. Use as a context manager: Ray is shut down on exit if we started it."""

    def __init__(self, cfg: ClusterConfig):
        if cfg.mode not in MODES:
            raise ValueError(f"cluster.mode={cfg.mode!r} is not one of {MODES}")
        self.cfg = cfg
        self.local = cfg.mode == "local"
        self._started_ray = False
        self._actors: list[Any] = []
        self._placement: Any = None
        self._colocated: dict[type, int] = {}
        """Colocation: class -> how many actors of it were placed so far (the next one's bundle)."""

    def __enter__(self) -> Cluster:
        if not self.local:
            import ray

            if not ray.is_initialized():
                ray.init(
                    address=self.cfg.address or None,
                    num_cpus=None if self.cfg.address else self.cfg.num_cpus,
                    include_dashboard=False,
                    configure_logging=False,
                    runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
                )
                self._started_ray = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()

    @property
    def actor_died(self) -> tuple[type[BaseException], ...]:
        """The exceptions that mean an actor died (``except cluster.actor_died:``); none in local mode."""
        if self.local:
            return ()
        from ray.exceptions import RayActorError

        return (RayActorError,)

    @contextlib.contextmanager
    def constructor_errors(self, error: type[Exception]) -> Iterator[None]:
        """In the block, an actor whose constructor raised ends it with ``error`` and a one-line
        message (:func:`constructor_error`) instead of Ray's error and traceback."""
        try:
            yield
        except self.actor_died as err:
            if (message := constructor_error(err)) is None:
                raise
            raise error(message) from err

    def spawn(self, cls: type, *args: Any, num_cpus: float = 1, num_gpus: float = 0, **kwargs: Any) -> Any:
        """Start ``cls(*args, **kwargs)`` as a Ray actor with these resources, or in-process.

        After :meth:`colocate`, the n-th actor of each colocated class goes into bundle n."""
        if self.local:
            return LocalActor(cls(*args, **kwargs))
        import ray

        options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if cls in self._colocated:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = self._colocated[cls]
            self._colocated[cls] += 1
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self._placement, placement_group_bundle_index=bundle
            )
        actor = ray.remote(cls).options(**options).remote(*args, **kwargs)
        self._actors.append(actor)
        return actor

    def colocate(self, classes: Sequence[type], num_bundles: int, num_cpus: float, num_gpus: float) -> None:
        """Reserve ``num_bundles`` bundles of ``num_cpus`` CPUs and ``num_gpus`` GPUs (one per device
        set, packed on as few nodes as possible); from now on the n-th actor spawned of each of
        ``classes`` is placed in bundle n, so actors of different classes share its devices (each
        asks for a fraction of them). No-op in local mode, where everything shares the process."""
        if self.local:
            return
        import ray
        from ray.util.placement_group import placement_group

        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
        self._placement = placement_group([bundle] * num_bundles, strategy="PACK")
        ray.get(self._placement.ready(), timeout=300)
        self._colocated = {cls: 0 for cls in classes}

    def kill_all(self) -> None:
        """Kill every actor this cluster started (and free their placement), e.g. after one died."""
        if self.local:
            return
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._placement is not None:
            remove_placement_group(self._placement)
        self._placement, self._colocated = None, {}

    def total_resources(self) -> dict[str, float] | None:
        """The CPUs, GPUs, ... of the Ray instance this process started (``cluster.address`` empty);
        None in local mode or on a cluster joined by address, which may add nodes on demand."""
        if self.local or self.cfg.address:
            return None
        import ray

        return ray.cluster_resources()

    def threads(self, num_cpus: float) -> int:
        """Torch threads for a Ray actor granted ``num_cpus`` (at least 1, at most this machine's
        cores); 0 = leave the thread count alone, in local mode where all workers share a process."""
        return 0 if self.local else max(1, min(int(num_cpus), os.cpu_count() or 1))

    def get(self, refs: Any) -> Any:
        """The value(s) behind what ``handle.method.remote()`` returned."""
        if self.local:
            return refs
        import ray

        return ray.get(refs)

    def pull_map(
        self, handles: Sequence[Any], call: Callable[[Any, Any], Any], items: Sequence[Any]
    ) -> list[Any]:
        """``call(handle, item)`` for every item, each handed to whichever handle is free first
        (one call in flight per handle; the next item goes to the first to finish, found with
        ``ray.wait``); the results come back in item order. In local mode, one after another."""
        if self.local:
            return [call(handles[i % len(handles)], item) for i, item in enumerate(items)]
        import ray

        results: list[Any] = [None] * len(items)
        in_flight: dict[Any, tuple[int, Any]] = {}  # ref -> (item index, handle)
        upcoming = iter(enumerate(items))
        free = list(handles)
        while True:
            for handle in free:
                if (nxt := next(upcoming, None)) is not None:
                    in_flight[call(handle, nxt[1])] = (nxt[0], handle)
            if not in_flight:
                return results
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            index, handle = in_flight.pop(done)
            results[index] = ray.get(done)
            free = [handle]


def constructor_error(err: BaseException) -> str | None:
    """If ``err`` (one of :attr:`Cluster.actor_died`) says an actor died because its constructor
    raised, a one-line message naming the actor and that error; else None. Such an actor is not
    restarted: it would raise again (a bad config value, a model that cannot load)."""
    if not getattr(err, "actor_init_failed", False):
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    actor = re.search(r"ray::(\w+)\.__init__", text)
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    tail = lines[frames[-1] + 1 :] if frames else lines[-1:]
    error = " ".join(line.strip() for line in tail if line and not line.startswith(" "))
    return (
        f"the {actor.group(1) if actor else 'an'} actor could not start, so it is not restarted: "
        f"{error or text}"
    )
