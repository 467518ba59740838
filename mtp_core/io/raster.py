"""GDAL raster input for the inference engine: describe a raster, plan how a model sees it, read windows.

Why a read plan: a model is trained at one ground resolution in metres. A raster in degrees, or far from that
resolution, is read through an in-memory GDAL warped VRT in a metric CRS (the raster's own if projected, else the UTM
zone of its centre) at exactly the model's resolution, north-up; GDAL then warps only the windows that are read, so
nothing of the raster's size is held in memory. Results produced on that model grid go back to the raster's own grid
with :func:`mtp_core.io.geotiff.warp_to_grid`, so outputs are delivered in the layer's CRS. Rotated rasters (a
geotransform with rotation terms) are read as they are: the model sees the image as it was taken, and the outputs
share its grid. Ground metres follow :mod:`mtp_core.io.metres`.

Validity: :func:`read_window` returns the pixels and a boolean ``valid`` mask. A pixel is invalid when every band
read is nodata (GDAL's mask bands: nodata values, alpha band or internal mask), when any band is NaN/inf, or when it
lies outside the source footprint (warped reads) or outside the raster (boundless windows). Invalid pixels read as 0.

Damaged files: a block GDAL cannot decode (a truncated or corrupt GeoTIFF) is a :class:`GeoError` naming the file
and the window, raised by the read that meets it.

Threads: a ``gdal.Dataset`` handle must only be used by one thread at a time. A background reader thread gets its
own handle from :meth:`ReadPlan.reopen`; the plan's ``dataset`` belongs to the thread that made the plan.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from osgeo import gdal, gdal_array, osr

from mtp_core.errors import GeoError
from mtp_core.io.gdal_errors import gdal_exceptions, quiet_gdal, raises_gdal_errors
from mtp_core.io.metres import GroundFrame, apply_geotransform

#: Geotransform QGIS gives a raster without one (row 0 on top, y growing upwards); pixel-unit outputs use it too,
#: so they overlay the raster where QGIS draws it.
PIXEL_GEOTRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about a raster, read once from its header.

    ``pixel_size_m`` is the ground size of a pixel (along columns, along rows) at the raster centre in metres, for
    any CRS (:mod:`mtp_core.io.metres`). Without georeference (``--pixel-crs``) ``crs_wkt`` is '', the geotransform is
    the
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
    #: what messages call the raster: its path, or the user's file when ``path`` is a temporary VRT over it
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.path)


@raises_gdal_errors
def describe_raster(path: str | os.PathLike, allow_pixel_crs: bool = False, label: str = "") -> RasterInfo:
    """Reads a raster's header: size, bands, dtype, nodata, CRS and ground pixel size.

    Raises :class:`GeoError` for a missing/unreadable file, a non-raster, an empty raster, and (unless
    ``allow_pixel_crs``) a raster without georeference, since distances and positions would be meaningless.
    ``label``: what to call the raster in messages (default: its path).
    """
    name = dataset_name(path)
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
        pixel_size_m = _ground_pixel_size(crs_wkt, geotransform, width, height)
    else:
        geotransform = tuple(float(v) for v in gt) if gt is not None else PIXEL_GEOTRANSFORM
        crs_wkt, epsg, is_geographic = "", None, False
        pixel_size_m = _nominal_pixel_size(geotransform)
    return RasterInfo(name, width, height, count, dtype, nodata, crs_wkt, epsg, geotransform, is_geographic,
                      pixel_size_m, _bounds(geotransform, width, height), has_georeference, label)


@raises_gdal_errors
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

    @raises_gdal_errors
    def reopen(self) -> gdal.Dataset:
        """A new handle on the same pixels, for another thread (GDAL handles are not thread-safe)."""
        return gdal.Open(self.vrt_xml) if self.warped else open_raster(self.info.path)


@raises_gdal_errors
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
    with gdal_exceptions(), quiet_gdal():
        try:
            return _read_window(source, x, y, w, h, bands)
        except RuntimeError as exc:  # GDAL could not decode a block: a damaged or truncated file
            name = source.info.label if isinstance(source, ReadPlan) else source.GetDescription()
            raise GeoError(f"cannot read {name}: the pixels of window x={x}, y={y}, {w} x {h} px"
                           f"{' (on the warped model grid)' if isinstance(source, ReadPlan) and source.warped else ''}"
                           f" are damaged or missing ({_first_line(exc)}); the file is incomplete or corrupt: copy it "
                           f"again or repair it (gdalinfo -checksum shows which blocks fail)") from exc


def _read_window(source: Source, x: int, y: int, w: int, h: int,
                 bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------------------------------------------------------
# helpers


def dataset_name(path: str | os.PathLike) -> str:
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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _bounds(gt: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    xs, ys = zip(*(apply_geotransform(gt, c, r) for c in (0, width) for r in (0, height)))
    return min(xs), min(ys), max(xs), max(ys)


def _nominal_pixel_size(gt: Sequence[float]) -> tuple[float, float]:
    """Length of one pixel step along columns and along rows, in CRS units (rotation included)."""
    return math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5])


def _ground_pixel_size(crs_wkt: str, gt: Sequence[float], width: int, height: int) -> tuple[float, float]:
    """Ground metres of one pixel step at the raster centre (:mod:`mtp_core.io.metres`)."""
    try:
        return GroundFrame.for_raster(crs_wkt, gt, width, height).pixel_size_m(gt, width, height)
    except RuntimeError as exc:
        raise GeoError(f"cannot measure the ground size of this raster's pixels in its CRS ({_first_line(exc)}); "
                       "reproject the raster to a standard CRS first") from exc


def _centre_lonlat(info: RasterInfo) -> tuple[float, float]:
    src = osr.SpatialReference()
    src.ImportFromWkt(info.crs_wkt)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    cx, cy = apply_geotransform(info.geotransform, info.width / 2.0, info.height / 2.0)
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


