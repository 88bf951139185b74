"""Image helpers shared by the built-in datasets: resizing, padding, MNIST-style pairs."""

from __future__ import annotations

import numpy as np

OBJECT_THRESHOLD = 96  # a pixel of a 28×28 object belongs to it when its intensity is at least this


def resize(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of uint8 ``[N, H, W]`` or ``[N, H, W, C]`` images."""
    import torch
    import torch.nn.functional as F

    hw = (size, size) if isinstance(size, int) else size
    channels_last = images.ndim == 4
    t = torch.from_numpy(np.require(images, requirements=["C", "W"])).float()
    t = t.permute(0, 3, 1, 2) if channels_last else t[:, None]
    if tuple(t.shape[-2:]) == hw:
        out = t
    else:
        out = F.interpolate(t, size=hw, mode="bilinear", antialias=True, align_corners=False)
    out = out.round().clamp(0, 255).to(torch.uint8)
    return (out.permute(0, 2, 3, 1) if channels_last else out[:, 0]).numpy()


def centre_pad(images: np.ndarray, size: int) -> np.ndarray:
    """Place ``[N, h, w]`` images in the centre of ``size``×``size`` black canvases."""
    n, h, w = images.shape
    out = np.zeros((n, size, size), np.uint8)
    y, x = (size - h) // 2, (size - w) // 2
    out[:, y : y + h, x : x + w] = images
    return out


def overlay_pairs(
    first: np.ndarray,
    second: np.ndarray,
    rng: np.random.Generator,
    canvas: int = 36,
    shift: int = 4,
    size: int = 28,
) -> np.ndarray:
    """MultiMNIST construction (Sabour et al. 2017; Pareto-MTL): ``first[i]`` top-left and
    ``second[i]`` bottom-right of a ``canvas``² image, each shifted by up to ``shift`` px per
    axis, combined by pixel-wise max and resized to ``size``."""
    n, h, w = first.shape
    out = np.zeros((n, canvas, canvas), np.uint8)
    d1 = rng.integers(0, shift + 1, size=(n, 2))
    d2 = rng.integers(0, shift + 1, size=(n, 2))
    far = canvas - h - shift
    for i in range(n):
        y, x = d1[i]
        out[i, y : y + h, x : x + w] = first[i]
        y, x = far + d2[i]
        np.maximum(out[i, y : y + h, x : x + w], second[i], out=out[i, y : y + h, x : x + w])
    return resize(out, size)


def random_crops(photos: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``size``×``size`` RGB crops from a list of photos (uint8 ``[n, size, size, 3]``)."""
    out = np.empty((n, size, size, 3), np.uint8)
    which = rng.integers(len(photos), size=n)
    for i, p in enumerate(which):
        photo = photos[p]
        y = rng.integers(photo.shape[0] - size + 1)
        x = rng.integers(photo.shape[1] - size + 1)
        out[i] = photo[y : y + size, x : x + size]
    return out


def edges(labels: np.ndarray) -> np.ndarray:
    """1 where a pixel's label differs from a 4-neighbour's (object boundaries), else 0."""
    e = np.zeros(labels.shape, np.uint8)
    diff_y = labels[1:, :] != labels[:-1, :]
    diff_x = labels[:, 1:] != labels[:, :-1]
    e[1:, :] |= diff_y
    e[:-1, :] |= diff_y
    e[:, 1:] |= diff_x
    e[:, :-1] |= diff_x
    return e
