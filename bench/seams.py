"""Seams: tiled prediction vs one whole-image pass of the same fully-convolutional check model.

Goal: >= 99.5 % pixel agreement overall and in a 2-pixel band along the tile edges. The check model is
fully convolutional (receptive field 15 px), so a whole-image pass is the seam-free truth; the engine's tiles see
zero padding at their borders, which blending must hide.

    .venv/bin/python bench/seams.py [--size 1024] [--tile 256] [--overlap 64]
"""
from __future__ import annotations

import argparse

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
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    args = parser.parse_args()
    image = render_scene(args.size, args.size, seed=5).image.astype(np.float32)
    card = ModelCard("check", tile=args.tile, overlap=args.overlap, mean=(128.0,) * 3, std=(64.0,) * 3)
    predictor = Predictor(EncoderDecoder(Features(), CheckHead()), card, device="cpu", batch_size=8)
    tiled, _ = predictor.predict_array(image)
    x = torch.from_numpy(predictor.normalize(np.moveaxis(image, -1, 0), np.ones(image.shape[:2], bool)))[None]
    with torch.no_grad():
        whole = predictor.model(x)[0].argmax(0).numpy()
    band = edge_band(TileGrid(args.size, args.size, args.tile, args.overlap))
    same = tiled == whole
    print(f"{args.size}x{args.size} px, {args.tile} px tiles, overlap {args.overlap}")
    print(f"agreement overall: {same.mean():.4%} (goal >= 99.5 %)")
    print(f"agreement within 2 px of tile edges: {same[band].mean():.4%} ({band.sum()} px; goal >= 99.5 %)")


if __name__ == "__main__":
    main()
