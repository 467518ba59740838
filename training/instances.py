"""Fine-tuning a segmentor with instances (UperNet + Mask R-CNN on one encoder), with the fine-tuning CLI.

``python -m training.train CONFIG`` runs this trainer when the config's model has an ``instance_decoder``::

    model = dict(type='EncoderDecoder', backbone=dict(type='RVSA_MTP', ...), decode_head=dict(type='UPerHead', ...),
                 instance_decoder=dict(type='MaskRCNN', channels=256, fc_out_channels=1024), ...)

Everything but the step is the segmentation trainer's (:class:`training.loop.Trainer`): launchers, the optimizer
wrapper and schedule, checkpoints with the model card, preemption, requeue and bit-exact resume. A step runs the
encoder once on a batch of MTP's multi-task pipeline (boxes, masks and the semantic label move together) and
minimises the semantic loss of the config's ``loss_decode`` (MMSeg's cross-entropy) plus mmdet's Mask R-CNN losses,
unweighted, as MTP's multi-task pretraining sums its tasks. Every term is logged.

Weights: ``load_from`` a converted multi-task pretraining file (``mtp convert-ckpt --reuse-decoder semseg+insseg``:
encoder and both decoders), a fine-tuned segmentor (encoder and UperNet; the instance decoder starts new) or one of
our checkpoints; ``model.backbone.pretrained`` an encoder file. Validation and ``training.test`` measure mIoU, the
SpaceNet polygon F1 of both the semantic-only and the instance outlines, and COCO mask AP / AP50
(:mod:`training.instance_eval`).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from mtp_core.checkpoint import load_weights
from mtp_core.models.card import ModelCard
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.models.maskrcnn import parse_losses
from training.builder import BuildError, SegmentorSpec, build_segmentor, model_card, segmentation_loss
from training.data.multitask_preprocess import MultiTaskDataPreprocessor
from training.data.spacenet_instances import build_dataset
from training.dist import DistInfo
from training.loop import Trainer
from training.runner import IterRunner

log = logging.getLogger("mtp.train")

ARCHITECTURE = "mtp_rvsa_upernet_maskrcnn"
_INSTANCE_ARGS = {"channels", "fc_out_channels", "anchor_scale"}


def has_instances(model_cfg: Mapping[str, Any]) -> bool:
    """Whether a config's model is a segmentor with instances (it has an ``instance_decoder``)."""
    return bool(model_cfg.get("instance_decoder"))


def build_instance_segmentor(model_cfg: Mapping[str, Any]) -> SegmentorSpec:
    """The segmentor of the config (:func:`training.builder.build_segmentor`) with the Mask R-CNN decoder of its
    ``instance_decoder`` on the same encoder; ``arch_args`` rebuild it (:func:`~mtp_core.models.create_model` of
    ``mtp_rvsa_upernet_maskrcnn``)."""
    decoder = dict(model_cfg["instance_decoder"])
    if decoder.pop("type", "MaskRCNN") != "MaskRCNN":
        raise BuildError(f"instance_decoder type {model_cfg['instance_decoder'].get('type')!r} is not supported: use "
                         "'MaskRCNN'")
    unknown = sorted(set(decoder) - _INSTANCE_ARGS)
    if unknown:
        raise BuildError(f"instance_decoder: unsupported arguments {unknown}; supported: {sorted(_INSTANCE_ARGS)}")
    spec = build_segmentor({k: v for k, v in model_cfg.items() if k != "instance_decoder"})
    seg = spec.model
    model = InstanceSegmentor(seg.backbone, seg.decode_head, seg.auxiliary_head, **decoder)
    return dataclasses.replace(spec, model=model, arch_args={**spec.arch_args, "instance_decoder": decoder})


def instance_card(spec: SegmentorSpec, preprocessor_cfg: Mapping[str, Any], classes: tuple[str, ...],
                  overrides: Mapping[str, Any] | None = None) -> ModelCard:
    """The card saved with the checkpoints: the whole network (both decoders) and the config's data conventions."""
    return model_card(spec, preprocessor_cfg, classes, overrides).replace(architecture=ARCHITECTURE)


