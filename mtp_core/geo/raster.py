"""GDAL raster access for the inference engine: describe a raster, plan how a model sees it, read windows, stream a
GeoTIFF out, and warp a result back onto the source grid.

Why a read plan: a model is trained at one ground resolution in metres. A raster in degrees, or far from that
resolution, is read through an in-memory GDAL warped VRT in a metric CRS (the raster's own if projected, else the
UTM zone of its centre) at exactly the model's resolution, north-up; GDAL then warps only the windows that are read,
so nothing of the raster's size is held in memory. Results produced on that model grid go back to the raster's own
grid with :func:`warp_to_grid`, so outputs are delivered in the layer's CRS.

Validity: :func:`read_window` returns the pixels and a boolean ``valid`` mask. A pixel is invalid when every band
read is nodata (GDAL's mask bands: nodata values, alpha band or internal mask), when any band is NaN/inf, or when it
lies outside the source footprint (warped reads) or outside the raster (boundless windows). Invalid pixels read as 0.

Threads: a ``gdal.Dataset`` handle must only be used by one thread at a time. A background reader thread gets its
own handle from :meth:`ReadPlan.reopen`; the plan's ``dataset`` belongs to the thread that made the plan.

This module turns on GDAL/OSR Python exceptions (``gdal.UseExceptions()``), as the rest of the project does.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Sequence, Union

import numpy as np
from osgeo import gdal, gdal_array, osr

from mtp_core.io_utils import atomic_path

gdal.UseExceptions()
osr.UseExceptions()

#: Geotransform QGIS gives a raster without one (row 0 on top, y growing upwards); pixel-unit outputs use it too,
#: so they overlay the raster where QGIS draws it.
PIXEL_GEOTRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

#: Map grids built for surveying (UTM, national grids) keep their scale error under 0.1 %: their units are taken as
#: ground metres. Beyond this relative error (web Mercator: 41 % at 45° latitude) the ground size is measured instead.
_SCALE_ERROR_LIMIT = 0.01

_RESAMPLING = {"nearest": "near", "bilinear": "bilinear", "cubic": "cubic", "average": "average", "mode": "mode"}


class GeoError(ValueError):
    """Bad geodata input or output: the message says what is wrong and what to do about it."""


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about a raster, read once from its header.

    ``pixel_size_m`` is the ground size of a pixel (along columns, along rows) at the raster centre in metres, also
    for rasters in degrees. Without georeference (``--pixel-crs``) ``crs_wkt`` is '', the geotransform is the
    raster's own or :data:`PIXEL_GEOTRANSFORM`, and ``pixel_size_m`` is the geotransform's pixel size in its
    unknown units.
    """

    path: str
    width: int
    height: int
    band_count: int
    dtype: str
    nodata: tuple[float | None, ...]
    crs_wkt: str
    epsg: int | None
    geotransform: tuple[float, float, float, float, float, float]
    is_geographic: bool
    pixel_size_m: tuple[float, float]
    bounds: tuple[float, float, float, float]
    has_georeference: bool


