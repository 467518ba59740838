"""Building instances for training a segmentor with instances: the raw SpaceNet layout (one instance per GeoJSON
polygon), COCO instance files, and ``mtp synth`` scenes (written in the SpaceNet layout).

Every sample carries, at the same time, the instances (boxes, 0-based object labels, bitmap masks) and the semantic
label, so one pipeline of MTP's multi-task transforms (:mod:`.instance_transforms`: flip, random resize, crop,
instance filter, photometric, pack) trains both decoders.

* :class:`SpaceNetInstanceDataset`: ``3band/*.tif`` + ``vectorData/geoJson/*.geojson`` as :class:`SpaceNetV1RawDataset`
  finds them. :class:`LoadGeoJSONInstances` burns each polygon on the image's grid (GDAL, pixel centres, in the
  image's CRS): a MultiPolygon is one instance per part, as SpaceNet's own truth CSVs split it; overlapping polygons
  leave each pixel to the later one. The semantic label is building 1 where any instance is, 0 elsewhere, 255 where
  the image is nodata (``nodata=0`` for SpaceNet's untagged strip-edge fill).
* :class:`CocoInstanceDataset`: images + a COCO json (RLE or polygon masks), read with MTP's SAMRS rules; without a
  semantic folder :class:`SemanticFromInstances` makes the semantic label from the masks (class = object label + 1,
  later instances over earlier ones, as SAMRS's gray PNGs are painted).

``dataset[(index, seed_key)]`` draws another image (from the same generator) when the pipeline drops one (every
instance filtered away), as MTP's loader does.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from osgeo import gdal, ogr
from torch.utils.data import Dataset

from mtp_core.io.gdal_errors import quiet_gdal

from .datasets import SpaceNetV1RawDataset
from .instance_transforms import INSTANCE_TRANSFORMS, masks_to_boxes
from .samrs import MAX_REDRAWS, SAMRSDataset, build_instance_pipeline
from .transforms import IGNORE_INDEX, Compose, Georef, Results, Transform, build_from_cfg, open_labels

PipelineCfg = Union[Compose, Sequence[Union[Mapping[str, Any], Transform]]]
NODATA_ID = -1


def rasterize_instances(path: str, shape: tuple[int, int], georef: Georef) -> np.ndarray:
    """(H, W) int32: 0 where no polygon is, i + 1 where polygon i is (MultiPolygons split into their parts, in file
    order; a later polygon wins where two overlap). Geometries are reprojected into the image's CRS."""
    _source, layer, dst_srs, transform = open_labels(path, georef)  # the layer lives while its source does
    height, width = shape
    raster = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Int32)
    raster.SetGeoTransform(georef.geotransform)
    if georef.wkt:
        raster.SetProjection(georef.wkt)
    mem = ogr.GetDriverByName("Memory").CreateDataSource("")
    burn = mem.CreateLayer("burn", srs=dst_srs, geom_type=ogr.wkbPolygon)
    burn.CreateField(ogr.FieldDefn("instance", ogr.OFTInteger))
    count = 0
    layer.ResetReading()
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            continue
        geometry = geometry.Clone()
        geometry.FlattenTo2D()
        if transform is not None and geometry.Transform(transform) != 0:
            raise ValueError(f"cannot reproject a geometry of {path} into the image CRS")
        parts = [geometry.GetGeometryRef(i) for i in range(geometry.GetGeometryCount())] \
            if geometry.GetGeometryType() == ogr.wkbMultiPolygon else [geometry]
        for part in parts:
            count += 1
            out = ogr.Feature(burn.GetLayerDefn())
            out.SetField("instance", count)
            out.SetGeometry(part.Clone())
            burn.CreateFeature(out)
    if count:
        with quiet_gdal():
            err = gdal.RasterizeLayer(raster, [1], burn, options=["ATTRIBUTE=instance"])
        if err != 0:
            raise OSError(f"GDAL could not rasterize {path}: {gdal.GetLastErrorMsg()}")
    return raster.GetRasterBand(1).ReadAsArray().astype(np.int32)


