"""``python -m training.pretrain CONFIG`` (``mtp-pretrain``) — MTP's multi-task pretraining (``main_pretrain.py``).

    srun -N 4 --ntasks-per-node=8 --gres=gpu:8 python -m training.pretrain \\
        training/configs/pretrain/vit-b-rvsa-224-samrs-ss-is.py --work-dir W --launcher slurm

The config holds ``main_pretrain.py``'s options under their names (``backbone``, ``datasets``, ``tasks``,
``batch_size`` per process, ``batch_mode`` avg|ratio, ``background``, ``image_size``, ``end_iter``, ``interval``,
``workers``, ``use_ckpt``, ``mixed_precision``, ``init_backbone``: a checkpoint path, MTP's ``mae`` file) and where
each dataset lives (``data``, optionally ``val_data``); ``--ft True --resume CKPT`` is ``--resume CKPT`` here, and
``--port``, ``--distributed``, ``--world_size`` come from the launcher.

One iteration takes a batch from every dataset's loader (zipped, see :mod:`training.data.zipped`), runs the encoder
once on them all, and minimises the unweighted sum of every task's and dataset's losses (each logged) with AdamW, a
per-iteration cosine schedule to ``end_iter``, gradients clipped at 5 and optional AMP, activation checkpointing and
DDP with unused parameters. Checkpoints are MTP's files
(:mod:`training.pretrain_checkpoint`). Preemption, ``--resume`` and requeueing are the fine-tuning CLI's
(:mod:`training.runner`); a resumed run equals an uninterrupted one bit for bit.

Known differences from the original, by design: every listed dataset trains (the original always runs all three
SAMRS sets, unlisted ones with batch 1); ``batch_mode='ratio'`` splits the encoder features by each dataset's own
batch (the original assumes equal batches there); ``mixed_precision`` runs the forward pass under autocast (the
original only scales the loss); the checkpoint's schedule is saved after the iteration's step (the original saves
it one step behind, so its resume repeats a learning rate).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

import mtp_core
from mtp_core.checkpoint import load_weights, safe_load
from mtp_core.models import create_model
from mtp_core.models.multitask import DatasetSpec, MultiTaskModel, sum_losses
from training.config import ConfigError, apply_overrides, config_text, load_config, merge
from training.data.instance_transforms import mtp_pipelines
from training.data.multitask_preprocess import MultiTaskDataPreprocessor
from training.data.samrs import SAMRS_CLASSES, SAMRSDataset
from training.data.transforms import build_from_cfg
from training.data.zipped import ZippedBatchSampler, epoch_iterations
from training.dist import DistInfo, per_tensor_allreduce
from training.optim import build_scheduler
from training.optim_wrapper import build_optim_wrapper
from training.preemption import StopSafeDataLoader
from training.pretrain_checkpoint import (
    checkpoint_stem,
    cosine_state_dict,
    load_cosine_state,
    save_pretrain_checkpoint,
)
from training.randomness import gather_rng_states, restore_rng_states
from training.runner import IterRunner
from training.sync_bn import convert_sync_bn
from training.train import build_parser, launch

log = logging.getLogger("mtp.train")

BACKBONES = ("vit_b_rvsa", "vit_l_rvsa", "vit_tiny_rvsa")
BATCH_MODES = ("avg", "ratio")
DATASET_TYPES = {"SAMRSDataset": SAMRSDataset}

PRETRAIN_DEFAULTS: dict[str, Any] = {
    # main_pretrain.py's options and defaults (its datasets live at hard-coded paths: here ``data``)
    "backbone": "vit_b_rvsa",
    "datasets": ["sota", "sior", "fast"],
    "tasks": ["ss", "is"],
    "batch_size": 8,
    "batch_mode": "avg",
    "background": True,
    "image_size": 224,
    "end_iter": 80000,
    "interval": 2000,
    "workers": 0,
    "use_ckpt": False,
    "mixed_precision": False,
    "init_backbone": None,
    "data": {},
    "val_data": {},
    # the framework's decoders (e.g. narrow ones for tiny models) and the semantic-label padding of the original
    "model": {"decoder_args": None},
    "faithful_seg_pad": False,
    "data_preprocessor": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "bgr_to_rgb": True},
    # the original's optimizer: AdamW 6e-5 through LayerDecayOptimizerConstructor_ViT, which puts every parameter of
    # the framework (named encoder.*, not backbone.*) in its last layer: no layer decay; norms and biases not decayed
    "optim_wrapper": {
        "type": "OptimWrapper",
        "optimizer": {"type": "AdamW", "lr": 6e-5, "betas": (0.9, 0.999), "weight_decay": 0.05},
        "constructor": "LayerDecayOptimizerConstructor_ViT",
        "paramwise_cfg": {"num_layers": 12, "layer_decay_rate": 0.9},
        "clip_grad": {"max_norm": 5},
    },
    "randomness": {"seed": 2023, "diff_rank_seed": True},  # set_seeds(2023), then 2023 + rank under DDP
    "default_hooks": {"logger": {"interval": 50}},
    "stop_check_interval": 10,
    "load_from": None,
    "resume": False,
}
OPTIONAL_KEYS = ("optim_wrapper.clip_grad.max_norm", "optim_wrapper.dtype", "optim_wrapper.loss_scale",
                 "model.decoder_args")


def resolve_config(path: str, options: Sequence[str], amp: bool = False) -> dict[str, Any]:
    """The config with MTP's defaults under it, ``--cfg-options`` applied and every option checked."""
    cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, load_config(path)), options, OPTIONAL_KEYS)
    if amp:
        cfg["mixed_precision"] = True
    problems = []
    if cfg["backbone"] not in BACKBONES:
        problems.append(f"backbone {cfg['backbone']!r} is not one of {BACKBONES}")
    if cfg["batch_mode"] not in BATCH_MODES:
        problems.append(f"batch_mode {cfg['batch_mode']!r} is not one of {BATCH_MODES}")
    if not cfg["datasets"] or len(set(cfg["datasets"])) != len(cfg["datasets"]):
        problems.append(f"datasets must be distinct names, got {cfg['datasets']}")
    missing = [name for name in cfg["datasets"] if name not in cfg["data"]]
    if missing:
        problems.append(f"no data.{missing[0]} (where dataset {missing[0]!r} lives), e.g. data=dict({missing[0]}="
                        "dict(type='SAMRSDataset', data_root=..., ann_file=...))")
    if int(cfg["image_size"]) % 32:
        problems.append(f"image_size {cfg['image_size']} must be a multiple of 32 (the batches are padded to 32)")
    if int(cfg["end_iter"]) < 1 or int(cfg["interval"]) < 1:
        problems.append("end_iter and interval must be >= 1")
    if problems:
        raise ConfigError("; ".join(problems))
    if cfg["mixed_precision"] and cfg["optim_wrapper"].get("type", "OptimWrapper") == "OptimWrapper":
        cfg["optim_wrapper"] = {**cfg["optim_wrapper"], "type": "AmpOptimWrapper"}
    return cfg


