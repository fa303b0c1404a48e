"""Projected gradient descent: the L-inf adversarial attack of Madry et al. 2018.

References
----------
Madry, A., Makelov, A., Schmidt, L., Tsipras, D., Vladu, A. (2018). Towards deep learning
models resistant to adversarial attacks. ICLR. arXiv:1706.06083
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pgd_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epsilon: float,
    steps: int = 5,
    step_size: float | None = None,
) -> torch.Tensor:
    """Images within ``epsilon`` (L-inf) of ``images`` that raise ``model``'s cross-entropy.

    Starts at the clean images (no random start: the attack is deterministic), takes
    ``steps`` signed-gradient steps of ``step_size`` (default 2.5 epsilon / steps), projects
    onto the epsilon ball and onto [0, 1] after each.

    Parameters
    ----------
    model : (B, C, H, W) -> (B, classes) logits; left in the mode it was in
    images : (B, C, H, W) in [0, 1]
    labels : (B,) int64 true classes
    epsilon : radius of the L-inf ball, in pixel units
    steps : number of gradient steps

    Returns
    -------
    (B, C, H, W) adversarial images, detached
    """
    if epsilon < 0 or steps < 0:
        raise ValueError(f"epsilon = {epsilon}, steps = {steps} (expected both >= 0)")
    step_size = 2.5 * epsilon / max(steps, 1) if step_size is None else step_size
    clean = images.detach()
    x = clean.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x + step_size * grad.sign()
            x = torch.min(torch.max(x, clean - epsilon), clean + epsilon).clamp(0.0, 1.0)
    return x.detach()