class InstanceTrainer(Trainer):
    """:class:`~training.loop.Trainer` for a segmentor with instances: its own model, data and step (module
    docstring); checkpoints, resume, logging and stopping are the segmentation trainer's."""

    def __init__(self, cfg: dict[str, Any], work_dir: Path, info: DistInfo) -> None:
        IterRunner.__init__(self, cfg, work_dir, info)  # Trainer.__init__ builds a plain segmentor: not this one
        self.spec = build_instance_segmentor(cfg["model"])
        pre_cfg = cfg.get("data_preprocessor") or cfg["model"].get("data_preprocessor") or {}
        mean = pre_cfg.get("mean", (123.675, 116.28, 103.53))
        std = pre_cfg.get("std", (58.395, 57.12, 57.375))
        self.preprocess = MultiTaskDataPreprocessor(mean, std, 32, tuple(pre_cfg["size"]) if pre_cfg.get("size")
                                                    else None, bool(pre_cfg.get("bgr_to_rgb", True)))
        loader_cfg = cfg["train_dataloader"]
        self.train_set = build_dataset(loader_cfg["dataset"])
        self.val_set = build_dataset(cfg["val_dataloader"]["dataset"]) if self._validates() else None
        self.classes = ("background", *self.train_set.classes)
        ranges = self.train_set.band_ranges
        if self.val_set is not None and "band_ranges" not in cfg["val_dataloader"]["dataset"]:
            self.val_set.use_band_ranges(ranges)
        card_overrides = {"band_ranges": ranges} if ranges else {}
        self.card = instance_card(self.spec, pre_cfg, self.classes, {**card_overrides,
                                                                       **(cfg.get("model_card") or {})})
        if self.spec.model.num_classes != len(self.classes):
            raise BuildError(f"decode_head.num_classes is {self.spec.model.num_classes} but the data have "
                             f"{len(self.classes)} classes with the background ({', '.join(self.classes)})")
        self._set_length(loader_cfg)
        self._check_batch_norm_batch()
        self._place_model(self.spec.model)

    def train_step(self, batches: Iterator[list]) -> dict[str, torch.Tensor]:
        """One iteration: one encoder pass, the semantic loss plus the instance losses, an optimizer step when the
        wrapper says so."""
        net = self.ddp or self.model
        batch = self.preprocess(next(batches), self.info.device, training=True)
        gts = torch.stack([s.sem_seg for s in batch.samples])
        with self.optim_wrapper.optim_context(net):
            logits, aux, instance = net(batch.inputs, samples=batch.samples)
            semantic, parts = segmentation_loss(logits, aux, gts, self.spec.losses)
            instance_total, instance_parts = parse_losses(instance)
            loss = semantic + instance_total
        stepped = self.optim_wrapper.update_params(loss)
        self.scheduler.step()
        out = {key: value.detach() for key, value in {**parts, **instance_parts}.items()}
        out["loss"] = loss.detach()
        if stepped and self.optim_wrapper.grad_norm is not None:
            out["grad_norm"] = self.optim_wrapper.grad_norm
        return out

    def validate(self) -> dict[str, Any] | None:
        if self.val_set is None:
            return None
        from training.instance_eval import evaluate_instances

        metrics = evaluate_instances(self.model, self.card, self.val_set, self.info, self.spec.crop_size,
                                     self.spec.stride)
        keys = ("mIoU", "semantic_f1", "instance_f1", "segm_mAP", "segm_mAP_50")
        summary = {k: metrics[k] for k in keys if k in metrics}
        if self.info.is_main:
            log.info("val at iter %d: %s", self.iteration, " ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        self._write_log({"iter": self.iteration, "mode": "val", **summary})
        return metrics


def run_instance_test(args: Any, cfg: dict[str, Any], info: DistInfo, work_dir: Path) -> int:
    """``python -m training.test CONFIG CKPT`` for a segmentor with instances: the checkpoint's predictions on the
    test set as the main job makes them, every metric of :mod:`training.instance_eval` in ``results_*.json`` and one
    summary line; ``--show-dir`` writes an overlay per image (each building its own colour)."""
    import json
    import time

    from mtp_core.checkpoint import safe_load
    from mtp_core.io import atomic_path
    from training.instance_eval import evaluate_instances
    from training.test import _jsonable

    if args.tta or args.out or args.amp:
        raise ValueError("--tta, --out and --amp are for semantic models; a model with instances is tested as the "
                         "main job predicts (leave them out)")
    spec = build_instance_segmentor(cfg["model"])
    loaded = safe_load(args.checkpoint)
    report = load_weights(spec.model, loaded)
    if info.is_main:
        log.info("%s", report.summary())
    dataset = build_dataset(cfg["test_dataloader"]["dataset"])
    card_data = (loaded.get("meta") or {}).get("model_card") if isinstance(loaded, dict) else None
    pre_cfg = cfg.get("data_preprocessor") or cfg["model"].get("data_preprocessor") or {}
    card = ModelCard.from_dict(card_data) if card_data else \
        instance_card(spec, pre_cfg, ("background", *dataset.classes))
    if card.band_ranges and "band_ranges" not in cfg["test_dataloader"]["dataset"]:
        dataset.use_band_ranges(card.band_ranges)
    start = time.perf_counter()
    writer = _overlay_writer(Path(args.show_dir)) if args.show_dir else None
    metrics = evaluate_instances(spec.model.to(info.device), card, dataset, info, spec.crop_size, spec.stride,
                                 on_image=writer)
    metrics.update(seconds=time.perf_counter() - start, images=len(dataset), classes=card.classes)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        out = work_dir / f"results_{time.strftime('%Y%m%d_%H%M%S')}.json"
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps({"config": args.config, "checkpoint": args.checkpoint, **_jsonable(metrics)},
                                      indent=2), encoding="utf-8")
        print(summary_line(metrics) + f"\nresults: {out}")
    return 0