def batch_sizes(total: int, sizes: Sequence[int], mode: str) -> list[int]:
    """Per-dataset batches of one process: ``avg`` splits ``total`` evenly, ``ratio`` by dataset size (MTP's
    hard-coded SAMRS image counts are those sizes); fractions are dropped, as ``int()`` does in the original."""
    if mode == "avg":
        out = [int(total / len(sizes))] * len(sizes)
    else:
        out = [int(total * n / sum(sizes)) for n in sizes]
    if min(out) < 1:
        raise ConfigError(f"batch_size {total} over datasets of {list(sizes)} images ({mode}) gives a dataset no image "
                          f"per step ({out}): raise batch_size")
    return out


class Pretrainer(IterRunner):
    """Builds the datasets, the framework and its optimizer from a pretraining config and runs the loop."""

    def __init__(self, cfg: dict[str, Any], work_dir: Path, info: DistInfo) -> None:
        super().__init__(cfg, work_dir, info)
        self.tasks = tuple(cfg["tasks"])
        self.max_iters = int(cfg["end_iter"])
        self.interval = int(cfg["interval"])
        size = int(cfg["image_size"])
        train_pipeline, val_pipeline = mtp_pipelines(size)
        self.train_sets = [self._dataset(cfg["data"][n], train_pipeline, n) for n in cfg["datasets"]]
        self.val_sets = [self._dataset(cfg["val_data"][n], val_pipeline, n, test_mode=True)
                         for n in cfg["datasets"] if n in cfg["val_data"]]
        if self.val_sets and len(self.val_sets) != len(self.train_sets):
            raise ConfigError("val_data must name every dataset of 'datasets', or none")
        sizes = [len(d) for d in self.train_sets]
        self.batch_sizes = batch_sizes(int(cfg["batch_size"]), sizes, cfg["batch_mode"])
        workers = int(cfg["workers"])
        self.workers = ([int(workers / len(sizes))] * len(sizes) if cfg["batch_mode"] == "avg"
                        else [int(workers * n / sum(sizes)) for n in sizes])
        self.epoch_length = epoch_iterations(sizes, self.batch_sizes, info.world_size)
        if self.epoch_length < 1:
            raise ConfigError(f"a dataset has fewer images ({sizes}) than its batch ({self.batch_sizes}) on each of "
                              f"{info.world_size} process(es): lower batch_size")
        specs = [DatasetSpec(n, len(d.classes)) for n, d in zip(cfg["datasets"], self.train_sets)]
        decoder_args = (cfg.get("model") or {}).get("decoder_args")
        model: MultiTaskModel = create_model(
            f"mtp_{cfg['backbone']}_multitask", datasets=specs, tasks=self.tasks, background=bool(cfg["background"]),
            decoder_args=decoder_args, img_size=size, use_checkpoint=bool(cfg["use_ckpt"]))
        if cfg.get("init_backbone"):
            self._log_report(load_weights(model, cfg["init_backbone"]))
        if cfg.get("load_from") and not cfg.get("resume"):
            self._log_report(load_weights(model, cfg["load_from"]))
        if info.distributed:
            model = convert_sync_bn(model, info.device)
        self.model = model.to(info.device)
        pre = cfg["data_preprocessor"]
        self.preprocess = MultiTaskDataPreprocessor(pre["mean"], pre["std"], 32, (size, size),
                                                    bool(pre.get("bgr_to_rgb", True)), bool(cfg["faithful_seg_pad"]))
        self.optim_wrapper = build_optim_wrapper(self.model, cfg["optim_wrapper"], info.device)
        cosine = {"type": "CosineAnnealingLR", "T_max": self.max_iters, "eta_min": 0.0, "by_epoch": False}
        self.scheduler = build_scheduler(self.optim_wrapper.optimizer, [cosine], self.max_iters)
        self.ddp = None
        if info.distributed:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=True)
            if cfg["use_ckpt"]:
                self.ddp._set_static_graph()  # as the original: checkpointed blocks re-run in backward
            if info.device.type == "cpu":
                self.ddp.register_comm_hook(None, per_tensor_allreduce)  # bit-exact resume with 3+ ranks
        self.loss_pretrain: list[float] = []
        if info.is_main:
            log.info("datasets %s: %s images, batch %s per process, %d iterations per epoch; tasks %s; %r",
                     list(cfg["datasets"]), sizes, self.batch_sizes, self.epoch_length, list(self.tasks),
                     self.optim_wrapper)

    def _dataset(self, cfg: dict[str, Any], pipeline: list, name: str, test_mode: bool = False) -> SAMRSDataset:
        args = {"pipeline": pipeline, "background": bool(self.cfg["background"]), "test_mode": test_mode, **cfg}
        if "classes" not in cfg and name in SAMRS_CLASSES:
            args["classes"] = name
        args.setdefault("type", "SAMRSDataset")
        return build_from_cfg(args, DATASET_TYPES, "dataset")

    # ----------------------------------------------------------------------------------------------- data
    def _batches(self) -> Iterator[tuple[list, ...]]:
        loaders = []
        for k, (dataset, batch, workers) in enumerate(zip(self.train_sets, self.batch_sizes, self.workers)):
            sampler = ZippedBatchSampler(len(dataset), batch, self.epoch_length, k, self.seed, self.info.rank,
                                         self.info.world_size, start=self.iteration)
            loaders.append(iter(StopSafeDataLoader(
                dataset, batch_sampler=sampler, num_workers=workers, collate_fn=list,
                pin_memory=self.info.device.type == "cuda", generator=torch.Generator().manual_seed(self.seed))))
        return zip(*loaders)

    # ----------------------------------------------------------------------------------------------- steps
    def train_step(self, batches: Iterator[tuple[list, ...]]) -> dict[str, torch.Tensor]:
        """One iteration: every dataset's batch, one encoder pass, the summed losses, an optimizer step."""
        net = self.ddp or self.model
        inputs = [self.preprocess(samples, self.info.device, training=True) for samples in next(batches)]
        with self.optim_wrapper.optim_context(net):
            total, terms = sum_losses(net(inputs), self.model.datasets)
        stepped = self.optim_wrapper.update_params(total)
        self.scheduler.step()
        self.loss_pretrain.append(float(total.detach()))
        out = {"loss": total.detach(), **terms}
        if stepped and self.optim_wrapper.grad_norm is not None:
            out["grad_norm"] = self.optim_wrapper.grad_norm
        return out

    def _checkpoint_due(self) -> bool:
        return self.iteration % self.interval == 0

    def _epoch(self) -> int:
        """The original's epoch counter when iteration ``self.iteration`` was trained."""
        return max(self.iteration - 1, 0) // self.epoch_length

    def save_checkpoint(self, last: bool = False) -> Path:
        """Every rank calls it (the random states of all ranks are gathered); rank 0 writes both files."""
        rng = gather_rng_states(self.info.device)
        stem = checkpoint_stem(None if last else self.iteration, self.cfg["backbone"], self.tasks)
        path = self.work_dir / f"{stem}.pth"
        if not self.info.is_main:
            return path
        common = {"epoch": self._epoch(), "iteration": self.iteration, "optimizer": self.optim_wrapper.state_dict(),
                  "scheduler": cosine_state_dict(self.scheduler, self.max_iters), "loss_pretrain": self.loss_pretrain}
        meta = {"mtp_core_version": mtp_core.__version__, "seed": self.seed, "world_size": self.info.world_size,
                "rng": {"ranks": rng}, "config": config_text(self.cfg), "backbone": self.cfg["backbone"],
                "tasks": list(self.tasks), "datasets": [[d.name, d.num_classes] for d in self.model.datasets],
                "classes": [list(d.classes) for d in self.train_sets],
                "background": bool(self.cfg["background"]), "image_size": int(self.cfg["image_size"])}
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        encoder = {k: v.detach().cpu() for k, v in self.model.encoder.state_dict().items()}
        path = save_pretrain_checkpoint(self.work_dir, stem, state, encoder, common, meta)
        self._point_last_checkpoint_to(path)
        log.info("saved checkpoint %s (and %s_encoder.pth)", path, stem)
        return path

    def resume(self, path: Path) -> None:
        state = safe_load(path)
        missing = [k for k in ("state_dict", "optimizer", "scheduler", "iteration") if k not in state]
        if missing:
            raise ValueError(f"{path} is not a pretraining checkpoint (no {missing}); use load_from=PATH to start from "
                             "its weights instead")
        if not any(k.startswith("encoder.") for k in state["state_dict"]):
            raise ValueError(f"{path} holds only an encoder: resume from the full *_pretrn_model.pth beside it")
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as exc:
            raise ValueError(f"{path} was written for another framework (datasets, tasks or backbone): "
                             f"{str(exc).splitlines()[0]}") from None
        self.optim_wrapper.load_state_dict(state["optimizer"])
        load_cosine_state(self.scheduler, state["scheduler"])
        self.iteration = int(state["iteration"])
        self.loss_pretrain = [float(v) for v in state.get("loss_pretrain", [])]
        meta = state.get("meta")
        if isinstance(meta, dict) and "rng" in meta:
            self.seed = int(meta.get("seed", self.seed))
            exact = restore_rng_states(meta["rng"]["ranks"], self.info.rank, self.info.world_size, self.info.device,
                                       self.seed, self.iteration)
            if not exact and self.info.is_main:
                log.warning("the checkpoint was written by %d process(es), this run has %d: the data are re-sharded "
                            "and the random generators re-seeded (deterministic, not the original run's draws)",
                            len(meta["rng"]["ranks"]), self.info.world_size)
        elif self.info.is_main:
            log.warning("%s has no random states (written by the original code?): training continues from its "
                        "weights, optimizer and schedule, not bit for bit", path)
        self._forget_log_after(self.iteration)
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    def validate(self) -> dict[str, Any] | None:
        """MTP's validation after the last iteration (rank 0): per dataset SS mIoU and IS COCO mAP, and the mean of
        their main numbers (the original's "MTP average accuracy", segm mAP for IS)."""
        if not self.val_sets or not self.info.is_main:
            return None
        from training.multitask_eval import evaluate_dataset

        results = [evaluate_dataset(self.model, k, d, self.preprocess, self.info.device)
                   for k, d in enumerate(self.val_sets)]
        main = [r[key] * (100.0 if key != "mIoU" else 1.0) for r in results for key in ("mIoU", "segm_mAP")
                if key in r]
        summary = {"average": sum(main) / len(main)}
        for r in results:
            summary.update({f"{r['dataset']}/{k}": v for k, v in r.items() if isinstance(v, (int, float))})
            summary.update({f"{r['dataset']}/IoU.{c}": v for c, v in r.get("IoU", {}).items()})
        log.info("validation at iteration %d: %s", self.iteration,
                 " ".join(f"{k} {v:.4g}" for k, v in summary.items()))
        self._write_log({"iter": self.iteration, "mode": "val", **summary})
        return summary

    def _finish(self) -> None:
        self.validate()
        self.save_checkpoint(last=True)
        if self.info.distributed:
            torch.distributed.barrier()


def main(argv: Sequence[str] | None = None) -> int:
    parser: argparse.ArgumentParser = build_parser()
    parser.prog = "mtp-pretrain"
    parser.description = "MTP's multi-task pretraining (main_pretrain.py) from a config."
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.cfg_options, args.amp)
    except (ConfigError, ValueError) as exc:
        print(f"mtp-pretrain: error: {exc}", file=sys.stderr)
        return 2
    return launch(args, cfg, Pretrainer, "mtp-pretrain")


if __name__ == "__main__":
    sys.exit(main())
