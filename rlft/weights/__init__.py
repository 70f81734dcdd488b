"""Moving the learner's weights to the rollout workers.

A transport knows handles and tensors, nothing about losses. Today: the Ray object store
(works everywhere); NCCL broadcast and CUDA IPC come with the vLLM issue.
"""

from rlft.weights.object_store import ObjectStoreTransport, WeightUpdate

__all__ = ["ObjectStoreTransport", "WeightUpdate"]
