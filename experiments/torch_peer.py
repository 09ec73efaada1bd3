"""PyTorch twins of the Flax models, for the throughput comparison in `bench_throughput.py`.

Layer shapes and parameter counts equal `mnist_jax.models.get(name, **overrides)` (the harness
asserts the counts); BatchNorm momentum / eps follow the Flax model's framework convention.
Initialisers are PyTorch's defaults: they do not change the cost of a step. Inputs are NCHW float
pixels in [0, 1]; each model normalises them itself, as the Flax models do. Never imported by
the package: torch is only the optional `bench` extra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

# PyTorch BatchNorm `momentum` is the weight of the NEW batch statistic: 1 - Flax / Keras momentum.
KERAS_BN = {"momentum": 0.01, "eps": 1e-3}
TORCH_BN = {"momentum": 0.1, "eps": 1e-5}


class PeerError(ValueError):
    """A model or field that has no PyTorch twin; the message lists what does."""


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SqueezeExcite(nn.Module):
    """blocks.SqueezeExcite: channel gate from the global mean through a bias-free bottleneck."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.squeeze = nn.Linear(channels, max(1, channels // ratio), bias=False)
        self.excite = nn.Linear(max(1, channels // ratio), channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ResBlock(nn.Module):
    """blocks.ResBlock: y = BN(x); return y + ReLU(Conv3x3(y))."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, **TORCH_BN)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)
        return x + F.relu(self.conv(x))


def tiny20k(num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [Normalize(0.1307, 0.3081)]
    for c_in, c_out in ((1, 8), (8, 16), (16, 32)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, **TORCH_BN),
                   nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 3 * 3, 32), nn.ReLU(), nn.Dropout(0.3),
               nn.Linear(32, num_classes)]
    return nn.Sequential(*layers)


def deotte(num_classes: int = 10) -> nn.Module:
    def conv_bn(c_in: int, c_out: int, k: int, **kw) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, k, **kw), nn.ReLU(), nn.BatchNorm2d(c_out, **KERAS_BN)]

    layers: list[nn.Module] = []
    c_in = 1
    for c in (32, 64):
        # The strided 5x5 is Keras "same": padding 2 gives the same output size (28 -> 12, 8 -> 4).
        layers += [*conv_bn(c_in, c, 3), *conv_bn(c, c, 3), *conv_bn(c, c, 5, stride=2, padding=2),
                   nn.Dropout(0.4)]
        c_in = c
    layers += [*conv_bn(64, 128, 4), nn.Flatten(), nn.Dropout(0.4), nn.Linear(128, num_classes)]
    return nn.Sequential(*layers)


class SENet(nn.Module):
    def __init__(self, filters: int = 128, se_ratio: int = 32, num_classes: int = 10):
        super().__init__()
        blocks = []
        c_in = 1
        for block in range(3):
            layers: list[nn.Module] = []
            for _ in range(3):
                layers += [nn.Conv2d(c_in, filters, 3, padding=1), nn.ReLU()]
                c_in = filters
            layers += [nn.BatchNorm2d(filters, **KERAS_BN), SqueezeExcite(filters, se_ratio)]
            if block > 0:
                layers.append(nn.AvgPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return self.head(torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1))


def resnet_committee(width: int = 128, num_classes: int = 10) -> nn.Module:
    w = width
    return nn.Sequential(
        Normalize(0.1307, 0.3081),
        nn.Conv2d(1, w, 5, padding=2), nn.ReLU(),
        ResBlock(w), nn.MaxPool2d(2),
        ResBlock(w), nn.BatchNorm2d(w, **TORCH_BN),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ResBlock(2 * w), nn.BatchNorm2d(2 * w, **TORCH_BN),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        ResBlock(4 * w), nn.BatchNorm2d(4 * w, **TORCH_BN),
        nn.AvgPool2d(4), nn.Flatten(), nn.Linear(4 * w, num_classes))


# name -> (builder, the fields it accepts: the same names as the Flax model's).
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "tiny20k": (tiny20k, ()),
    "deotte": (deotte, ()),
    "senet": (SENet, ("filters",)),
    "resnet_committee": (resnet_committee, ("width",)),
}


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, **overrides: int) -> nn.Module:
    """The PyTorch twin of `mnist_jax.models.get(name, **overrides)`."""
    if name not in _REGISTRY:
        raise PeerError(f"no PyTorch peer for model {name!r}; peers exist for: {', '.join(names())}")
    build, fields = _REGISTRY[name]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise PeerError(f"PyTorch peer of {name!r} has no field(s) {unknown}; it accepts: "
                        f"{', '.join(fields) or 'none'}")
    return build(**overrides)


def count_params(model: nn.Module) -> int:
    """Trainable parameters: the counterpart of Flax's `params` collection (not BN statistics)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
