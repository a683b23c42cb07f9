"""Latent tile grid and Gaussian blending (REFERENCE §1.10)."""

from __future__ import annotations

import math

import pytest
import torch

from seesr.pipeline.tiling import Tile, blend, gaussian_weights, needs_tiling, tile_grid


def test_single_tile_when_area_fits():
    assert not needs_tiling(96, 96, 96)
    # the test is on the AREA: 120 x 70 = 8400 <= 96^2 although one side is larger than 96
    assert tile_grid(120, 70, 96, 4) == [Tile(0, 0, 120, 70)]


def test_fixture_case2_grid():
    """Case 2 of fixture D: latent 24x20 (h x w), tile 12, overlap 4 -> x in {0, 8}, y in {0, 8, 12}, x outer."""
    tiles = tile_grid(24, 20, 12, 4)
    assert [(t.x0, t.y0) for t in tiles] == [(0, 0), (0, 8), (0, 12), (8, 0), (8, 8), (8, 12)]
    assert all(t.height == t.width == 12 for t in tiles)


@pytest.mark.parametrize(
    "height,width,tile,overlap", [(24, 20, 12, 4), (97, 130, 96, 4), (50, 33, 16, 8), (64, 200, 40, 0)]
)
def test_grid_covers_every_pixel_and_stays_inside(height, width, tile, overlap):
    tiles = tile_grid(height, width, tile, overlap)
    side = min(tile, height, width)
    stride = side - overlap
    assert len(tiles) == (1 + math.ceil(max(0, width - side) / stride)) * (
        1 + math.ceil(max(0, height - side) / stride)
    )
    cover = torch.zeros(height, width)
    for t in tiles:
        assert 0 <= t.y0 and t.y0 + t.height <= height and 0 <= t.x0 and t.x0 + t.width <= width
        cover[t.rows, t.cols] += 1
    assert cover.min() >= 1


def test_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(40, 40, 8, 8)


def test_gaussian_weights_official_asymmetry():
    w = gaussian_weights(12, 12)[0, 0]
    assert w.dtype == torch.float64 and w.shape == (12, 12)
    # columns are centred on (T-1)/2 = 5.5: symmetric under left-right flip
    torch.testing.assert_close(w, w.flip(1), rtol=0, atol=0)
    # rows are centred on T/2 = 6: row 6 is the maximum, and the flip is NOT symmetric
    assert int(w[:, 0].argmax()) == 6
    assert not torch.equal(w, w.flip(0))
    torch.testing.assert_close(w[6 - 3], w[6 + 3], rtol=0, atol=0)
    # value at the centre: g(0) * g(0.5 / 12) with g(u) = exp(-u^2 / 0.02) / sqrt(0.02 pi)
    g = lambda u: math.exp(-u * u / 0.02) / math.sqrt(2 * math.pi * 0.01)  # noqa: E731
    assert float(w[6, 5]) == pytest.approx(g(0) * g(0.5 / 12), rel=1e-12)


def test_blend_identity_for_constant_predictions():
    """Blending identical predictions returns them (weights normalise), whatever the overlaps."""
    tiles = tile_grid(24, 20, 12, 4)
    field = torch.randn(2, 4, 24, 20, generator=torch.Generator().manual_seed(0))
    merged = blend([field[:, :, t.rows, t.cols] for t in tiles], tiles, 24, 20)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, field, rtol=1e-6, atol=1e-6)


def test_blend_matches_manual_weighted_average():
    tiles = tile_grid(24, 20, 12, 4)
    gen = torch.Generator().manual_seed(1)
    preds = torch.randn(len(tiles), 2, 4, 12, 12, generator=gen)
    merged = blend(preds, tiles, 24, 20)
    w = gaussian_weights(12, 12)
    num = torch.zeros(2, 4, 24, 20, dtype=torch.float64)
    den = torch.zeros(1, 1, 24, 20, dtype=torch.float64)
    for p, t in zip(preds, tiles, strict=True):
        num[:, :, t.rows, t.cols] += p.double() * w
        den[:, :, t.rows, t.cols] += w
    torch.testing.assert_close(merged.double(), num / den, rtol=1e-6, atol=1e-6)
    # in the region covered by a single tile the result is exactly that tile
    torch.testing.assert_close(merged[:, :, :8, :8], preds[0][:, :, :8, :8], rtol=1e-6, atol=1e-6)
