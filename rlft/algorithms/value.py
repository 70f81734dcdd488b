"""The critic's loss for PPO with a value model."""

import torch
from torch import Tensor


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float
) -> Tensor:
    """Clipped value loss, per token: ½ max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²).

    OpenAI baselines' PPO2 (`ppo2/model.py`), item 9 "Value Function Loss Clipping" of Huang et
    al. 2022, "The 37 Implementation Details of Proximal Policy Optimization" (ICLR blog track):
    the new value V may move at most ε = `clip` away from the value V_old that computed the
    returns R, mirroring the policy's clipped ratio. 0 outside the mask.
    """
    mask = mask.bool()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return torch.where(mask, loss, 0.0)
