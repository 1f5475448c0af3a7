"""What every family's network shares: the weight-init walk, and the residual block's part in it.

As in timm's ``resnet.py``, one walk over the modules gives convolutions He init and norms unit gain,
then each :class:`ResidualBlock` initialises its own last norm. That norm starts at 1/sqrt(blocks)
rather than timm's zero, so a random model still computes something that depends on its input, and
its activations stay bounded at any depth: with unit gains preact-resnet-164's random logits reach
4e7 (a one-hot softmax that makes export's random-weight verification meaningless) and resnet1202's
overflow float32 in eval mode; scaled, preact-resnet-164's stay below 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

#: Which fan He init preserves: timm and torchvision use fan_out for ResNets, torchvision fan_in for DenseNet.
ConvFan = Literal["fan_in", "fan_out"]


def check_shape(num_classes: int, layers: Sequence[int] = (), widths: Sequence[int] = ()) -> None:
    """Refuse, before any layer is built, a head without classes or stage depths without a width each."""
    if len(layers) != len(widths):
        raise ValueError(f"{len(layers)} stage depths for {len(widths)} stage widths")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")


class ResidualBlock(nn.Module):
    """A block whose residual branch ends in a norm (``last_norm``), which it scales for :func:`init_weights`."""

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        raise NotImplementedError(f"{type(self).__name__} does not name its last norm")

    def scale_last_norm(self, gain: float) -> None:
        nn.init.constant_(self.last_norm.weight, gain)


def init_weights(model: nn.Module, *, conv_fan: ConvFan = "fan_out") -> None:
    """He-normal convolutions with zero bias, unit norms, each residual branch's last norm at 1/sqrt(blocks).

    A usable random model for tests and benchmarks; a checkpoint overwrites all of it. Linear heads
    keep PyTorch's default init unless the family zeroes their bias itself.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=conv_fan, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    blocks = [module for module in model.modules() if isinstance(module, ResidualBlock)]
    for block in blocks:
        block.scale_last_norm(1.0 / len(blocks) ** 0.5)