def describe_raster(path: str | os.PathLike, allow_pixel_crs: bool = False) -> RasterInfo:
    """Reads a raster's header: size, bands, dtype, nodata, CRS and ground pixel size.

    Raises :class:`GeoError` for a missing/unreadable file, a non-raster, an empty raster, and (unless
    ``allow_pixel_crs``) a raster without georeference, since distances and positions would be meaningless.
    """
    name = _dataset_name(path)
    ds = open_raster(name)
    width, height, count = ds.RasterXSize, ds.RasterYSize, ds.RasterCount
    if width == 0 or height == 0 or count == 0:
        subs = [s for s, _ in ds.GetSubDatasets()]
        hint = f"open one of its subdatasets instead: {', '.join(subs[:5])}" if subs else "check the file"
        raise GeoError(f"{name} holds no pixels ({width} x {height}, {count} bands); {hint}")
    dtype = _band_dtype(ds, name)
    nodata = tuple(ds.GetRasterBand(b).GetNoDataValue() for b in range(1, count + 1))
    gt = ds.GetGeoTransform(can_return_null=True)
    srs = ds.GetSpatialRef()
    has_georeference = gt is not None and srs is not None
    if not has_georeference and not allow_pixel_crs:
        raise GeoError(_no_georeference_message(name, ds, gt is not None))
    if has_georeference:
        geotransform = tuple(float(v) for v in gt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        crs_wkt, epsg, is_geographic = srs.ExportToWkt(), _epsg(srs), bool(srs.IsGeographic())
        pixel_size_m = _ground_pixel_size(srs, geotransform, width, height)
    else:
        geotransform = tuple(float(v) for v in gt) if gt is not None else PIXEL_GEOTRANSFORM
        crs_wkt, epsg, is_geographic = "", None, False
        pixel_size_m = _nominal_pixel_size(geotransform)
    return RasterInfo(name, width, height, count, dtype, nodata, crs_wkt, epsg, geotransform, is_geographic,
                      pixel_size_m, _bounds(geotransform, width, height), has_georeference)


def open_raster(name: str) -> gdal.Dataset:
    """Opens a raster read-only, turning GDAL's terse failures into messages that say what to do."""
    try:
        return gdal.OpenEx(name, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError as exc:
        raise GeoError(_open_failure(name, str(exc))) from exc


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone containing (lon, lat): 326zz north of the equator, 327zz south.

    Plain 6° zones (no Norway/Svalbard exceptions): the zone only has to be metric and near the raster.
    """
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise GeoError(f"({lon}, {lat}) is not a longitude/latitude in degrees; check the raster's CRS")
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


@dataclass
class ReadPlan:
    """How a model reads a raster: the grid it sees (size, geotransform, CRS) and an open handle on it.

    ``warped`` plans read through an in-memory warped VRT (``vrt_xml`` describes it); results made on this grid
    go back to the source grid with ``warp_to_grid(..., like=plan.info)``. A warped VRT of a source without nodata
    has one extra band, an alpha band marking the footprint; read the source's band numbers as usual.
    """

    dataset: gdal.Dataset
    width: int
    height: int
    geotransform: tuple[float, float, float, float, float, float]
    crs_wkt: str
    warped: bool
    info: RasterInfo
    vrt_xml: str = ""

    def reopen(self) -> gdal.Dataset:
        """A new handle on the same pixels, for another thread (GDAL handles are not thread-safe)."""
        return gdal.Open(self.vrt_xml) if self.warped else open_raster(self.info.path)


def plan_read(info: RasterInfo, target_gsd_m: float | None, tolerance: float = 1.25) -> ReadPlan:
    """Decides whether the model reads the raster directly or through a warped VRT, and opens it.

    Warps when the CRS is geographic (into the UTM zone of the centre) or when a pixel side differs from
    ``target_gsd_m`` by more than a factor ``tolerance`` (into the raster's own CRS). The warped grid is north-up,
    aligned on multiples of the pixel size, at exactly ``target_gsd_m`` ground metres (bilinear); with
    ``target_gsd_m=None`` projected rasters are read as they are and geographic ones are warped at their own finest
    ground pixel size. Rasters without georeference are never warped.
    """
    if target_gsd_m is not None and not target_gsd_m > 0:
        raise GeoError(f"the model's ground resolution must be positive metres, got {target_gsd_m}")
    if not tolerance >= 1.0:
        raise GeoError(f"tolerance is a ratio >= 1 (1.25 = up to 25 % off), got {tolerance}")
    if not info.has_georeference:
        return _direct_plan(info)
    if info.is_geographic:
        gsd = target_gsd_m if target_gsd_m is not None else min(info.pixel_size_m)
        lon, lat = _centre_lonlat(info)
        dst = osr.SpatialReference()
        dst.ImportFromEPSG(utm_epsg(lon, lat))
        return _warped_plan(info, dst.ExportToWkt(), (gsd, gsd), gsd)
    if target_gsd_m is None or all(1.0 / tolerance <= size / target_gsd_m <= tolerance for size in info.pixel_size_m):
        return _direct_plan(info)
    units = _nominal_pixel_size(info.geotransform)
    metres_per_unit = [m / u for m, u in zip(info.pixel_size_m, units)]
    return _warped_plan(info, info.crs_wkt, tuple(target_gsd_m / k for k in metres_per_unit), target_gsd_m)


Source = Union[ReadPlan, gdal.Dataset]


def read_window(source: Source, x: int, y: int, w: int, h: int,
                bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Reads the window (x, y, w, h) of ``bands`` (1-based) as ``(len(bands), h, w)`` in the source dtype.

    The window may extend past the raster (boundless): pixels outside read 0 with ``valid`` False. See the module
    docstring for what makes a pixel invalid. Use a handle owned by the calling thread.
    """
    ds = source.dataset if isinstance(source, ReadPlan) else source
    count = source.info.band_count if isinstance(source, ReadPlan) else ds.RasterCount  # not a warp's alpha band
    bands = [int(b) for b in bands]
    if not bands or any(not 1 <= b <= count for b in bands):
        raise GeoError(f"band numbers {bands} are out of range: the raster has bands 1..{count}")
    if w <= 0 or h <= 0:
        raise ValueError(f"window size must be positive, got {w} x {h}")
    dtype = gdal_array.GDALTypeCodeToNumericTypeCode(ds.GetRasterBand(bands[0]).DataType)
    data = np.zeros((len(bands), h, w), dtype)
    valid = np.zeros((h, w), bool)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, ds.RasterXSize), min(y + h, ds.RasterYSize)
    if x1 <= x0 or y1 <= y0:
        return data, valid
    inner = ds.ReadAsArray(x0, y0, x1 - x0, y1 - y0, band_list=bands).reshape(len(bands), y1 - y0, x1 - x0)
    ok = _valid_pixels(ds, bands, x0, y0, inner)
    inner[:, ~ok] = 0
    data[:, y0 - y:y1 - y, x0 - x:x1 - x] = inner
    valid[y0 - y:y1 - y, x0 - x:x1 - x] = ok
    return data, valid


class GeoTiffWriter:
    """Streams a tiled, compressed GeoTIFF to disk; the file appears, complete, only when the block exits cleanly.

    Writes are buffered until whole rows of tiles are complete, then handed to GDAL and flushed, so memory holds about
    one row of tiles plus the latest write, never the raster, and no compressed tile is written twice. Write in row
    order for that bound; a write above rows already flushed is still correct (GDAL rewrites those tiles).
    On an exception inside the block (a cancel included) the temporary file is removed and no output is left.
    Rows never written read as ``nodata`` (0 when unset).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, band_count: int, dtype: np.dtype | str,
                 geotransform: Sequence[float], crs_wkt: str, nodata: float | None = None, block: int = 256,
                 compress: str = "DEFLATE") -> None:
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
        self._stack: contextlib.ExitStack | None = None
        self._ds: gdal.Dataset | None = None
        self._next_row = 0  # rows above this one have been handed to GDAL
        self._buffer = np.empty((band_count, 0, width), self.dtype)  # allocated once it is big enough, then reused
        self._written = np.empty((0, width), bool)
        self._used = 0  # buffer rows in play, from _next_row (whole rows of tiles)

    def __enter__(self) -> "GeoTiffWriter":
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))
        except OSError as exc:
            raise GeoError(f"cannot write {self.path}: {exc}; choose a writable output folder") from exc
        try:
            self._ds = _create_geotiff(tmp, self.width, self.height, self.band_count, self._gdal_type,
                                       self.geotransform, self.crs_wkt, self.nodata, self.block, self.compress)
        except BaseException as exc:
            stack.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, RuntimeError):
                raise GeoError(f"cannot create {self.path}: {exc}; check the folder and free disk space") from exc
            raise
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
        except BaseException as failure:
            self._ds = None
            stack.__exit__(type(failure), failure, failure.__traceback__)
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


def warp_to_grid(src_path: str | os.PathLike, dst_path: str | os.PathLike, like: RasterInfo,
                 resampling: str = "nearest") -> Path:
    """Resamples a raster made on the model grid onto ``like``'s grid and CRS, written atomically as a GeoTIFF.

    ``nearest`` keeps class ids exact; ``bilinear`` suits probabilities. Source nodata stays nodata and pixels of
    ``like`` outside the source's footprint become nodata (0 when the source has none). Rotated grids work too.
    """
    alg = _RESAMPLING.get(resampling)
    if alg is None:
        raise GeoError(f"unknown resampling {resampling!r}; use one of {sorted(_RESAMPLING)}")
    if not like.has_georeference:
        raise GeoError(f"{like.path} has no georeference, so there is no grid to warp onto; keep the model-grid output")
    src = open_raster(_dataset_name(src_path))
    if src.GetGeoTransform(can_return_null=True) is None or src.GetSpatialRef() is None:
        raise GeoError(f"{src_path} has no georeference; it must be the model-grid output written with its CRS")
    band = src.GetRasterBand(1)
    nodata = band.GetNoDataValue()
    try:
        with atomic_path(dst_path) as tmp:
            dst = _create_geotiff(tmp, like.width, like.height, src.RasterCount, band.DataType, like.geotransform,
                                  like.crs_wkt, nodata, 256, "DEFLATE")
            gdal.Warp(dst, src, resampleAlg=alg, warpOptions=["INIT_DEST=NO_DATA", "OPTIMIZE_SIZE=TRUE"])
            dst.FlushCache()
            dst = None
    except OSError as exc:
        raise GeoError(f"cannot write {dst_path}: {exc}; choose a writable output folder") from exc
    return Path(dst_path)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _dataset_name(path: str | os.PathLike) -> str:
    """Absolute path for files (so reopened handles and VRTs find them); GDAL names (/vsi..., GPKG:...) as given."""
    name = os.fspath(path)
    return os.path.abspath(name) if os.path.exists(name) else name


def _open_failure(name: str, gdal_message: str) -> str:
    gdal_syntax = name.startswith("/vsi") or re.match(r"[A-Za-z][A-Za-z0-9_]+:", name)  # not C:\... drive letters
    if not os.path.exists(name) and not gdal_syntax:
        return f"raster not found: {name}; check the path"
    if os.path.isdir(name):
        return f"{name} is a folder, not a raster file; give the image file inside it"
    if os.path.exists(name) and not os.access(name, os.R_OK):
        return f"cannot read {name}: permission denied; check the file's permissions"
    try:
        vector = gdal.OpenEx(name, gdal.OF_VECTOR)
    except RuntimeError:
        vector = None
    if vector is not None:
        return f"{name} is a vector dataset, not a raster; give an image (GeoTIFF or any raster GDAL reads)"
    return (f"GDAL cannot read {name} as a raster ({gdal_message}); check that the file is complete, or convert it "
            f"to GeoTIFF with gdal_translate")


def _no_georeference_message(name: str, ds: gdal.Dataset, has_geotransform: bool) -> str:
    if not has_geotransform and (ds.GetGCPCount() or ds.GetMetadata("RPC")):
        return (f"{name} is georeferenced only by ground control points or RPCs, not by a geotransform; make a "
                f"north-up copy first (gdalwarp -r bilinear [-rpc] in.tif out.tif), or use --pixel-crs to go on "
                f"in pixel units")
    missing = "CRS" if has_geotransform else "geotransform or CRS"
    return (f"{name} has no georeference (no {missing}); assign its CRS (QGIS: Raster > Projections > Assign "
            f"Projection, or gdal_edit.py -a_srs EPSG:<code>), or use --pixel-crs to go on in pixel units")


def _band_dtype(ds: gdal.Dataset, name: str) -> str:
    types = {ds.GetRasterBand(b).DataType for b in range(1, ds.RasterCount + 1)}
    if len(types) > 1:
        raise GeoError(f"{name} mixes band data types ({sorted(gdal.GetDataTypeName(t) for t in types)}); "
                       f"convert it to one type with gdal_translate -ot")
    code = gdal_array.GDALTypeCodeToNumericTypeCode(types.pop())
    if code is None:
        raise GeoError(f"{name} has a band type numpy cannot hold; convert it with gdal_translate -ot Float32")
    return np.dtype(code).name


def _gdal_type(dtype: np.dtype) -> int:
    code = None if dtype == np.int8 else gdal_array.NumericTypeCodeToGDALTypeCode(dtype)  # GDAL 3.6 maps int8 to Byte
    if code is None:
        raise ValueError(f"GeoTIFF cannot store dtype {dtype}; use uint8, int16, uint16, int32, uint32, float32 "
                         f"or float64")
    return code


def _epsg(srs: osr.SpatialReference) -> int | None:
    if srs.GetAuthorityName(None) == "EPSG" and srs.GetAuthorityCode(None):
        return int(srs.GetAuthorityCode(None))
    guess = srs.Clone()
    try:
        guess.AutoIdentifyEPSG()
    except RuntimeError:
        return None
    code = guess.GetAuthorityCode(None)
    return int(code) if code else None


def _apply(gt: Sequence[float], col: float, row: float) -> tuple[float, float]:
    return gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]


def _bounds(gt: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    xs, ys = zip(*(_apply(gt, c, r) for c in (0, width) for r in (0, height)))
    return min(xs), min(ys), max(xs), max(ys)


def _nominal_pixel_size(gt: Sequence[float]) -> tuple[float, float]:
    """Length of one pixel step along columns and along rows, in CRS units (rotation included)."""
    return math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5])


def _ground_pixel_size(srs: osr.SpatialReference, gt: Sequence[float], width: int,
                       height: int) -> tuple[float, float]:
    """Ground metres of one pixel step at the raster centre, measured on the CRS's ellipsoid.

    The centre and its two neighbours are taken to longitude/latitude; local meridional and prime-vertical radii turn
    the differences into metres. Projected CRSs whose units are within 1 % of that keep their nominal units, so a
    0.5 m UTM raster reports exactly 0.5 m.
    """
    cx, cy = _apply(gt, width / 2.0, height / 2.0)
    points = [(cx, cy), (cx + gt[1], cy + gt[4]), (cx + gt[2], cy + gt[5])]
    nominal = tuple(u * (1.0 if srs.IsGeographic() else srs.GetLinearUnits()) for u in _nominal_pixel_size(gt))
    try:
        geog = srs.CloneGeogCS()
        geog.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        lonlat = osr.CoordinateTransformation(srs, geog).TransformPoints(points)
    except RuntimeError:
        if srs.IsGeographic():
            raise GeoError("cannot measure the pixel size of this geographic CRS; reproject the raster first")
        return nominal
    to_rad = geog.GetAngularUnits()
    half_turn = math.pi / to_rad
    a, inv_f = geog.GetSemiMajor(), geog.GetInvFlattening()
    e2 = 0.0 if inv_f == 0 else (2.0 - 1.0 / inv_f) / inv_f
    lat0 = lonlat[0][1] * to_rad
    w = 1.0 - e2 * math.sin(lat0) ** 2
    prime_vertical, meridional = a / math.sqrt(w), a * (1.0 - e2) / w ** 1.5
    ground = []
    for lon, lat, *_ in lonlat[1:]:
        dlon = (lon - lonlat[0][0] + half_turn) % (2 * half_turn) - half_turn
        dlat = lat - lonlat[0][1]
        ground.append(math.hypot(dlon * to_rad * prime_vertical * math.cos(lat0), dlat * to_rad * meridional))
    if srs.IsGeographic():
        return ground[0], ground[1]
    ok = all(abs(g / n - 1.0) <= _SCALE_ERROR_LIMIT for g, n in zip(ground, nominal))
    return nominal if ok else (ground[0], ground[1])


def _centre_lonlat(info: RasterInfo) -> tuple[float, float]:
    src = osr.SpatialReference()
    src.ImportFromWkt(info.crs_wkt)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    cx, cy = _apply(info.geotransform, info.width / 2.0, info.height / 2.0)
    lon, lat, _ = osr.CoordinateTransformation(src, wgs84).TransformPoint(cx, cy)
    return lon, lat


def _direct_plan(info: RasterInfo) -> ReadPlan:
    return ReadPlan(open_raster(info.path), info.width, info.height, info.geotransform, info.crs_wkt, False, info)


def _warped_plan(info: RasterInfo, dst_wkt: str, resolution: tuple[float, float], gsd_m: float) -> ReadPlan:
    """In-memory warped VRT at ``resolution`` (CRS units), bilinear. Outside the footprint is nodata: the source's
    nodata when every band has one, else an added alpha band (which GDAL exposes as the bands' mask).

    GDAL widens the bilinear kernel whenever it shrinks an image, which costs about 2.7x in speed; for shrinking by
    at most 1.25x (0.46 m SpaceNet pixels to 0.5 m) there is nothing to smooth away, so the plain 2x2 kernel is used.
    """
    src = open_raster(info.path)
    if all(v is not None for v in info.nodata):
        values = " ".join(repr(float(v)) for v in info.nodata)
        nodata = {"srcNodata": values, "dstNodata": values}
    else:
        nodata = {"dstAlpha": True}
    plain_kernel = [f"{axis}SCALE=1" for axis, size in zip("XY", info.pixel_size_m) if size / gsd_m >= 0.8]
    vrt = gdal.Warp("", src, format="VRT", dstSRS=dst_wkt, xRes=resolution[0], yRes=resolution[1],
                    targetAlignedPixels=True, resampleAlg="bilinear", warpOptions=plain_kernel, **nodata)
    return ReadPlan(vrt, vrt.RasterXSize, vrt.RasterYSize, tuple(vrt.GetGeoTransform()), dst_wkt, True, info,
                    vrt.GetMetadata("xml:VRT")[0])


def _valid_pixels(ds: gdal.Dataset, bands: list[int], x0: int, y0: int, data: np.ndarray) -> np.ndarray:
    """True where at least one band holds data (per GDAL's mask bands) and no band is NaN or infinite."""
    h, w = data.shape[1:]
    ok = np.zeros((h, w), bool)
    dataset_mask_read = False
    for i, b in enumerate(bands):
        band = ds.GetRasterBand(b)
        flags = band.GetMaskFlags()
        if flags & gdal.GMF_ALL_VALID:
            ok[:] = True
            break
        if flags == gdal.GMF_NODATA:  # compare values here rather than make GDAL read the band a second time
            ok |= _differs_from(data[i], band.GetNoDataValue())
        elif not (flags & gdal.GMF_PER_DATASET and dataset_mask_read):
            ok |= band.GetMaskBand().ReadAsArray(x0, y0, w, h) > 0
            dataset_mask_read = bool(flags & gdal.GMF_PER_DATASET)
    if data.dtype.kind in "fc":
        ok &= np.isfinite(data).all(axis=0)
    return ok


def _differs_from(values: np.ndarray, nodata: float) -> np.ndarray:
    if math.isnan(nodata):
        return ~np.isnan(values)
    if values.dtype.kind in "fc":
        return values != np.array(nodata, values.dtype)  # the nodata as stored in the band's precision
    return values != nodata


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


def write_rgb_png(rgb: np.ndarray, path: str | Path) -> Path:
    """An (H, W, 3) uint8 image as a PNG (previews, prediction overlays), atomically and without a .aux.xml."""
    mem = gdal.GetDriverByName("MEM").Create("", rgb.shape[1], rgb.shape[0], 3, gdal.GDT_Byte)
    for band in range(3):
        mem.GetRasterBand(band + 1).WriteArray(rgb[:, :, band])
    with atomic_path(path) as tmp:
        gdal.GetDriverByName("PNG").CreateCopy(str(tmp), mem, options=["WORLDFILE=NO"])
        Path(str(tmp) + ".aux.xml").unlink(missing_ok=True)
    return Path(path)
