"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks"), torchvision layout.

Keys equal torchvision's ``DenseNet``: ``features.{conv0, norm0, denseblockB.denselayerL.{norm1,
conv1, norm2, conv2}, transitionT.{norm, conv}, norm5}`` and ``classifier``. Each layer sees the
concatenation of every earlier feature map in its block (BN-ReLU-1x1 to ``bn_size * growth_rate``,
BN-ReLU-3x3 to ``growth_rate``); transitions halve channels and resolution.

torchvision's published files predate its current names (``norm.1`` for ``norm1`` ...):
:func:`rename_legacy_keys` is this family's key adapter, which the checkpoint loader applies.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import check_shape, init_weights

#: ``...denselayer3.norm.1.weight`` -> ``...denselayer3.norm1.weight`` (the 2017 files' names).
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)


def rename_legacy_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict with the old dotted layer names joined, as torchvision does when it loads them."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _LEGACY_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (bottleneck) then BN-ReLU-3x3; returns only the ``growth_rate`` new channels."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` layers (``denselayer1..``), each fed every feature map before it; returns them all."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        for index in range(num_layers):
            layer = DenseLayer(in_channels + index * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{index + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 (halving channels) and a 2x2 average pool (halving resolution)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(in_channels),
                relu=nn.ReLU(inplace=True),
                conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                pool=nn.AvgPool2d(kernel_size=2, stride=2),
            )
        )


class DenseNet(nn.Module):
    """DenseNet-BC: 7x7 stem, dense blocks of ``block_config`` layers joined by transitions, linear head."""

    def __init__(
        self,
        *,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        bn_size: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        check_shape(num_classes)
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(num_init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        channels = num_init_features
        for index, num_layers in enumerate(block_config):
            self.features.add_module(
                f"denseblock{index + 1}", DenseBlock(num_layers, channels, growth_rate, bn_size)
            )
            channels += num_layers * growth_rate
            if index != len(block_config) - 1:
                self.features.add_module(f"transition{index + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        # torchvision's init: He convs on fan_in (concatenation keeps the scales bounded), zero head bias.
        init_weights(self, conv_fan="fan_in")
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every block and transition, and ``norm5``; the ReLU before pooling is the head's."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.forward_features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))
