"""OGR vector output and input: polygons with attributes to GeoPackage, GeoJSON or Shapefile in a given CRS, and
vector files back as shapely geometries.

Axis order: shapely coordinates are always (easting, northing) or (longitude, latitude): every SRS here uses GDAL's
traditional GIS order, so an EPSG:4326 file holds lon/lat and reprojection never swaps axes.
Atomic output: a dataset is written into a temporary folder beside the destination and moved into place only when
complete, so a reader (QGIS watching the file) never sees half a file and a failure leaves no output.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import shapely
from osgeo import gdal, ogr, osr

from mtp_core.errors import GeoError
from mtp_core.io.gdal_errors import gdal_exceptions, raises_gdal_errors

_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".shp": "ESRI Shapefile"}
_LAYER_OPTIONS = {"GeoJSON": ["RFC7946=NO"], "ESRI Shapefile": ["ENCODING=UTF-8"], "GPKG": []}
#: Sidecars a shapefile can have; stale ones from an earlier file at the destination would describe other features.
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qpj", ".shp.xml")
_SHAPEFILE_TEXT_WIDTH = 254
#: GeoPackage's reserved "no CRS" entries (srs_id 0 and -1); GDAL reports them as CRSs, they mean none.
_GPKG_UNDEFINED_SRS = ("Undefined geographic SRS", "Undefined Cartesian SRS")


@raises_gdal_errors
def write_vector(path: str | os.PathLike, geometries: Sequence[Any], attributes: Mapping[str, Sequence[Any]],
                 crs_wkt: str, layer_name: str | None = None) -> Path:
    """Writes ``geometries`` (shapely; None for a feature without geometry) and one value per geometry of each
    attribute to ``path``; the format follows the extension (.gpkg, .geojson/.json, .shp).

    Field types are inferred (int, float, str; None and NaN are written as null). Polygons mixed with
    multipolygons are all written as multipolygons; Z is dropped. ``crs_wkt`` is WKT or e.g. 'EPSG:32633' ('' for
    pixel coordinates; a GeoJSON without CRS reads back as WGS 84, so use .gpkg there). GeoJSON keeps a non-WGS 84
    CRS (RFC7946=NO), named by its EPSG code. Shapefile field names are cut to 10 characters by the format
    (``perimeter_m`` becomes ``perimeter_``). Features arriving in batches go through :class:`VectorWriter`.
    """
    path = Path(path)
    geoms = shapely.force_2d(np.array(list(geometries), dtype=object))
    columns = {name: _column(name, list(values), len(geoms)) for name, values in attributes.items()}
    widths = {name: max((len(v.encode()) for v in values if v is not None), default=1)
              for name, (ogr_type, values) in columns.items() if ogr_type == ogr.OFTString}
    fields = {name: ogr_type for name, (ogr_type, _) in columns.items()}
    with VectorWriter(path, fields, crs_wkt, _geometry_type(geoms), layer_name, widths) as writer:
        writer.write_columns(geoms, [values for _, values in columns.values()])
    return path


class VectorWriter:
    """A new vector file written batch by batch (features stream in, memory stays bounded) and moved into place
    only when the ``with`` block ends without error; on error nothing is left behind.

    ``fields``: name -> OGR field type (``ogr.OFTInteger``, ``ogr.OFTInteger64``, ``ogr.OFTReal``,
    ``ogr.OFTString``). ``geometry_type``: the layer's OGR type; with ``ogr.wkbMultiPolygon`` polygons are promoted.
    ``text_widths``: Shapefile text field widths (254, the format's limit, when not given).
    """

    def __init__(self, path: str | os.PathLike, fields: Mapping[str, int], crs_wkt: str,
                 geometry_type: int = ogr.wkbPolygon, layer_name: str | None = None,
                 text_widths: Mapping[str, int] | None = None) -> None:
        self.path = Path(path)
        self._driver = _driver_for(self.path)
        if self._driver == "ESRI Shapefile" and geometry_type == ogr.wkbUnknown:
            raise GeoError(f"{self.path}: a shapefile holds one geometry type, these geometries mix several; "
                           "write .gpkg")
        self._fields = dict(fields)
        self._srs = _srs(crs_wkt) if crs_wkt else None
        self._geometry_type = geometry_type
        self._layer_name = layer_name or self.path.stem
        self._widths = dict(text_widths or {})
        self._atomic: contextlib.AbstractContextManager | None = None
        self._ds: gdal.Dataset | None = None
        self._layer: ogr.Layer | None = None

    def __enter__(self) -> "VectorWriter":
        self._gdal = gdal_exceptions()
        self._gdal.__enter__()
        self._atomic = _atomic_files(self.path)
        try:
            tmp = self._atomic.__enter__()
        except BaseException:
            self._gdal.__exit__(*sys.exc_info())
            raise
        try:
            self._ds = ogr.GetDriverByName(self._driver).CreateDataSource(str(tmp))
            self._layer = self._ds.CreateLayer(self._layer_name, self._srs, self._geometry_type,
                                               _LAYER_OPTIONS[self._driver])
            for name, ogr_type in self._fields.items():
                definition = ogr.FieldDefn(name, ogr_type)
                if self._driver == "ESRI Shapefile" and ogr_type == ogr.OFTString:
                    definition.SetWidth(min(max(self._widths.get(name, _SHAPEFILE_TEXT_WIDTH), 1),
                                            _SHAPEFILE_TEXT_WIDTH))
                self._layer.CreateField(definition)
        except BaseException:
            self._close(*sys.exc_info())
            raise
        return self

    def write(self, geometries: Sequence[Any], attributes: Mapping[str, Sequence[Any]]) -> None:
        """Appends features: shapely geometries and one value per geometry of every field (None for null)."""
        geoms = shapely.force_2d(np.array(list(geometries), dtype=object))
        if set(attributes) != set(self._fields):
            raise GeoError(f"attributes {sorted(attributes)} do not match the fields {sorted(self._fields)}")
        columns = [_typed(name, self._fields[name], list(attributes[name]), len(geoms)) for name in self._fields]
        self.write_columns(geoms, columns)

    def write_columns(self, geoms: np.ndarray, columns: Sequence[Sequence[Any]]) -> None:
        """:meth:`write` for values already converted to plain Python (in field order)."""
        layer = self._layer
        defn = layer.GetLayerDefn()
        promote = self._geometry_type == ogr.wkbMultiPolygon
        layer.StartTransaction()
        for i, wkb in enumerate(shapely.to_wkb(geoms)):
            feature = ogr.Feature(defn)
            for j, column in enumerate(columns):
                if column[i] is None:
                    feature.SetFieldNull(j)
                else:
                    feature.SetField(j, column[i])
            if wkb is not None:
                geom = ogr.CreateGeometryFromWkb(wkb)
                feature.SetGeometry(ogr.ForceToMultiPolygon(geom) if promote else geom)
            layer.CreateFeature(feature)
        layer.CommitTransaction()

    def __exit__(self, *exc_info: Any) -> None:
        self._close(*exc_info)

    def _close(self, *exc_info: Any) -> None:
        self._layer = None
        self._ds = None  # closes and flushes before the move
        atomic, self._atomic = self._atomic, None
        try:
            if atomic is not None:
                atomic.__exit__(*exc_info)
        finally:
            self._gdal.__exit__(*exc_info)


class VectorReader:
    """The first layer of a vector file, read in batches (memory follows the batch, not the file), reprojected on the
    fly to ``target_crs_wkt`` (WKT or 'EPSG:code') when given.

    Features without geometry come back as an empty GeometryCollection. :attr:`crs_wkt` is the CRS of what comes
    out ('' when the file has none).
    """

    @raises_gdal_errors
    def __init__(self, path: str | os.PathLike, target_crs_wkt: str | None = None) -> None:
        self.name = os.fspath(path)
        self._ds = _open_vector(self.name)
        if self._ds.GetLayerCount() == 0:
            raise GeoError(f"{self.name} has no vector layer; give a file with polygons")
        self._layer = self._ds.GetLayer(0)
        defn = self._layer.GetLayerDefn()
        self.fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        self.geometry_type = self._layer.GetGeomType()
        source = self._layer.GetSpatialRef()
        if source is not None and source.GetName() in _GPKG_UNDEFINED_SRS:
            source = None
        if source is not None:
            source = source.Clone()
            source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        self._transform: osr.CoordinateTransformation | None = None
        if target_crs_wkt is None:
            self.crs_wkt = source.ExportToWkt() if source is not None else ""
            return
        target = _srs(target_crs_wkt)
        if source is None:
            raise GeoError(f"{self.name} has no CRS, so it cannot be reprojected; assign one "
                           "(ogr2ogr -a_srs EPSG:<code>)")
        if not source.IsSame(target):
            self._transform = osr.CoordinateTransformation(source, target)
        self.crs_wkt = target.ExportToWkt()

    def __len__(self) -> int:
        return self._layer.GetFeatureCount()

    @raises_gdal_errors
    def extent(self) -> tuple[float, float, float, float] | None:
        """(xmin, ymin, xmax, ymax) of the layer in the output CRS, None when it is empty."""
        if not len(self):
            return None
        xmin, xmax, ymin, ymax = self._layer.GetExtent()
        if self._transform is not None:
            xmin, ymin, xmax, ymax = self._transform.TransformBounds(xmin, ymin, xmax, ymax, 21)
        return xmin, ymin, xmax, ymax

    def batches(self, size: int = 10_000) -> Iterator[tuple[np.ndarray, dict[str, list[Any]]]]:
        """(geometries, attribute columns) of at most ``size`` features at a time, in layer order."""
        with gdal_exceptions():
            self._layer.ResetReading()
            geoms: list[Any] = []
            columns: dict[str, list[Any]] = {n: [] for n in self.fields}
            for feature in self._layer:
                ref = feature.GetGeometryRef()
                geoms.append(shapely.GeometryCollection() if ref is None
                             else shapely.from_wkb(bytes(ref.ExportToWkb())))
                for j, n in enumerate(self.fields):
                    columns[n].append(feature.GetField(j))
                if len(geoms) == size:
                    yield self._moved(geoms), columns
                    geoms, columns = [], {n: [] for n in self.fields}
            if geoms:
                yield self._moved(geoms), columns

    def _moved(self, geoms: list[Any]) -> np.ndarray:
        array = np.array(geoms, dtype=object)
        if self._transform is None:
            return array
        transform = self._transform

        def move(xy: np.ndarray) -> np.ndarray:
            return np.asarray(transform.TransformPoints(xy), np.float64)[:, :2] if len(xy) else xy

        return shapely.transform(array, move)


def read_vector(path: str | os.PathLike,
                target_crs_wkt: str | None = None) -> tuple[list[Any], dict[str, list[Any]], str]:
    """Reads the first layer of a vector file: (shapely geometries, attribute columns, CRS WKT).

    Features without geometry come back as an empty GeometryCollection. With ``target_crs_wkt`` (WKT or
    'EPSG:code') geometries are reprojected and that CRS is returned; the CRS is '' when the file has none.
    Large layers are better read with :class:`VectorReader`, batch by batch.
    """
    reader = VectorReader(path, target_crs_wkt)
    geoms: list[Any] = []
    columns: dict[str, list[Any]] = {n: [] for n in reader.fields}
    for batch, values in reader.batches():
        geoms.extend(batch)
        for n in reader.fields:
            columns[n].extend(values[n])
    return geoms, columns, reader.crs_wkt


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _driver_for(path: Path) -> str:
    driver = _DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise GeoError(f"cannot tell the vector format of {path.name}; use one of the extensions "
                       f"{', '.join(sorted(_DRIVERS))}")
    return driver


def _srs(crs: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    try:
        srs.SetFromUserInput(crs)
    except RuntimeError as exc:
        raise GeoError(f"not a CRS GDAL understands: {crs[:80]!r}; give WKT or 'EPSG:<code>'") from exc
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _column(name: str, values: list[Any], count: int) -> tuple[int, list[Any]]:
    """The OGR field type for ``values`` and the values as plain Python int/float/str (None for null and NaN)."""
    if len(values) != count:
        raise GeoError(f"attribute {name!r} has {len(values)} values for {count} geometries; give one per geometry")
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, str):
            kinds.add(str)
        elif isinstance(v, (numbers.Integral, np.bool_)):
            kinds.add(int if -2**31 <= int(v) < 2**31 else np.int64)
        elif isinstance(v, numbers.Real):
            kinds.add(float)
        else:
            raise GeoError(f"attribute {name!r} holds a {type(v).__name__}; use int, float or str values")
    if str in kinds and len(kinds) > 1:
        raise GeoError(f"attribute {name!r} mixes text and numbers; convert it to one type")
    if str in kinds or not kinds:
        return ogr.OFTString, [None if v is None else str(v) for v in values]
    if float in kinds:
        return ogr.OFTReal, [None if v is None or not math.isfinite(v) else float(v) for v in values]
    return (ogr.OFTInteger64 if np.int64 in kinds else ogr.OFTInteger), [None if v is None else int(v) for v in values]


def _typed(name: str, ogr_type: int, values: list[Any], count: int) -> list[Any]:
    """``values`` as plain Python values of a declared field type (None for null and NaN)."""
    if len(values) != count:
        raise GeoError(f"attribute {name!r} has {len(values)} values for {count} geometries; give one per geometry")
    if ogr_type == ogr.OFTString:
        return [None if v is None else str(v) for v in values]
    if ogr_type == ogr.OFTReal:
        return [None if v is None or not math.isfinite(v) else float(v) for v in values]
    return [None if v is None else int(v) for v in values]


#: shapely type id -> OGR geometry type (LinearRing, id 2, is written as a LineString)
_OGR_TYPES = {0: ogr.wkbPoint, 1: ogr.wkbLineString, 2: ogr.wkbLineString, 3: ogr.wkbPolygon, 4: ogr.wkbMultiPoint,
              5: ogr.wkbMultiLineString, 6: ogr.wkbMultiPolygon, 7: ogr.wkbGeometryCollection}


def _geometry_type(geoms: np.ndarray) -> int:
    """The layer type: the geometries' common type, MultiPolygon for polygons mixed with multipolygons, wkbUnknown
    for other mixtures; Polygon when there is nothing to go by."""
    present = shapely.get_type_id(geoms[~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)])
    types = {_OGR_TYPES[int(t)] for t in np.unique(present)}
    if not types:
        return ogr.wkbPolygon
    if len(types) == 1:
        return types.pop()
    return ogr.wkbMultiPolygon if types == {ogr.wkbPolygon, ogr.wkbMultiPolygon} else ogr.wkbUnknown


def _open_vector(name: str) -> gdal.Dataset:
    try:
        return gdal.OpenEx(name, gdal.OF_VECTOR | gdal.OF_READONLY)
    except RuntimeError as exc:
        if not os.path.exists(name):
            raise GeoError(f"vector file not found: {name}; check the path") from exc
        try:
            gdal.OpenEx(name, gdal.OF_RASTER)
        except RuntimeError:
            raise GeoError(f"GDAL cannot read {name} as vector data ({exc}); give a GeoPackage, GeoJSON or "
                           f"Shapefile") from exc
        raise GeoError(f"{name} is a raster, not vector data; give a GeoPackage, GeoJSON or Shapefile") from exc


@contextlib.contextmanager
def _atomic_files(path: Path) -> Iterator[Path]:
    """Yields ``path``'s name inside a fresh temporary folder beside it. On success each file written there is
    flushed to disk and moved next to ``path``, the main file last (a reader that finds it finds its sidecars);
    stale shapefile sidecars of an earlier dataset are removed. On error nothing is moved."""
    if path.is_dir():
        raise GeoError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise GeoError(f"cannot write {path}: {exc.strerror}; choose a writable output folder") from exc
    try:
        yield tmp_dir / path.name
        written = sorted(tmp_dir.iterdir(), key=lambda f: f.name == path.name)
        for f in written:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if path.suffix.lower() == ".shp":
            names = {f.name for f in written}
            for part in _SHAPEFILE_PARTS:
                stale = path.with_name(path.stem + part)
                if stale.name not in names:
                    stale.unlink(missing_ok=True)
        for f in written:
            os.replace(f, path.with_name(f.name))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
