"""DMD2's GAN term (Yin et al. 2024, "Improved Distribution Matching Distillation", sec. 4.3): a small
discriminator head reads intermediate features of the fake-score network and tells noised real data
from noised generator samples; the generator gets the non-saturating GAN loss through the same head.

Features are tapped with a forward hook, on an unmodified network:
- `TimeMLP` (2-D toys): the last hidden activations, (B, H) (the input of its output layer);
- `UNetDenoiser` (diffusers): the mid-block output, (B, C, h, w).

    site = feature_site(fake)                      # where to tap, and the feature width
    head = Discriminator(site.width, site.spatial)
    with FeatureTap(site) as tap:
        fake(x_t, t)
    logits = head(tap.value)                       # (B,)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ConfigError


@dataclass
class FeatureSite:
    module: nn.Module
    width: int
    spatial: bool       # (B, C, h, w) features; else (B, H)
    pre: bool           # tap the module's input (True) or its output (False)


def feature_site(net: nn.Module) -> FeatureSite:
    """Where the discriminator reads `net`: a TimeMLP's last hidden layer or a UNet's mid-block."""
    from distill.families.diffusion.nets import TimeMLP
    from distill.families.diffusion.unet import UNetDenoiser

    if isinstance(net, TimeMLP):
        return FeatureSite(net.out, net.hidden, spatial=False, pre=True)
    if isinstance(net, UNetDenoiser):
        mid = getattr(net.unet, "mid_block", None)
        if mid is None:
            raise ConfigError("dmd.gan_weight: the UNet has no mid block for the discriminator to read")
        return FeatureSite(mid, int(net.unet.config.block_out_channels[-1]), spatial=True, pre=False)
    raise ConfigError(f"dmd.gan_weight: no known feature site in a {type(net).__name__} fake-score network "
                      "(supported: toy_mlp, unet, diffusers_unet)")


class FeatureTap:
    """Context manager: `value` holds the site's features from the last forward inside (with grad)."""

    def __init__(self, site: FeatureSite):
        self.site, self.value, self._handle = site, None, None

    def _pre(self, module, args):
        self.value = args[0]

    def _post(self, module, args, out):
        self.value = out[0] if isinstance(out, tuple) else out

    def __enter__(self) -> "FeatureTap":
        m = self.site.module
        self._handle = m.register_forward_pre_hook(self._pre) if self.site.pre else m.register_forward_hook(self._post)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


class Discriminator(nn.Module):
    """A logit per sample from features: (B, H) -> (B,) by a 2-layer MLP; (B, C, h, w) -> (B,) by a
    3x3 conv, global average pooling and a linear layer."""

    def __init__(self, width: int, spatial: bool):
        super().__init__()
        self.spatial = spatial
        if spatial:
            self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        else:
            self.body = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.head = nn.Linear(width, 1)

    def forward(self, feat: Tensor) -> Tensor:
        h = self.body(feat)
        if self.spatial:
            h = h.mean((2, 3))                                          # (B, C)
        return self.head(h).squeeze(-1)                                 # (B,)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss of a discriminator: -log D(real) - log(1 - D(fake)); logits (B,) -> scalar."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014); logits (B,) -> scalar."""
    return F.softplus(-fake_logits).mean()
