"""Click-to-segment latency: the first click in an area (the model runs) and cached clicks (no model), per click.

A synthetic suburb (default 1024 x 1024 px at 0.5 m, 36 tiles of the demo model) is clicked on its labelled
buildings through :class:`mtp_core.click.ClickSegmenter`, as the QGIS map tool calls it. Uncached: a fresh segmenter
per click (1 to 4 tiles predicted, more when a building leaves them). Cached: every building clicked again once all
tiles are cached. Goal: a cached click under 300 ms on CPU with the demo model. ``--geographic`` reprojects the scene
to EPSG:4326 first, so every click also resamples its building onto the raster's own grid.

    .venv/bin/python bench/click_latency.py
    .venv/bin/python bench/click_latency.py --geographic --device cpu
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from mtp_core.click import ClickSegmenter
from mtp_core.inference import Predictor
from mtp_core.io import describe_raster, read_vector
from mtp_core.weights import DEMO_CHECKPOINT
from mtp_tools.synthetic import render_scene, write_scene

GOAL_S = 0.3


def click_points(labels: list, raster: Path, utm_wkt: str) -> list[tuple[float, float]]:
    """One point inside each labelled building of at least 20 m², in the raster's CRS."""
    points = [label.representative_point().coords[0] for label in labels if label.area >= 20.0]
    info = describe_raster(raster)
    if not info.is_geographic:
        return points
    src, dst = osr.SpatialReference(wkt=utm_wkt), osr.SpatialReference(wkt=info.crs_wkt)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return [tuple(p[:2]) for p in osr.CoordinateTransformation(src, dst).TransformPoints(points)]


def stats(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return (f"median {np.median(ms):7.1f} ms  p95 {np.percentile(ms, 95):7.1f} ms  max {ms.max():7.1f} ms  "
            f"({len(ms)} clicks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels")
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--first-clicks", type=int, default=8, help="uncached clicks (a fresh segmenter each)")
    parser.add_argument("--geographic", action="store_true", help="reproject the scene to EPSG:4326 first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tif, geojson = write_scene(render_scene(args.size, args.size, seed=11), Path(tmp) / "scene.tif",
                                   Path(tmp) / "scene.geojson")
        labels, _, utm_wkt = read_vector(geojson)
        if args.geographic:
            gdal.UseExceptions()
            tif = Path(gdal.Warp(str(Path(tmp) / "lonlat.tif"), str(tif), dstSRS="EPSG:4326",
                                 resampleAlg="bilinear").GetDescription())
        points = click_points(labels, tif, utm_wkt)
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=4)
        print(f"{tif.name}: {args.size} x {args.size} px, {len(points)} buildings; {predictor.describe()}")

        warm = ClickSegmenter(predictor, tif)
        warm.segment_at(*points[0])  # model warm-up (first forward pass allocates)
        rng = np.random.default_rng(0)
        first, tiles = [], []
        for i in rng.choice(len(points), size=min(args.first_clicks, len(points)), replace=False):
            result = ClickSegmenter(predictor, tif).segment_at(*points[i])
            first.append(result.seconds)
            tiles.append(result.tiles_run)
        print(f"uncached click:  {stats(first)}, {np.mean(tiles):.1f} tiles predicted per click")

        for point in points:  # every tile of the scene into the cache
            warm.segment_at(*point)
        cached = [warm.segment_at(*point).seconds for point in points]
        hover = [warm.segment_at(*point, run_model=False).seconds for point in points]
        print(f"cached click:    {stats(cached)}")
        print(f"hover preview:   {stats(hover)}")
        verdict = "met" if np.median(cached) < GOAL_S else "NOT met"
        print(f"goal (cached click < {GOAL_S * 1000:.0f} ms on CPU): {verdict}")


if __name__ == "__main__":
    main()
