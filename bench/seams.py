"""Seams: tiled prediction vs one whole-image pass of the same fully-convolutional check model, for every overlap.

Goal: >= 99.5 % pixel agreement overall and in a 2-pixel band along the tile edges, for any overlap from 0 to
tile - 1. The check model is fully convolutional (receptive field 15 px), so a whole-image pass is the seam-free
truth; the engine's tiles see zero padding at their borders, which blending must hide. Overlaps near the tile size
mean a tile every pixel or so: the default sweep uses small tiles so that it runs in about a minute.

    .venv/bin/python bench/seams.py [--size 256] [--tile 64] [--overlaps 0,16,32,48,56,63]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from mtp_core.inference import Predictor
from mtp_core.models import EncoderDecoder, ModelCard
from mtp_core.tiling import TileGrid
from mtp_tools.synthetic import render_scene


class Features(nn.Module):
    def forward(self, x):
        return (x,)


class CheckHead(nn.Module):
    """7 convs of 3x3: a 15 px receptive field, deterministic weights."""

    num_classes = 2
    align_corners = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        channels = [3, 16, 16, 16, 16, 16, 16]
        for cin, cout in zip(channels, channels[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(16, 2, 3, padding=1))

    def forward(self, feats):
        return self.net(feats[0])


def edge_band(grid: TileGrid, width: int = 2) -> np.ndarray:
    band = np.zeros((grid.height, grid.width), bool)
    for y in grid.row_origins:
        for edge in (y, y + grid.tile):
            band[max(edge - width, 0) : edge + width, :] = True
    for x in grid.col_origins:
        for edge in (x, x + grid.tile):
            band[:, max(edge - width, 0) : edge + width] = True
    return band


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlaps", default=None,
                        help="comma-separated overlaps (default: every tile/8 from 0, and tile - 1)")
    args = parser.parse_args()
    overlaps = ([int(v) for v in args.overlaps.split(",")] if args.overlaps
                else list(range(0, args.tile, args.tile // 8)) + [args.tile - 1])
    image = render_scene(args.size, args.size, seed=5).image.astype(np.float32)
    model = EncoderDecoder(Features(), CheckHead())
    print(f"{args.size}x{args.size} px, {args.tile} px tiles; agreement with a whole-image pass (goal >= 99.5 %)")
    print(f"{'overlap':>8}{'tiles':>9}{'overall':>10}{'tile edges':>12}{'seconds':>9}")
    for overlap in overlaps:
        card = ModelCard("check", tile=args.tile, overlap=overlap, mean=(128.0,) * 3, std=(64.0,) * 3)
        predictor = Predictor(model, card, device="cpu", batch_size=64)
        start = time.perf_counter()
        tiled, _ = predictor.predict_array(image)
        seconds = time.perf_counter() - start
        x = torch.from_numpy(predictor.normalize(np.moveaxis(image, -1, 0), np.ones(image.shape[:2], bool)))[None]
        with torch.no_grad():
            whole = predictor.model(x)[0].argmax(0).numpy()
        grid = TileGrid(args.size, args.size, args.tile, overlap)
        same = tiled == whole
        print(f"{overlap:>8}{len(grid):>9}{same.mean():>10.4%}{same[edge_band(grid)].mean():>12.4%}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
