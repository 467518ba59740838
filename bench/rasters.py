"""Large synthetic GeoTIFFs for benchmarks, written block by block (a 16k x 16k raster never sits in memory)."""
from __future__ import annotations

from pathlib import Path

from mtp_core.io import GeoTiffWriter
from mtp_tools.synthetic import render_scene

BLOCK = 1024


def synthetic_raster(path: Path, size: int, seed: int = 0) -> Path:
    """A size x size 0.5 m UTM GeoTIFF tiled with a few different 1024 px synthetic scenes."""
    if path.exists():
        return path
    scenes = [render_scene(BLOCK, BLOCK, seed + i).image for i in range(4)]
    crs = 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32633"]]'  # noqa: E501
    with GeoTiffWriter(path, width=size, height=size, band_count=3, dtype="uint8",
                       geotransform=(500000.0, 0.5, 0.0, 4500000.0, 0.0, -0.5), crs_wkt=crs) as out:
        for i, y in enumerate(range(0, size, BLOCK)):
            for j, x in enumerate(range(0, size, BLOCK)):
                block = scenes[(i + j) % len(scenes)][: size - y, : size - x]
                out.write(block.transpose(2, 0, 1), x, y)
    return path
