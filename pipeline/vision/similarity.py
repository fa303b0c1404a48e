"""Representational similarity matrices and the similarity regularizer of Li et al. 2019.

References
----------
Li, Z., Brendel, W., Walker, E. Y., Cobos, E., Muhammad, T., Reimer, J., Bethge, M., Sinz,
F. H., Pitkow, X., Tolias, A. S. (2019). Learning from brains how to regularize machines.
NeurIPS 32. arXiv:1911.05072
"""

from __future__ import annotations

import torch


def similarity_matrix(representations: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity between the centred representations of every pair of images.

    Each feature is centred over the batch first (as Li et al.), so that what is compared is
    how images differ, not a shared offset.

    Parameters
    ----------
    representations : (B, ...) one representation per image (flattened to (B, D))

    Returns
    -------
    (B, B) symmetric, diagonal 1 (0 for an image whose centred representation is all zeros)

    Examples
    --------
    >>> s = similarity_matrix(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    >>> round(float(s[0, 1]), 3)
    -0.5
    """
    x = representations.reshape(representations.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"similarity of {x.shape[0]} image(s) (expected a batch of at least 2)")
    x = x - x.mean(dim=0, keepdim=True)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    return x @ x.T


def similarity_penalty(representations: torch.Tensor, target_similarity: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the off-diagonal entries of the two similarity matrices.

    Parameters
    ----------
    representations : (B, ...) the classifier's intermediate representation of a batch
    target_similarity : (B, B) the neural similarity of the same images (``similarity_matrix``
        of the predicted responses)

    Returns
    -------
    scalar tensor >= 0; 0 when the similarities match
    """
    s = similarity_matrix(representations)
    if target_similarity.shape != s.shape:
        raise ValueError(f"target similarity {tuple(target_similarity.shape)} (expected {tuple(s.shape)})")
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return ((s - target_similarity)[off] ** 2).mean()
