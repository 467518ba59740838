"""``mtp demo`` (what ``make demo`` runs): the main job end to end on a synthetic scene with the embedded model, then
the embedded instance model on a scene whose buildings touch (semantic-only and instance polygon F1).

A fixed-seed synthetic 0.5 m scene (GeoTIFF in UTM + its building labels) goes through the main job
(:func:`mtp_core.pipeline.extract_buildings`, what ``mtp predict`` runs);
the run prints the device, tiles/s, km²/s, the buildings found and the polygon F1 against the labels, and leaves the
mask, the GeoPackage and a preview PNG (image, predicted outlines in yellow, label outlines in cyan) in the output
folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import shapely
from osgeo import gdal, ogr, osr

from mtp_core.cli.predict import progress_printer
from mtp_core.inference import Predictor
from mtp_core.io import gdal_exceptions, read_vector, write_rgb_png
from mtp_core.metrics import polygon_f1
from mtp_core.pipeline import extract_buildings
from mtp_core.weights import DEMO_CHECKPOINT

NAME = "demo"
TOUCHING_SEED = 424299  # never seen by the demo instance model (trained on 2000-2099, 3000-3039)

PREDICTED_RGB = (255, 230, 0)
LABEL_RGB = (0, 220, 255)


def _outline_mask(geometries: Sequence, geotransform: tuple, crs_wkt: str, width: int, height: int) -> np.ndarray:
    """Pixels touched by the polygons' boundaries, rasterized with GDAL on the raster grid."""
    raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(geotransform)
    raster.SetProjection(crs_wkt)
    srs = osr.SpatialReference(wkt=crs_wkt)
    source = ogr.GetDriverByName("Memory").CreateDataSource("")  # must outlive the layer (GDAL owns it)
    layer = source.CreateLayer("outlines", srs, ogr.wkbMultiLineString)
    for geometry in geometries:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(shapely.boundary(geometry))))
        layer.CreateFeature(feature)
    gdal.RasterizeLayer(raster, [1], layer, burn_values=[1], options=["ALL_TOUCHED=TRUE"])
    return raster.GetRasterBand(1).ReadAsArray().astype(bool)


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(NAME, help="the main job on a synthetic scene with the embedded model (what `make demo` runs)",
                   add_help=False)


def write_preview(tif: Path, predicted: Sequence, labels: Sequence, png: Path) -> Path:
    dataset = gdal.Open(str(tif))
    image = np.stack([dataset.GetRasterBand(b + 1).ReadAsArray() for b in range(3)], axis=-1)
    grid = (dataset.GetGeoTransform(), dataset.GetProjection(), dataset.RasterXSize, dataset.RasterYSize)
    image[_outline_mask(labels, *grid)] = LABEL_RGB
    image[_outline_mask(predicted, *grid)] = PREDICTED_RGB
    return write_rgb_png(image, png)


def main(argv: Sequence[str] | None = None) -> int:
    from mtp_tools.synthetic import render_scene, write_scene

    parser = argparse.ArgumentParser(prog="mtp demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--size", type=int, default=2048, help="scene size in pixels (default 2048 = 1.05 km²)")
    parser.add_argument("--seed", type=int, default=20241127)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    scene = render_scene(args.size, args.size, args.seed)
    tif, labels_path = write_scene(scene, args.out / "demo_scene.tif", args.out / "demo_scene_labels.geojson")
    print(f"scene: {tif} ({args.size}x{args.size} px at {scene.gsd_m} m, {len(scene.buildings)} labelled buildings)")
    predictor = Predictor.from_checkpoint(DEMO_CHECKPOINT, device=args.device)
    print(f"device: {predictor.describe()}")
    result = extract_buildings(predictor, tif, args.out, regularize=True, progress=progress_printer(tif.name))
    stats, km2 = result.prediction.stats, result.prediction.km2
    print(f"{tif.name}: {stats.tiles_run} tiles in {stats.seconds:.1f} s ({stats.tiles_per_s:.1f} tiles/s, "
          f"{km2 / stats.seconds:.3f} km²/s); {result.buildings} buildings -> {result.vector_path}, {result.mask_path}")
    predicted, attributes, crs = read_vector(result.vector_path)
    labels, _, _ = read_vector(labels_path, target_crs_wkt=crs)
    # SpaceNet's rules: IoU > 0.5, proposals in score order; 20 px² at 0.5 m = 5 m² minimum area
    result = polygon_f1(predicted, labels, confidences=attributes.get("score"), min_area=5.0)
    print(f"polygon F1 against the labels: {result.f1:.3f} (precision {result.precision:.3f}, recall "
          f"{result.recall:.3f}; TP {result.tp}, FP {result.fp}, FN {result.fn})")
    with gdal_exceptions():
        preview = write_preview(tif, predicted, labels, args.out / "demo_preview.png")
    print(f"preview: {preview} (yellow: predicted, cyan: labels)")
    touching_demo(args.out, args.device)
    return 0


def touching_demo(out: Path, device: str, size: int = 1024) -> None:
    """The demo instance model on a scene where half the buildings share a wall: the semantic-only polygons (one per
    region, so a terrace is one) against the instance polygons (one per house), both scored against the labels."""
    from mtp_core.weights import DEMO_INSTANCES_CHECKPOINT
    from mtp_tools.touching_compare import compare, summary_line

    instances = Predictor.from_checkpoint(DEMO_INSTANCES_CHECKPOINT, device=device)
    semantic = Predictor.from_checkpoint(DEMO_INSTANCES_CHECKPOINT, device=device, instances=False)
    folder = out / "touching"
    scene = compare(semantic, instances, [TOUCHING_SEED], size, 0.5, folder)[0]
    print(f"touching scene: {folder / f'touching_{TOUCHING_SEED}.tif'} ({scene.buildings} buildings, "
          f"{scene.touching:.0%} sharing a wall); semantic-only {scene.semantic.tp + scene.semantic.fp} polygons, "
          f"instances {scene.instances.tp + scene.instances.fp}")
    tif, labels_path = folder / f"touching_{TOUCHING_SEED}.tif", folder / f"touching_{TOUCHING_SEED}.geojson"
    predicted, _, crs = read_vector(folder / "instances" / f"touching_{TOUCHING_SEED}_buildings.gpkg")
    labels, _, _ = read_vector(labels_path, target_crs_wkt=crs)
    with gdal_exceptions():
        preview = write_preview(tif, predicted, labels, out / "demo_touching_preview.png")
    print(f"preview: {preview} (yellow: instances, cyan: labels)")
    print(summary_line([scene]))

