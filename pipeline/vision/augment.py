"""The learned spatial-transform augmentor of HARD distillation (Nix, Burg & Sinz 2023).

References
----------
Nix, A., Burg, M. F., Sinz, F. H. (2023). HARD: Hard augmentations for robust distillation.
arXiv:2305.14890
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialAugmentor(nn.Module):
    """Affine transforms, one per image, drawn from a learned generator of random codes.

    ``theta = identity + magnitude * tanh(generator(z))`` with z ~ N(0, 1): every entry of
    the affine matrix stays within ``magnitude`` of the identity, however the generator is
    trained (the constraint on the transform's size). Trained adversarially, the generator
    finds the transforms where teacher and student disagree most.

    Parameters
    ----------
    magnitude : largest deviation of any entry of the 2x3 affine matrix from the identity
        (rotation/scale/shear entries and shifts in units of the half-width)
    code_size : size of the random code z
    hidden : width of the generator's hidden layer
    conditional : the generator also sees each image (average-pooled to 6 x 6 per channel),
        so that it can find a different hard transform for each image
    channels : channels of the images (with ``conditional``)
    """

    _POOLED = 6

    def __init__(
        self, magnitude: float = 0.3, code_size: int = 8, hidden: int = 32, conditional: bool = False, channels: int = 1
    ):
        super().__init__()
        if not magnitude > 0:
            raise ValueError(f"augmentor magnitude = {magnitude} (expected > 0)")
        self.magnitude = float(magnitude)
        self.code_size = code_size
        self.conditional = conditional
        inputs = code_size + (channels * self._POOLED**2 if conditional else 0)
        self.generator = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 6))
        self.register_buffer("identity", torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    def transforms(
        self, n: int, generator: torch.Generator | None = None, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(n, 2, 3) affine matrices within ``magnitude`` of the identity.

        A conditional augmentor needs the (n, C, H, W) ``images`` it will transform.
        """
        z = torch.randn(n, self.code_size, generator=generator).to(self.identity.device)
        if self.conditional:
            if images is None or len(images) != n:
                raise ValueError(
                    f"a conditional augmentor needs the {n} images it transforms (got "
                    f"{None if images is None else len(images)})"
                )
            z = torch.cat([z, F.adaptive_avg_pool2d(images, self._POOLED).flatten(1)], dim=1)
        return self.identity + self.magnitude * torch.tanh(self.generator(z)).view(n, 2, 3)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, H, W) images, each warped by its own transform (zeros outside the frame)."""
        theta = self.transforms(images.shape[0], generator, images)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
