"""The convolutional encoder and decoder shared by the AAE, VAE and DCAE (the encoder and a
parameter head also by LensFit and LensFit 2).

Published layout for 1x150x150 input (REFERENCE.md): Conv(1->16, k7, s3, p1) 150->49,
Conv(16->32, k7, s3, p1) 49->15, Conv(32->64, k7) 15->9, flatten 64*9*9 = 5184. The decoder
mirrors it with transposed convolutions whose output_padding is computed so every size is
recovered exactly (for 150: 9->15->49->150), then a sigmoid because pixels lie in [0, 1]
(the original's tanh could not reach 0 without wasting half its range).

Edges: a plain transposed convolution gives its outermost output pixels fewer kernel taps
than the interior (at stride 3, kernel 7: one input position instead of two or three), so a
decoder cannot draw its border as freely as the rest and leaves a bright or dark frame whose
error dominates the residual (the first shipped AAE put 85% of its squared error within 3
pixels of the edge). With `replicate_edges` (the default) each transposed convolution's input
is first extended by replicating its border ceil(k / s) times, and the extra output that
produces is cropped again (a larger `padding`): every output pixel, edges included, then
gets the same number of taps, at no change in parameters or output size. Checkpoints made
before this fix (format 1) load with `replicate_edges=False`, as they were trained.
"""

import math
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import TINY_IMAGE_SIZE, ModelConfig


@dataclass
class ConvNetConfig(ModelConfig):
    """Geometry of the shared conv stack. Sizes in pixels; the latent size in units."""

    channels: tuple[int, ...] = (16, 32, 64)
    kernels: tuple[int, ...] = (7, 7, 7)
    strides: tuple[int, ...] = (3, 3, 1)
    paddings: tuple[int, ...] = (1, 1, 0)
    # 256 rather than the published 1000: keeps a checkpoint near 11 MB instead of 42 MB.
    latent_dim: int = 256
    replicate_edges: bool = True  # uniform kernel coverage at the edges (module doc)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.kernels = tuple(self.kernels)
        self.strides = tuple(self.strides)
        self.paddings = tuple(self.paddings)
        lengths = {len(self.channels), len(self.kernels), len(self.strides), len(self.paddings)}
        if len(lengths) != 1:
            raise ValueError("channels, kernels, strides and paddings must have equal lengths")
        if self.feature_sizes()[-1] < 1:
            smallest = next(
                n for n in range(1, 4097) if _feature_sizes(n, self)[-1] >= 1
            )  # fmt: skip
            raise ValueError(
                f"image_size {self.image_size} is too small for this conv geometry (kernels "
                f"{list(self.kernels)}, strides {list(self.strides)}): it takes {smallest} "
                "pixels or more; for smaller images give smaller kernels or strides, e.g. "
                "--arch-arg kernels=[5,5,3] (or fit --tiny for a smoke test)"
            )

    @classmethod
    def tiny(cls) -> Self:
        """32x32 images through three small convs (32 -> 16 -> 8 -> 6) and an 8-d latent."""
        return cls(
            image_size=TINY_IMAGE_SIZE,
            channels=(4, 8, 8),
            kernels=(3, 3, 3),
            strides=(2, 2, 1),
            paddings=(1, 1, 0),
            latent_dim=8,
        )

    def feature_sizes(self) -> list[int]:
        """Spatial side after each conv, starting with the input: [150, 49, 15, 9]."""
        return _feature_sizes(self.image_size, self)

    @property
    def flat_dim(self) -> int:
        """Length of the flattened feature map (5184 for the published geometry)."""
        return self.channels[-1] * self.feature_sizes()[-1] ** 2


def _feature_sizes(size: int, cfg: ConvNetConfig) -> list[int]:
    sizes = [size]
    for k, s, p in zip(cfg.kernels, cfg.strides, cfg.paddings, strict=True):
        sizes.append((sizes[-1] + 2 * p - k) // s + 1)
    return sizes


class ConvEncoder(nn.Module):
    """(N, 1, H, W) -> flattened features (N, flat_dim); ReLU after every conv but optionally
    the last (the DCAE's published encoder has none there)."""

    def __init__(self, cfg: ConvNetConfig, relu_after_last: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        n = len(cfg.channels)
        for i, (ch, k, s, p) in enumerate(
            zip(cfg.channels, cfg.kernels, cfg.strides, cfg.paddings, strict=True)
        ):
            layers.append(nn.Conv2d(in_ch, ch, k, stride=s, padding=p))
            if i < n - 1 or relu_after_last:
                layers.append(nn.ReLU(inplace=True))
            in_ch = ch
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (N, flat_dim)


def parameter_head(flat_dim: int, hidden: int, n_parameters: int) -> nn.Sequential:
    """The MLP from encoder features (N, flat_dim) to raw parameters (N, n_parameters) of the
    physics-informed models (LensFit, LensFit 2); its last layer starts at zero, so that
    every parameter starts mid-range."""
    out = nn.Linear(hidden, n_parameters)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(nn.Linear(flat_dim, hidden), nn.ReLU(inplace=True), out)


def range_bounds(
    ranges: dict[str, tuple[float, float]], names: tuple[str, ...]
) -> tuple[Tensor, Tensor]:
    """Each named parameter's range start and width (P,), (P,), in `names`' order."""
    lo = torch.tensor([ranges[n][0] for n in names])
    hi = torch.tensor([ranges[n][1] for n in names])
    return lo, hi - lo


class EdgeReplicatedConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d whose input border is replicated `margin` times and whose padding
    crops the extra output again: same parameters and output size, uniform edge coverage."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int,
        margin: int,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            output_padding=output_padding,
        )  # fmt: skip
        self.margin = margin
        self.crop = padding + margin * stride  # each replicated position adds `stride` pixels

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        m = self.margin
        x = F.pad(x, (m, m, m, m), mode="replicate")  # (N, C, H + 2m, W + 2m)
        return F.conv_transpose2d(
            x, self.weight, self.bias, self.stride, self.crop, self.output_padding,
        )  # fmt: skip


class ConvDecoder(nn.Module):
    """Flattened features (N, flat_dim) -> image (N, 1, H, W) in [0, 1]."""

    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        sizes = cfg.feature_sizes()
        self.shape = (cfg.channels[-1], sizes[-1], sizes[-1])
        out_channels = (1, *cfg.channels[:-1])
        layers: list[nn.Module] = []
        for i in reversed(range(len(cfg.channels))):
            k, s, p = cfg.kernels[i], cfg.strides[i], cfg.paddings[i]
            # The encoder floored (size + 2p - k) / s; output_padding gives that remainder back.
            output_padding = (sizes[i] + 2 * p - k) % s
            conv: nn.ConvTranspose2d
            if cfg.replicate_edges:
                conv = EdgeReplicatedConvTranspose2d(
                    cfg.channels[i], out_channels[i], k, stride=s, padding=p,
                    output_padding=output_padding, margin=math.ceil(k / s),
                )  # fmt: skip
            else:
                conv = nn.ConvTranspose2d(
                    cfg.channels[i], out_channels[i], k, stride=s, padding=p,
                    output_padding=output_padding,
                )  # fmt: skip
            layers.append(conv)
            if i > 0:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        x = self.net(h.view(h.shape[0], *self.shape))  # (N, 1, H, W) logits
        return torch.sigmoid(x)
