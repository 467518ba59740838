"""GeoTIFF output: a streamed tiled (or Cloud-Optimized) GeoTIFF writer, warping a result back onto a raster's own
grid, and PNG previews. Every file appears complete or not at all (:mod:`mtp_core.io.atomic`)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Sequence

import numpy as np
from osgeo import gdal, gdal_array

from mtp_core.errors import GeoError
from mtp_core.io.atomic import atomic_path
from mtp_core.io.gdal_errors import gdal_exceptions, raises_gdal_errors
from mtp_core.io.raster import RasterInfo, dataset_name, open_raster

_RESAMPLING = {"nearest": "near", "bilinear": "bilinear", "cubic": "cubic", "average": "average", "mode": "mode"}


class GeoTiffWriter:
    """Streams a tiled, compressed GeoTIFF to disk; the file appears, complete, only when the block exits cleanly.

    Writes are buffered until whole rows of tiles are complete, then handed to GDAL and flushed, so memory holds about
    one row of tiles plus the latest write, never the raster, and no compressed tile is written twice. Write in row
    order for that bound; a write above rows already flushed is still correct (GDAL rewrites those tiles).
    On an exception inside the block (a cancel included) the temporary file is removed and no output is left.
    Rows never written read as ``nodata`` (0 when unset). ``cog``: the finished file is a Cloud-Optimized GeoTIFF
    (GDAL's COG driver: overviews made with ``overview_resampling``), ready for QGIS and web viewers at any zoom.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, band_count: int, dtype: np.dtype | str,
                 geotransform: Sequence[float], crs_wkt: str, nodata: float | None = None, block: int = 256,
                 compress: str = "DEFLATE", cog: bool = False, overview_resampling: str = "NEAREST") -> None:
        if width <= 0 or height <= 0 or band_count <= 0:
            raise ValueError(f"raster size must be positive, got {width} x {height} x {band_count} bands")
        if block < 16 or block % 16:
            raise ValueError(f"GeoTIFF tiles are multiples of 16 pixels, got block={block}")
        self.path = Path(path)
        self.width, self.height, self.band_count, self.block = width, height, band_count, block
        self.dtype = np.dtype(dtype)
        self._gdal_type = _gdal_type(self.dtype)
        self.geotransform = tuple(float(v) for v in geotransform)
        self.crs_wkt = crs_wkt
        self.nodata = nodata
        self.compress = compress.upper()
        self.cog, self.overview_resampling = cog, overview_resampling
        self._stack: contextlib.ExitStack | None = None
        self._ds: gdal.Dataset | None = None
        self._next_row = 0  # rows above this one have been handed to GDAL
        self._buffer = np.empty((band_count, 0, width), self.dtype)  # allocated once it is big enough, then reused
        self._written = np.empty((0, width), bool)
        self._used = 0  # buffer rows in play, from _next_row (whole rows of tiles)

    def __enter__(self) -> "GeoTiffWriter":
        stack = contextlib.ExitStack()
        stack.enter_context(gdal_exceptions())
        try:
            self._final_tmp = stack.enter_context(atomic_path(self.path))
        except OSError as exc:
            stack.close()
            raise GeoError(f"cannot write {self.path}: {exc}; choose a writable output folder") from exc
        tmp = self._final_tmp
        if self.cog:  # tiles are written to a plain GeoTIFF first, then copied into the COG layout
            tmp = tmp.with_name(tmp.name + ".tiles.tif")
            stack.callback(tmp.unlink, missing_ok=True)
        try:
            self._ds = _create_geotiff(tmp, self.width, self.height, self.band_count, self._gdal_type,
                                       self.geotransform, self.crs_wkt, self.nodata, self.block, self.compress)
        except BaseException as exc:
            stack.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, RuntimeError):
                raise GeoError(f"cannot create {self.path}: {exc}; check the folder and free disk space") from exc
            raise
        self._tiles_path = tmp
        self._stack = stack
        return self

    def write(self, array: np.ndarray, x_off: int, y_off: int) -> None:
        """Writes ``array`` ((bands, h, w), or (h, w) for one band) with its top-left pixel at (x_off, y_off)."""
        if self._ds is None:
            raise RuntimeError("GeoTiffWriter.write is only valid inside its with-block")
        a = np.asarray(array)
        a = a[None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[0] != self.band_count:
            raise ValueError(f"expected ({self.band_count}, h, w) or (h, w) for one band, got shape {np.shape(array)}")
        _, h, w = a.shape
        if x_off < 0 or y_off < 0 or x_off + w > self.width or y_off + h > self.height:
            raise ValueError(f"window ({x_off}, {y_off}, {w}, {h}) is outside the {self.width} x {self.height} raster")
        if not np.can_cast(a.dtype, self.dtype, "same_kind"):
            raise ValueError(f"cannot store {a.dtype} in a {self.dtype} raster without changing values; convert "
                             f"it first (round/clip, then .astype(np.{self.dtype}))")
        if y_off < self._next_row:  # rows already flushed: GDAL re-reads and rewrites those tiles
            above = min(self._next_row - y_off, h)
            self._write_gdal(a[:, :above], x_off, y_off)
            a, y_off, h = a[:, above:], y_off + above, h - above
            if h == 0:
                return
        self._grow_buffer(y_off + h - self._next_row)
        r = y_off - self._next_row
        self._buffer[:, r:r + h, x_off:x_off + w] = a
        self._written[r:r + h, x_off:x_off + w] = True
        self._flush_complete_rows()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        stack, self._stack = self._stack, None
        try:
            if exc_type is None:
                self._emit(self._used)
                self._ds.FlushCache()
                self._ds = None  # closes the file before it is converted or renamed
                if self.cog:
                    _to_cog(self._tiles_path, self._final_tmp, self.overview_resampling, self.compress)
        except BaseException as failure:
            self._ds = None
            stack.__exit__(type(failure), failure, failure.__traceback__)
            if isinstance(failure, RuntimeError):
                raise GeoError(f"cannot write {self.path}: {failure}; check the free disk space") from failure
            raise
        self._ds = None  # closes the file before it is renamed (or removed)
        return bool(stack.__exit__(exc_type, exc, tb))

    def _grow_buffer(self, rows: int) -> None:
        rows = -(-rows // self.block) * self.block
        if rows > self._buffer.shape[1]:
            fill = 0 if self.nodata is None else self.nodata
            buffer = np.full((self.band_count, rows, self.width), fill, self.dtype)
            written = np.zeros((rows, self.width), bool)
            buffer[:, :self._used] = self._buffer[:, :self._used]
            written[:self._used] = self._written[:self._used]
            self._buffer, self._written = buffer, written
        self._used = max(self._used, rows)

    def _flush_complete_rows(self) -> None:
        done = self._written[:self._used].all(axis=1)
        complete = done.size if done.all() else int(np.argmin(done))
        if self._next_row + complete < self.height:
            complete -= complete % self.block  # only whole rows of tiles, so no tile is compressed twice
        if complete:
            self._emit(complete)
            self._ds.FlushCache()  # the finished tiles leave GDAL's block cache

    def _emit(self, rows: int) -> None:
        """Hands the first ``rows`` buffered rows to GDAL; the rows below move up in the same buffer."""
        rows = min(rows, self.height - self._next_row)
        if rows <= 0:
            return
        self._write_gdal(self._buffer[:, :rows], 0, self._next_row)
        left = max(self._used - rows, 0)
        self._buffer[:, :left] = self._buffer[:, rows:rows + left].copy()
        self._written[:left] = self._written[rows:rows + left]
        self._buffer[:, left:self._used] = 0 if self.nodata is None else self.nodata
        self._written[left:self._used] = False
        self._used = left
        self._next_row += rows

    def _write_gdal(self, a: np.ndarray, x_off: int, y_off: int) -> None:
        self._ds.WriteArray(np.ascontiguousarray(a, self.dtype), x_off, y_off)


@raises_gdal_errors
def warp_to_grid(src_path: str | os.PathLike, dst_path: str | os.PathLike, like: RasterInfo,
                 resampling: str = "nearest", cog: bool = True) -> Path:
    """Resamples a raster made on the model grid onto ``like``'s grid and CRS, written atomically as a GeoTIFF
    (a Cloud-Optimized one unless ``cog`` is False).

    ``nearest`` keeps class ids exact; ``bilinear`` suits probabilities. Source nodata stays nodata and pixels of
    ``like`` outside the source's footprint become nodata (0 when the source has none). Rotated grids work too.
    """
    alg = _RESAMPLING.get(resampling)
    if alg is None:
        raise GeoError(f"unknown resampling {resampling!r}; use one of {sorted(_RESAMPLING)}")
    if not like.has_georeference:
        raise GeoError(f"{like.path} has no georeference, so there is no grid to warp onto; keep the model-grid output")
    src = open_raster(dataset_name(src_path))
    if src.GetGeoTransform(can_return_null=True) is None or src.GetSpatialRef() is None:
        raise GeoError(f"{src_path} has no georeference; it must be the model-grid output written with its CRS")
    band = src.GetRasterBand(1)
    nodata = band.GetNoDataValue()
    try:
        with atomic_path(dst_path) as tmp:
            tiles = tmp.with_name(tmp.name + ".tiles.tif") if cog else tmp
            try:
                dst = _create_geotiff(tiles, like.width, like.height, src.RasterCount, band.DataType,
                                      like.geotransform, like.crs_wkt, nodata, 256, "DEFLATE")
                gdal.Warp(dst, src, resampleAlg=alg, warpOptions=["INIT_DEST=NO_DATA", "OPTIMIZE_SIZE=TRUE"])
                dst.FlushCache()
                dst = None
                if cog:
                    _to_cog(tiles, tmp, "NEAREST" if resampling == "nearest" else "AVERAGE", "DEFLATE")
            finally:
                if cog:
                    tiles.unlink(missing_ok=True)
    except OSError as exc:
        raise GeoError(f"cannot write {dst_path}: {exc}; choose a writable output folder") from exc
    return Path(dst_path)



def _create_geotiff(path: Path, width: int, height: int, bands: int, gdal_type: int, geotransform: Sequence[float],
                    crs_wkt: str, nodata: float | None, block: int, compress: str) -> gdal.Dataset:
    """A tiled GeoTIFF; DEFLATE at level 1 (about 7x faster than the default level on probabilities, ~20 % larger),
    with the horizontal predictor that suits the data type."""
    options = ["TILED=YES", f"BLOCKXSIZE={block}", f"BLOCKYSIZE={block}", f"COMPRESS={compress}",
               "BIGTIFF=IF_SAFER"]
    if compress in ("DEFLATE", "LZW", "ZSTD"):
        floating = gdal.GetDataTypeName(gdal_type).startswith("Float")
        options.append(f"PREDICTOR={3 if floating else 2}")
    if compress == "DEFLATE":
        options.append("ZLEVEL=1")
    if bands > 1:
        options.append("INTERLEAVE=PIXEL")
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, gdal_type, options)
    ds.SetGeoTransform(tuple(geotransform))
    if crs_wkt:
        ds.SetProjection(crs_wkt)
    if nodata is not None:
        for b in range(1, bands + 1):
            ds.GetRasterBand(b).SetNoDataValue(float(nodata))
    return ds


def _to_cog(tiles: Path, dst: Path, overview_resampling: str, compress: str) -> None:
    """A Cloud-Optimized GeoTIFF copy of a tiled GeoTIFF (GDAL streams it: memory does not grow with its size)."""
    options = [f"COMPRESS={compress}", "BLOCKSIZE=256", "BIGTIFF=IF_SAFER",
               f"OVERVIEW_RESAMPLING={overview_resampling}"]
    if compress in ("DEFLATE", "LZW", "ZSTD"):
        options.append("PREDICTOR=YES")
    if compress == "DEFLATE":
        options.append("LEVEL=1")
    gdal.Translate(str(dst), str(tiles), format="COG", creationOptions=options)


def _gdal_type(dtype: np.dtype) -> int:
    code = None if dtype == np.int8 else gdal_array.NumericTypeCodeToGDALTypeCode(dtype)  # GDAL 3.6 maps int8 to Byte
    if code is None:
        raise ValueError(f"GeoTIFF cannot store dtype {dtype}; use uint8, int16, uint16, int32, uint32, float32 "
                         f"or float64")
    return code


@raises_gdal_errors
def write_rgb_png(rgb: np.ndarray, path: str | Path) -> Path:
    """An (H, W, 3) uint8 image as a PNG (previews, prediction overlays), atomically and without a .aux.xml."""
    mem = gdal.GetDriverByName("MEM").Create("", rgb.shape[1], rgb.shape[0], 3, gdal.GDT_Byte)
    for band in range(3):
        mem.GetRasterBand(band + 1).WriteArray(rgb[:, :, band])
    with atomic_path(path) as tmp:
        gdal.GetDriverByName("PNG").CreateCopy(str(tmp), mem, options=["WORLDFILE=NO"])
        Path(str(tmp) + ".aux.xml").unlink(missing_ok=True)
    return Path(path)