def instances_from_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(masks (n, H, W) uint8, boxes (n, 4) float32) of the ids present in an instance-id map, in id order."""
    present = np.unique(ids)
    present = present[present > 0]
    masks = (ids[None] == present[:, None, None]).astype(np.uint8) if len(present) else \
        np.zeros((0, *ids.shape), np.uint8)
    return masks, masks_to_boxes(masks)


class LoadGeoJSONInstances(Transform):
    """After ``MTP_LoadImageFromFile``: the GeoJSON at ``seg_map_path`` as instances (``gt_bboxes``,
    ``gt_bboxes_labels`` all 0, ``gt_masks``, ``gt_ignore_flags``) and as the semantic label ``gt_seg_map``
    (see the module docstring).

    ``id_map=True`` loads the instances as one map instead (int32 in ``gt_seg_map``: 0 background, i + 1 instance
    i, -1 nodata), which the geometric steps (flip, resize, crop: nearest resampling keeps ids) move as a label, and
    :class:`InstancesFromIds` unpacks after them: the same samples as with a stack of masks, at the cost of one map
    instead of one full-size bitmap per building (a 512 px scene holds 100 or more).
    """

    def __init__(self, id_map: bool = False) -> None:
        self.id_map = bool(id_map)

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        georef = results.get("georef")
        if georef is None:
            raise ValueError(f"{results['img_path']} has no georeferencing, so {results['seg_map_path']} cannot be "
                             "rasterized on it")
        ids = rasterize_instances(results["seg_map_path"], results["ori_shape"], georef)
        nodata = results.get("nodata_mask")
        if nodata is not None:
            ids[nodata] = NODATA_ID
        if self.id_map:
            results["gt_seg_map"] = ids
            return results
        return InstancesFromIds()(dict(results, gt_seg_map=ids), rng)


class InstancesFromIds(Transform):
    """An instance-id map in ``gt_seg_map`` (see :class:`LoadGeoJSONInstances`) unpacked into ``gt_masks``,
    ``gt_bboxes`` (tight), ``gt_bboxes_labels`` (0), ``gt_ignore_flags`` and the semantic ``gt_seg_map`` (building
    1, background 0, nodata 255)."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        ids = results["gt_seg_map"]
        masks, boxes = instances_from_ids(ids)
        seg = (ids > 0).astype(np.uint8)
        seg[ids == NODATA_ID] = IGNORE_INDEX
        results.update(gt_masks=masks, gt_bboxes=boxes, gt_bboxes_labels=np.zeros(len(masks), np.int64),
                       gt_ignore_flags=np.zeros(len(masks), bool), gt_seg_map=seg)
        return results


class SemanticFromInstances(Transform):
    """The semantic label painted from the instance masks when none was loaded: 0 background, object label + 1 on
    each mask, later instances over earlier ones (crowd instances included, as SAMRS's gray PNGs)."""

    def __call__(self, results: Results, rng: Optional[np.random.Generator]) -> Results:
        if results.get("gt_seg_map") is not None:
            return results
        masks = results["gt_masks"]
        seg = np.zeros(masks.shape[1:], np.uint8)
        for mask, label in zip(masks, results["gt_bboxes_labels"]):
            seg[mask > 0] = label + 1
        results["gt_seg_map"] = seg
        return results


TRANSFORMS: dict[str, type[Transform]] = {
    **INSTANCE_TRANSFORMS,
    "LoadGeoJSONInstances": LoadGeoJSONInstances,
    "InstancesFromIds": InstancesFromIds,
    "SemanticFromInstances": SemanticFromInstances,
}


def build_pipeline(cfgs: PipelineCfg) -> Compose:
    """A pipeline of the multi-task transforms and this module's loaders, from dicts."""
    if isinstance(cfgs, Compose):
        return build_instance_pipeline(cfgs)
    return build_instance_pipeline([c if isinstance(c, Transform) else build_from_cfg(c, TRANSFORMS, "transform")
                                    for c in cfgs])


class _Redraw:
    """``dataset[(index, seed_key)]`` that draws another image when the pipeline drops one."""

    def draw(self, index: int, rng: Optional[np.random.Generator], run: Any, name: Any) -> Any:
        for _ in range(MAX_REDRAWS + 1):
            sample = run(index, rng)
            if sample is not None:
                return sample
            if rng is None:
                raise ValueError(f"the pipeline dropped {name(index)} in test mode: it has no instance left")
            index = int(rng.integers(0, len(self)))  # type: ignore[arg-type]
        raise ValueError(f"no usable image after {MAX_REDRAWS} redraws: check the pipeline and the labels")