def summary_line(metrics: Mapping[str, Any]) -> str:
    """mIoU, the two polygon F1s and COCO mask AP in one line."""
    def f1(name: str) -> str:
        return (f"{metrics[f'{name}_f1']:.3f} (P {metrics[f'{name}_precision']:.3f}, R {metrics[f'{name}_recall']:.3f}"
                f"; {metrics[f'{name}_tp']} TP, {metrics[f'{name}_fp']} FP, {metrics[f'{name}_fn']} FN)")

    return (f"mIoU {metrics['mIoU']:.2f} aAcc {metrics['aAcc']:.2f} | polygon F1: semantic-only {f1('semantic')}, "
            f"instances {f1('instance')} | mask AP {metrics['segm_mAP']:.3f} AP50 {metrics['segm_mAP_50']:.3f}")


def _overlay_writer(show_dir: Path) -> Any:
    import numpy as np

    from mtp_core.io import write_rgb_png

    show_dir.mkdir(parents=True, exist_ok=True)

    def write(sample: Mapping[str, Any], classes: Any, values: Any) -> None:
        image = sample["img"].permute(1, 2, 0).numpy().astype(np.float32)
        colours = _colours(values)
        blend = np.where((values > 0)[..., None], 0.45 * image + 0.55 * colours, image)
        write_rgb_png(blend.astype(np.uint8), show_dir / f"{Path(sample['meta']['path']).stem}_instances.png")

    return write


def _colours(values: Any) -> Any:
    """A stable colour per instance value (neighbours almost always differ)."""
    import numpy as np

    v = values.astype(np.uint64) * np.uint64(2654435761)
    return np.stack([(v >> np.uint64(s)) % np.uint64(196) + np.uint64(60) for s in (0, 8, 16)], -1).astype(np.float32)
