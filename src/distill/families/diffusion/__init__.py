"""Diffusion family: a many-step teacher (flow matching or DDPM/DDIM) -> a 1-4 step generator.
Importing registers the toy data sets, the denoisers, the methods, the config and the runner."""
from distill.families.diffusion import (  # noqa: F401
    config, consistency, dmd, guidance, images, nets, progressive, reflow, runner, sid, toys, unet,
)
