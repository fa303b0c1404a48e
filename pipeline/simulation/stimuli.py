"""Natural image stimuli cut from scikit-image's bundled pictures (no network access)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# scikit-image ships these with the package (no pooch download); all natural scenes/textures
_SOURCES = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "moon", "rocket")


@lru_cache(maxsize=1)
def source_images() -> tuple[np.ndarray, ...]:
    """The grayscale source pictures, float32 in [0, 255], each (height, width)."""
    import skimage.data
    from skimage.color import rgb2gray

    out = []
    for name in _SOURCES:
        image = getattr(skimage.data, name)()
        if image.ndim == 3:
            gray = rgb2gray(image[..., :3]) * 255.0  # rgb2gray returns [0, 1]
        else:
            gray = image.astype(np.float64)
        out.append(np.ascontiguousarray(gray, dtype=np.float32))
    return tuple(out)


def natural_images(n: int, height: int = 36, width: int = 64, seed: int = 0) -> np.ndarray:
    """Random crops of natural pictures, resized to ``(height, width)``.

    Each image is a crop of random size (2x the output size up to the whole picture) at a
    random place in one of scikit-image's bundled pictures, optionally mirrored, resized with
    anti-aliasing. Deterministic given ``seed``.

    Parameters
    ----------
    n
        Number of images.
    height, width
        Output size in pixels.
    seed
        Seed of the crop positions, sizes and sources.

    Returns
    -------
    numpy.ndarray
        (n, height, width) float32 grey levels in [0, 255].
    """
    from skimage.transform import resize

    if n < 0 or height < 1 or width < 1:
        raise ValueError(f"natural_images: n={n}, height={height}, width={width} (expected n >= 0, sizes >= 1)")
    sources = source_images()
    rng = np.random.default_rng(seed)
    out = np.empty((n, height, width), dtype=np.float32)
    aspect = width / height
    for i in range(n):
        src = sources[rng.integers(len(sources))]
        sh, sw = src.shape
        max_h = min(sh, int(sw / aspect))
        min_h = min(max_h, 2 * height)
        ch = int(rng.integers(min_h, max_h + 1))
        cw = max(1, min(sw, int(round(ch * aspect))))
        y = int(rng.integers(0, sh - ch + 1))
        x = int(rng.integers(0, sw - cw + 1))
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = resize(crop, (height, width), anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, 255.0, out=out)
