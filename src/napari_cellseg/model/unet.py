"""The 3-class UNet of Al-Kofahi et al. (2018): nn.Module only."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

CLASSES = ("seed", "cytoplasm", "background")  # a 4-class model adds "touch" (targets.py)
PAPER_CHANNELS = (32, 64, 128, 128, 256)
LIGHT_CHANNELS = (16, 32, 64, 128)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`; stored beside the weights."""

    channels: tuple[int, ...] = LIGHT_CHANNELS
    in_channels: int = 1
    n_classes: int = len(CLASSES)
    dropout: float = 0.1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: d[k] for k in ("channels", "in_channels", "n_classes", "dropout") if k in d}
        if "channels" in known:
            known["channels"] = tuple(int(c) for c in known["channels"])
        return cls(**known)

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (one halving per level below the top)."""
        return 2 ** (len(self.channels) - 1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """UNet with 3x3 convolutions, max-pooling down, transposed convolutions up and skip
    connections; dropout on the three deepest levels (the paper's three dropout layers).

    ``forward`` returns logits (B, n_classes, H, W); :meth:`probabilities` the softmax.
    Input sides must be multiples of ``config.divisor``.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        ch = self.config.channels
        if len(ch) < 2:
            raise ValueError(f"a UNet needs at least 2 levels, got channels={ch}")
        self.down = nn.ModuleList()
        cin = self.config.in_channels
        for c in ch:
            self.down.append(_block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_low, c_high in zip(ch[:0:-1], ch[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(c_low, c_high, 2, stride=2))
            self.merge.append(_block(2 * c_high, c_high))
        n_drop = min(3, len(ch))
        self.drop_levels = set(range(len(ch) - n_drop, len(ch)))
        self.dropout = nn.Dropout2d(self.config.dropout)
        self.head = nn.Conv2d(ch[0], self.config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            if level in self.drop_levels and self.config.dropout > 0:
                x = self.dropout(x)
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = up(x)
            x = merge(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=1)