class SpaceNetInstanceDataset(_Redraw, Dataset):
    """SpaceNet v1 as distributed (or ``mtp synth --layout spacenet``) with one instance per polygon: the arguments
    of :class:`SpaceNetV1RawDataset` (``data_root``, ``split_file``, ``image_dir``, ``label_dir``, ``nodata``,
    ``band_ranges``) and a pipeline starting ``MTP_LoadImageFromFile``, ``LoadGeoJSONInstances``."""

    classes = ("building",)

    def __init__(self, data_root: str, pipeline: PipelineCfg, split_file: Optional[str] = None,
                 image_dir: str = "3band", label_dir: Optional[str] = None, nodata: Optional[float] = None,
                 band_ranges: Optional[Sequence[Sequence[float]]] = None) -> None:
        self.pipeline = build_pipeline(pipeline)
        self.chips = SpaceNetV1RawDataset(data_root, [], split_file, image_dir, label_dir, nodata, band_ranges)

    @property
    def samples(self) -> list[tuple[str, Optional[str]]]:
        return self.chips.samples

    @property
    def band_ranges(self) -> Optional[tuple[tuple[float, float], ...]]:
        return self.chips.band_ranges

    def use_band_ranges(self, ranges: Optional[Sequence[Sequence[float]]]) -> None:
        self.chips.use_band_ranges(ranges)

    def __len__(self) -> int:
        return len(self.chips)

    def data_info(self, index: int) -> dict[str, Any]:
        img, label = self.chips.samples[index]
        return {"img_path": img, "seg_map_path": label, "sample_idx": index, "img_id": index,
                "nodata": self.chips.nodata, "scaler": self.chips.scaler}

    def __getitem__(self, key: Union[int, tuple[int, Sequence[int]]]) -> dict[str, Any]:
        index, rng = _key(key, len(self))
        return self.draw(index, rng, lambda i, r: self.pipeline(self.data_info(i), r),
                         lambda i: self.chips.samples[i][0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} chips, pipeline={self.pipeline!r})"


class CocoInstanceDataset(SAMRSDataset):
    """Images and a COCO instance json (``data_root/img_prefix/<file_name>``, ``data_root/ann_file``), read with
    MTP's SAMRS rules (:class:`SAMRSDataset`); ``seg_prefix`` names a folder of semantic PNGs if there is one (by
    default the pipeline's :class:`SemanticFromInstances` paints the label from the masks)."""

    def __init__(self, data_root: str, ann_file: str, pipeline: PipelineCfg, img_prefix: str = "images",
                 seg_prefix: Optional[str] = None, seg_map_suffix: str = ".png",
                 classes: Union[str, Sequence[str], None] = None, background: bool = True,
                 test_mode: bool = False) -> None:
        super().__init__(data_root, ann_file, build_pipeline(pipeline), img_prefix, seg_prefix, seg_map_suffix,
                         classes, background, test_mode)

    @property
    def band_ranges(self) -> None:
        return None  # COCO images are 8-bit

    def use_band_ranges(self, ranges: Optional[Sequence[Sequence[float]]]) -> None:
        if ranges:
            raise ValueError("COCO images are read as 8-bit: band ranges do not apply")


def _key(key: Union[int, tuple[int, Sequence[int]]], size: int) -> tuple[int, Optional[np.random.Generator]]:
    if isinstance(key, tuple):
        index, rng = int(key[0]), np.random.default_rng(tuple(int(k) for k in key[1]))
    elif isinstance(key, (int, np.integer)):
        index, rng = int(key), None
    else:
        raise TypeError(f"index a dataset with an int or (index, seed_key), got {type(key).__name__}")
    if not 0 <= index < size:
        raise IndexError(f"index {index} out of range for a dataset of {size} images")
    return index, rng


DATASETS = {cls.__name__: cls for cls in (SpaceNetInstanceDataset, CocoInstanceDataset, SAMRSDataset)}


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """An instance dataset from a config dict (``dict(type='SpaceNetInstanceDataset', data_root=..., ...)``)."""
    return build_from_cfg(cfg, DATASETS, "dataset")
