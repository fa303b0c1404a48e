"""Penalties on convolution filters: Laplace smoothness and group sparsity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_LAPLACE = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


def laplace_smoothness(weight: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Squared Laplacian of 2-d filters, summed over filters.

    Parameters
    ----------
    weight : (..., kh, kw) filters (e.g. a conv weight (out, in, kh, kw)).
    normalize : divide each filter's penalty by its squared norm, so that only the shape of a
        filter is penalized, not its scale.

    Returns
    -------
    scalar tensor, >= 0.
    """
    kh, kw = weight.shape[-2:]
    filters = weight.reshape(-1, 1, kh, kw)
    lap = F.conv2d(filters, _LAPLACE.to(weight)[None, None], padding=1)
    penalty = lap.pow(2).sum(dim=(1, 2, 3))
    if normalize:
        penalty = penalty / (filters.pow(2).sum(dim=(1, 2, 3)) + 1e-8)
    return penalty.sum()


def group_sparsity(weight: torch.Tensor) -> torch.Tensor:
    """Sum over (output, input) channel pairs of the L2 norm of their filter.

    Drives whole input feature maps out of an output channel's filter (group lasso).

    Parameters
    ----------
    weight : (out, in, kh, kw)

    Returns
    -------
    scalar tensor, >= 0.
    """
    return weight.pow(2).sum(dim=(2, 3)).add(1e-12).sqrt().sum()
