"""Latent tiled diffusion: the tile grid and the Gaussian blending of per-tile noise predictions.

Pure functions (no model calls), so the denoising loop can batch tiles freely while the per-tile maths stays the
official one (REFERENCE §1.10):

* tiling is active iff ``h * w > tile_size ** 2`` (an *area* test on the latent);
* the tile side is ``T = min(tile_size, h, w)``, the stride ``T - overlap``;
* tile origins are ``i * stride`` with the last one snapped to ``size - T``; iteration order is x outer, y inner;
* every tile is weighted by the same float64 Gaussian whose centre is ``T/2`` along rows but ``(T-1)/2`` along
  columns (the official asymmetry, kept for parity), variance ``0.01`` relative to the tile size squared;
* weighted predictions are accumulated into float32 buffers (``num += pred * w`` computed in float64 and stored in
  float32, ``den += w`` likewise) and the merged prediction is ``num / den`` in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

GAUSSIAN_VARIANCE = 0.01


@dataclass(frozen=True)
class Tile:
    """One latent tile: rows ``y0:y0+height``, columns ``x0:x0+width`` (latent pixels)."""

    y0: int
    x0: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.y0, self.y0 + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.x0, self.x0 + self.width)

    def scaled(self, factor: int) -> tuple[slice, slice]:
        """The matching (rows, cols) window in an image ``factor`` times larger (e.g. the ×8 control image)."""
        return (
            slice(self.y0 * factor, (self.y0 + self.height) * factor),
            slice(self.x0 * factor, (self.x0 + self.width) * factor),
        )


def needs_tiling(height: int, width: int, tile_size: int) -> bool:
    """Official activation rule: tile iff the latent has more than ``tile_size**2`` elements per channel."""
    return height * width > tile_size * tile_size


def _origins(size: int, tile: int, stride: int) -> list[int]:
    count = 1 + math.ceil(max(0, size - tile) / stride)
    origins = [index * stride for index in range(count - 1)]
    origins.append(size - tile)
    return origins


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Square tiles covering a ``height × width`` latent, in the official order (x outer, y inner).

    Args:
        height, width: latent size ``(h, w)``.
        tile_size: nominal tile side ``T0`` in latent pixels; the actual side is ``min(T0, h, w)``.
        overlap: overlap ``O`` between neighbouring tiles in latent pixels (stride ``T - O``).

    Returns:
        A list of :class:`Tile`; a single full-size tile when ``h * w <= T0**2`` (no tiling).
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if not needs_tiling(height, width, tile_size):
        return [Tile(0, 0, height, width)]
    tile = min(tile_size, height, width)
    stride = tile - overlap
    if stride < 1:
        raise ValueError(f"latent tile overlap {overlap} must be smaller than the tile side {tile}")
    tiles = []
    for x0 in _origins(width, tile, stride):
        for y0 in _origins(height, tile, stride):
            tiles.append(Tile(y0, x0, tile, tile))
    return tiles


def gaussian_weights(
    tile_height: int, tile_width: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Official blending weights, shape ``(1, 1, tile_height, tile_width)``.

    ``w(y, x) = g((y - H/2) / H) * g((x - (W-1)/2) / W)`` with ``g(u) = exp(-u²/(2·0.01)) / sqrt(2π·0.01)``,
    computed in float64 (note the different row and column centres, as in the official code).
    """
    var = GAUSSIAN_VARIANCE
    xs = np.arange(tile_width)
    ys = np.arange(tile_height)
    mid_x = (tile_width - 1) / 2
    mid_y = tile_height / 2
    x_probs = np.exp(-((xs - mid_x) * (xs - mid_x)) / (tile_width * tile_width) / (2 * var)) / np.sqrt(2 * np.pi * var)
    y_probs = np.exp(-((ys - mid_y) * (ys - mid_y)) / (tile_height * tile_height) / (2 * var)) / np.sqrt(
        2 * np.pi * var
    )
    weights = np.outer(y_probs, x_probs)
    return torch.from_numpy(weights).to(dtype).to(device)[None, None]  # cast on the CPU: MPS has no float64


def blend(
    tile_predictions: torch.Tensor | list[torch.Tensor],
    tiles: list[Tile],
    height: int,
    width: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge per-tile predictions with Gaussian weights.

    Args:
        tile_predictions: ``(N, B, C, T, T)`` tensor or list of ``(B, C, T, T)`` tensors, one per tile, in the
            order of ``tiles``.
        tiles: the grid from :func:`tile_grid`.
        height, width: full latent size.
        weights: ``(1, 1, T, T)`` blending weights (default :func:`gaussian_weights` in float64; pass float32
            weights on devices without float64, e.g. MPS).

    Returns:
        ``(B, C, height, width)`` float32 merged prediction. A single full-size tile is returned unchanged (cast to
        float32 would change the untiled numerics, so the caller should not blend in that case).
    """
    first = tile_predictions[0]
    batch, channels = first.shape[0], first.shape[1]
    device = first.device
    if weights is None:
        weights = gaussian_weights(tiles[0].height, tiles[0].width, device=device)
    weights = weights.to(device)
    numerator = torch.zeros((batch, channels, height, width), dtype=torch.float32, device=device)
    denominator = torch.zeros((1, 1, height, width), dtype=torch.float32, device=device)
    for prediction, tile in zip(tile_predictions, tiles, strict=True):
        window = (slice(None), slice(None), tile.rows, tile.cols)
        # float32 buffer + float64 product, rounded back to float32 (what an in-place add on the float32 buffer does)
        numerator[window] = (numerator[window].to(weights.dtype) + prediction.to(weights.dtype) * weights).float()
        denominator[window] = (denominator[window].to(weights.dtype) + weights).float()
    return numerator / denominator
