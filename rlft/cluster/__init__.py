"""Starting workers: as Ray actors (``cluster.mode=ray``) or in this process (``cluster.mode=local``).

Both modes hand back handles with the same call shape, ``handle.method.remote(*args)``, and
``Cluster.get`` resolves what those calls return, so the trainer loop is the same code in both.
In local mode everything runs synchronously in the driver, where pdb works.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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

    def spawn(self, cls: type, *args: Any, num_cpus: float = 1, num_gpus: float = 0, **kwargs: Any) -> Any:
        """Start ``cls(*args, **kwargs)`` as a Ray actor with these resources, or in-process."""
        if self.local:
            return LocalActor(cls(*args, **kwargs))
        import ray

        actor = ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus)
        return actor.remote(*args, **kwargs)

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
