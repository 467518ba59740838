"""Data for training MTP segmentation models and change detectors without MMCV: GDAL datasets (SpaceNet; LEVIR-CD,
WHU-CD, CDD, OSCD), MMSeg/Open-CD-equal transforms, seeded sampling.

Typical use by the training loop::

    dataset = build_dataset(cfg.train_dataloader["dataset"])        # dataset[(index, seed_key)] -> packed sample
    sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world, start=iteration * batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=8, collate_fn=collate)
    imgs, gts = SegDataPreProcessor(mean, std, size=(384, 384))(next(iter(loader)), device)

Packed sample: ``{"img": uint8 (3, H, W) RGB, "gt": uint8 (H, W) or None, "meta": {"path", "ori_shape", ...}}``.

Multi-task pretraining reads SAMRS sets (:class:`SAMRSDataset`, MTP's transforms in :mod:`.instance_transforms`),
batches them per dataset with :class:`MultiTaskDataPreprocessor` and zips the datasets' loaders
(:class:`ZippedBatchSampler`).
"""
from .cd_datasets import CD_DATASETS, BaseCDDataset, CDDataset
from .cd_transforms import CD_TRANSFORMS
from .datasets import DATASETS, SegDataset, SpaceNetV1Dataset, SpaceNetV1RawDataset, build_dataset, collate
from .multitask_preprocess import MultiTaskDataPreprocessor
from .preprocess import SegDataPreProcessor
from .sampler import InfiniteSampler
from .samrs import SAMRSDataset
from .transforms import (
    TRANSFORMS,
    Compose,
    LoadAnnotations,
    LoadImageFromFile,
    PackSegInputs,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    Transform,
    build_pipeline,
    rasterize_geojson,
    read_label,
    read_rgb,
)
from .zipped import ZippedBatchSampler

DATASETS.update(CD_DATASETS)  # one registry each, as MMSeg's configs name types
TRANSFORMS.update(CD_TRANSFORMS)

__all__ = [
    "BaseCDDataset", "CDDataset", "DATASETS", "TRANSFORMS", "Compose", "InfiniteSampler", "LoadAnnotations",
    "LoadImageFromFile", "PackSegInputs",
    "PhotoMetricDistortion", "RandomCrop", "RandomFlip", "RandomResize", "Resize", "SegDataPreProcessor",
    "SegDataset", "SpaceNetV1Dataset", "SpaceNetV1RawDataset", "Transform", "build_dataset", "build_pipeline",
    "collate", "rasterize_geojson", "read_label", "read_rgb", "MultiTaskDataPreprocessor", "SAMRSDataset",
    "ZippedBatchSampler",
]
