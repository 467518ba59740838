"""Synthetic scenes as files: a north-up GeoTIFF and a GeoJSON of the buildings (flat or SpaceNet v1 layout)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import shapely
from osgeo import gdal, ogr, osr
from shapely.geometry import Polygon

from mtp_core.io import atomic_path, gdal_exceptions
from mtp_tools.synthetic.render import Scene, apply_affine, render_scene


def write_scene(scene: Scene, tif_path: str | os.PathLike, geojson_path: str | os.PathLike | None = None,
                epsg: int = 32633, origin: tuple[float, float] = (500000.0, 4_500_000.0)) -> tuple[Path, Path | None]:
    """Writes the image as a north-up GeoTIFF and, if asked, the buildings as GeoJSON in the same CRS.

    ``origin`` is the map position of the image's top-left corner; the pixel size is ``scene.gsd_m`` CRS units.
    Both files go through :func:`mtp_core.io.atomic_path`, so a reader never sees a half-written file.
    """
    with gdal_exceptions():  # a failed write must raise, not leave a half-made file behind
        return _write_scene(scene, tif_path, geojson_path, epsg, origin)


def _write_scene(scene: Scene, tif_path: str | os.PathLike, geojson_path: str | os.PathLike | None, epsg: int,
                 origin: tuple[float, float]) -> tuple[Path, Path | None]:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    with atomic_path(tif_path) as tmp:
        write_geotiff(tmp, scene.image, (origin[0], scene.gsd_m, 0.0, origin[1], 0.0, -scene.gsd_m), srs)
    if geojson_path is None:
        return Path(tif_path), None
    to_map = np.array([[scene.gsd_m, 0.0, origin[0]], [0.0, -scene.gsd_m, origin[1]], [0.0, 0.0, 1.0]])
    with atomic_path(geojson_path) as tmp:
        tmp.unlink()  # the GeoJSON driver refuses to write over a file, even an empty one
        write_geojson(tmp, [apply_affine(to_map, p) for p in scene.buildings], srs)
    return Path(tif_path), Path(geojson_path)


def write_geotiff(path: Path, image: np.ndarray, geotransform: tuple, srs: osr.SpatialReference) -> None:
    """An RGB uint8 image as a tiled, compressed GeoTIFF (call inside ``gdal_exceptions``)."""
    height, width, bands = image.shape
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), width, height, bands, gdal.GDT_Byte,
        ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=2", "PHOTOMETRIC=RGB"])
    ds.SetGeoTransform(geotransform)
    ds.SetProjection(srs.ExportToWkt())
    for band in range(bands):
        ds.GetRasterBand(band + 1).WriteArray(image[:, :, band])
    ds.FlushCache()
    ds = None  # closing is what completes the file


def write_geojson(path: Path, polygons: list[Polygon], srs: osr.SpatialReference,
                  kinds: list[str] | None = None) -> None:
    """Polygons with ``id`` (1-based), ``class`` and, when given, ``kind`` (e.g. new / demolished); RFC7946=NO keeps
    the projected CRS and names it in ``crs``."""
    ds = ogr.GetDriverByName("GeoJSON").CreateDataSource(str(path))
    layer = ds.CreateLayer("changes" if kinds is not None else "buildings", srs, ogr.wkbPolygon,
                           ["RFC7946=NO", "COORDINATE_PRECISION=6"])
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    if kinds is not None:
        layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    for i, polygon in enumerate(polygons):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("id", i + 1)
        feature.SetField("class", "building")
        if kinds is not None:
            feature.SetField("kind", kinds[i])
        feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(polygon)))
        layer.CreateFeature(feature)
    ds = None  # closing is what completes the file


def generate_scene_files(out_dir: str | os.PathLike, name: str, height: int, width: int, seed: int,
                         gsd_m: float = 0.5, epsg: int = 32633) -> tuple[Path, Path]:
    """Renders one scene and writes ``out_dir/name.tif`` and ``out_dir/name.geojson``."""
    tif, geojson = Path(out_dir) / f"{name}.tif", Path(out_dir) / f"{name}.geojson"
    write_scene(render_scene(height, width, seed, gsd_m), tif, geojson, epsg=epsg)
    return tif, geojson
