"""SAMRS-format building sets for tests and demos, made from labelled scenes: no SAMRS file can be redistributed.

A SAMRS subset (``mtp_multitask_spec.md`` §4) is ``images/*.png``, semantic gray PNGs ``gray/*.png`` (class id per
pixel, 255 = background, later instances painted over earlier ones) and a COCO instance json whose masks are
compressed RLE (``counts`` an ASCII string), 0-based image and category ids, ``bbox`` from the mask, ``iscrowd`` 0.

Sources: synthetic suburbs (:mod:`mtp_tools.synthetic`, ``mtp synth --layout samrs``) and the real SpaceNet chips
with their GeoJSON footprints in ``../shared/realdata`` (instances from the polygons)::

    python -m mtp_tools.samrs spacenet ../shared/realdata OUT_DIR [--tile 300]
    python -m mtp_tools.samrs synth OUT_DIR --count 24 --size 256 --seed 0
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import shapely
from osgeo import gdal, ogr, osr

from mtp_core.io import atomic_path, gdal_exceptions
from mtp_tools.synthetic.rasterize import rasterize_polygons
from mtp_tools.synthetic.render import render_scene

BUILDING = ("building",)
ANN_FILE = "instances.json"


@dataclass
class LabelledImage:
    """One image and its instances: ``instances`` (H, W) int, 0 = none, i + 1 = instance i, of class ``classes[i]``."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    instances: np.ndarray
    classes: list[int]


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of an (H, W) bitmap, with ``counts`` as an ASCII string (as SAMRS's json stores it)."""
    import pycocotools.mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_png(array: np.ndarray, path: Path) -> None:
    bands = array[..., None] if array.ndim == 2 else array
    with gdal_exceptions():
        mem = gdal.GetDriverByName("MEM").Create("", bands.shape[1], bands.shape[0], bands.shape[2], gdal.GDT_Byte)
        for i in range(bands.shape[2]):
            mem.GetRasterBand(i + 1).WriteArray(bands[:, :, i])
        with atomic_path(path) as tmp:
            gdal.GetDriverByName("PNG").CreateCopy(str(tmp), mem)
    for aux in path.parent.glob(f"{path.name}.aux.xml"):
        aux.unlink()


def write_samrs(root: str | Path, images: Iterable[LabelledImage], classes: Sequence[str] = BUILDING,
                ann_file: str = ANN_FILE) -> Path:
    """Writes ``root/images``, ``root/gray`` and ``root/ann_file``; returns the json's path."""
    import pycocotools.mask as mask_utils

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "gray").mkdir(parents=True, exist_ok=True)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(classes)]}
    for image_id, item in enumerate(images):
        h, w = item.instances.shape
        if item.image.shape != (h, w, 3) or item.image.dtype != np.uint8:
            raise ValueError(f"{item.name}: the image must be ({h}, {w}, 3) uint8, got {item.image.shape} "
                             f"{item.image.dtype}")
        gray = np.full((h, w), 255, np.uint8)
        for k, label in enumerate(item.classes):
            mask = item.instances == k + 1
            if not mask.any():
                continue
            gray[mask] = label
            rle = encode_mask(mask)
            coco["annotations"].append({
                "id": len(coco["annotations"]), "image_id": image_id, "category_id": int(label),
                "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            })
        file_name = f"{item.name}.png"
        _write_png(item.image, root / "images" / file_name)
        _write_png(gray, root / "gray" / file_name)
        coco["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w,
                               "segm_file": file_name})
    path = root / ann_file
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(coco), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------

def synthetic_images(count: int, size: int, seed: int = 0, name: str = "synth",
                     gsd_m: float = 0.5) -> list[LabelledImage]:
    """``count`` synthetic suburbs of ``size`` px (seeds ``seed`` ...), each building an instance."""
    out = []
    for i in range(count):
        scene = render_scene(size, size, seed + i, gsd_m)
        labels = rasterize_polygons(scene.buildings, size, size)
        out.append(LabelledImage(f"{name}_{seed + i}", scene.image, labels, [0] * len(scene.buildings)))
    return out


def _pixel_polygons(geojson: Path, dataset: gdal.Dataset) -> list:
    """The file's polygons in the raster's pixel coordinates (reprojected when the CRSs differ)."""
    with gdal_exceptions():
        source = ogr.Open(str(geojson))
        layer = source.GetLayer(0)
        target = osr.SpatialReference(wkt=dataset.GetProjection())
        target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        src_srs = layer.GetSpatialRef()
        transform = None
        if src_srs is not None:
            src_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            if not src_srs.IsSame(target, ["CRITERION=EQUIVALENT_EXCEPT_AXIS_ORDER_GEOGCRS"]):
                transform = osr.CoordinateTransformation(src_srs, target)
        x0, dx, _, y0, _, dy = dataset.GetGeoTransform()
        polygons = []
        for feature in layer:
            geometry = feature.GetGeometryRef()
            if geometry is None or geometry.IsEmpty():
                continue
            geometry = geometry.Clone()
            geometry.FlattenTo2D()
            if transform is not None:
                geometry.Transform(transform)
            shape = shapely.from_wkb(bytes(geometry.ExportToWkb()))
            polygons.append(shapely.transform(shape, lambda xy: (xy - (x0, y0)) / (dx, dy)))
    return polygons


def _instances(polygons: Sequence, height: int, width: int) -> np.ndarray:
    """Instance ids 1..n of the polygons that keep pixels (later ones win overlaps), renumbered without gaps."""
    labels = rasterize_polygons(polygons, height, width)
    present = np.unique(labels[labels > 0])
    lut = np.zeros(len(polygons) + 1, np.int32)
    lut[present] = np.arange(1, len(present) + 1)
    return lut[labels]


def _to_uint8(band: np.ndarray) -> np.ndarray:
    valid = band[band > 0]
    low, high = np.percentile(valid, (2, 98)) if valid.size else (0, 1)
    return np.clip((band.astype(np.float64) - low) / max(high - low, 1e-9) * 255, 0, 255).round().astype(np.uint8)


def spacenet_images(realdata: str | Path, tile: int = 300, spacenet1: bool = True) -> list[LabelledImage]:
    """The real building chips of ``realdata``: SpaceNet 1 RGB chips that have buildings (unless ``spacenet1`` is
    False), and the SpaceNet 4 panchromatic chip (stretched to 8 bits, grey as RGB) cut into ``tile`` px tiles."""
    realdata = Path(realdata)
    out = []
    sn1 = realdata / "spacenet1_AOI_0_TEST" / "AOI_0_TEST"
    chips = sorted((sn1 / "3band").glob("3band_*.tif"), key=lambda p: int(p.stem.rsplit("img", 1)[1]))
    for tif in chips if spacenet1 else []:
        chip = tif.stem.removeprefix("3band_")
        with gdal_exceptions():
            ds = gdal.Open(str(tif))
            image = ds.ReadAsArray().transpose(1, 2, 0)
        instances = _instances(_pixel_polygons(sn1 / "vectorData" / "geoJson" / f"{chip}_Geo.geojson", ds),
                               ds.RasterYSize, ds.RasterXSize)
        if instances.max() > 0:
            out.append(LabelledImage(f"sn1_{chip.rsplit('_', 1)[1]}", np.ascontiguousarray(image), instances,
                                     [0] * int(instances.max())))
    with gdal_exceptions():
        ds = gdal.Open(str(realdata / "solaris" / "sample_geotiff.tif"))
        grey = _to_uint8(ds.GetRasterBand(1).ReadAsArray())
    instances = _instances(_pixel_polygons(realdata / "solaris" / "geotiff_labels.geojson", ds),
                           ds.RasterYSize, ds.RasterXSize)
    for y in range(0, grey.shape[0] - tile + 1, tile):
        for x in range(0, grey.shape[1] - tile + 1, tile):
            window = instances[y:y + tile, x:x + tile]
            ids = np.unique(window[window > 0])
            lut = np.zeros(int(instances.max()) + 1, np.int32)
            lut[ids] = np.arange(1, len(ids) + 1)
            rgb = np.repeat(grey[y:y + tile, x:x + tile, None], 3, axis=2)
            out.append(LabelledImage(f"sn4_{y}_{x}", np.ascontiguousarray(rgb), lut[window], [0] * len(ids)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtp_tools.samrs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    real = sub.add_parser("spacenet", help="from the SpaceNet chips and GeoJSON of shared/realdata")
    real.add_argument("realdata", type=Path)
    real.add_argument("out_dir", type=Path)
    real.add_argument("--tile", type=int, default=300, help="tile size of the 900 px SpaceNet 4 chip (default 300)")
    synth = sub.add_parser("synth", help="from synthetic suburbs (mtp_tools.synthetic)")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--count", type=int, default=16)
    synth.add_argument("--size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.source == "spacenet":
        images = spacenet_images(args.realdata, args.tile)
    else:
        images = synthetic_images(args.count, args.size, args.seed)
    path = write_samrs(args.out_dir, images)
    print(f"{path}: {len(images)} images, {sum(len(i.classes) for i in images)} instances")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
