"""The iteration-based training loop of MTP's recipe: resumable bit for bit, preemption-safe, distributed.

Resuming restores model, optimizer (and loss scaler), scheduler, iteration, the sampler's place in the global sample
stream and every rank's RNG state; data augmentation is a pure function of (seed, sample position) (see
``training.data``), so a run interrupted at iteration k and resumed equals an uninterrupted one. A stop signal on any
rank (SIGTERM, SIGUSR1, SIGINT; see ``training.preemption``) makes every rank stop at the next agreed optimizer step,
write a checkpoint and exit with ``REQUEUE_EXIT_CODE``; inside a Slurm job rank 0 also asks the batch script of
``mtp-slurm`` for a requeue.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mtp_core
from mtp_core.checkpoint import CheckpointError, atomic_torch_save, load_weights, safe_load
from mtp_core.models import ModelCard
from training.builder import CHANGE_ARCH, SegmentorSpec, build_segmentor, model_card, segmentation_loss
from training.config import config_text
from training.data import InfiniteSampler, SegDataPreProcessor, build_dataset, collate
from training.dist import DistInfo, per_tensor_allreduce
from training.evaluation import evaluate
from training.optim import build_scheduler
from training.optim_wrapper import build_optim_wrapper
from training.preemption import REQUEUE_EXIT_CODE, StopSafeDataLoader
from training.randomness import gather_rng_states, restore_rng_states
from training.runner import LAST_CHECKPOINT, IterRunner
from training.sync_bn import convert_sync_bn

__all__ = ["DEFAULTS", "LAST_CHECKPOINT", "OPTIONAL_KEYS", "REQUEUE_EXIT_CODE", "Trainer"]

log = logging.getLogger("mtp.train")

DEFAULTS: dict[str, Any] = {
    "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": 80000, "val_interval": 20000},
    "default_hooks": {
        "logger": {"type": "LoggerHook", "interval": 50, "log_metric_by_epoch": False},
        "checkpoint": {"type": "CheckpointHook", "by_epoch": False, "interval": 5000, "max_keep_ckpts": -1},
    },
    "randomness": {"seed": 0, "diff_rank_seed": False},
    "find_unused_parameters": False,
    "load_from": None,
    "resume": False,
    "model_card": {},
    "stop_check_interval": 10,
}

# settings read here that configs usually leave out: --cfg-options may add them (MMEngine's wrapper keys, TTA)
OPTIONAL_KEYS = (
    "optim_wrapper.accumulative_counts", "optim_wrapper.clip_grad", "optim_wrapper.clip_grad.type",
    "optim_wrapper.clip_grad.max_norm", "optim_wrapper.clip_grad.norm_type", "optim_wrapper.clip_grad.clip_value",
    "optim_wrapper.loss_scale", "optim_wrapper.dtype", "tta_pipeline",
)


def _existing(path: Any, setting: str) -> Any:
    """A starting checkpoint that is missing is named with the setting that asks for it and the ways out."""
    if isinstance(path, (str, Path)) and not Path(path).is_file():
        raise CheckpointError(f"{setting} = {path!r}: no such file. Make it first (the config's header comments say "
                              f"how, e.g. an earlier training stage and `mtp convert-ckpt`), or point to another "
                              f"with --cfg-options {setting}=PATH")
    return path


class Trainer(IterRunner):
    """Builds everything a config describes and runs (or resumes) the training loop."""

    def __init__(self, cfg: dict[str, Any], work_dir: Path, info: DistInfo) -> None:
        super().__init__(cfg, work_dir, info)
        self.spec: SegmentorSpec = build_segmentor(cfg["model"])
        pre_cfg = cfg.get("data_preprocessor") or cfg["model"].get("data_preprocessor") or {}
        self.preprocess = SegDataPreProcessor(
            mean=pre_cfg.get("mean", (123.675, 116.28, 103.53)), std=pre_cfg.get("std", (58.395, 57.12, 57.375)),
            size=tuple(pre_cfg["size"]) if pre_cfg.get("size") else None,
            pad_val=pre_cfg.get("pad_val", 0), seg_pad_val=pre_cfg.get("seg_pad_val", 255),
            size_divisor=pre_cfg.get("size_divisor"),
        )
        self.eval_preprocess = SegDataPreProcessor(mean=self.preprocess.mean, std=self.preprocess.std)
        loader_cfg = cfg["train_dataloader"]
        self.train_set = build_dataset(loader_cfg["dataset"])
        self.val_set = build_dataset(cfg["val_dataloader"]["dataset"]) if self._validates() else None  # fail now
        self.classes = tuple(getattr(self.train_set, "classes", ("background", "building")))
        ranges = self.train_set.band_ranges  # validation, the card and so every later prediction scale alike
        if self.val_set is not None and "band_ranges" not in cfg["val_dataloader"]["dataset"]:
            self.val_set.use_band_ranges(ranges)
        card_overrides = {"band_ranges": ranges} if ranges else {}
        self.card: ModelCard = model_card(self.spec, pre_cfg, self.classes,
                                          {**card_overrides, **(cfg.get("model_card") or {})})
        self._set_length(loader_cfg)
        self._check_batch_norm_batch()
        self._place_model(self.spec.model)

    def _set_length(self, loader_cfg: dict[str, Any]) -> None:
        """Batch size, epoch length (epoch-based configs) and the number of iterations."""
        self.batch_size = int(loader_cfg.get("batch_size", 1))
        self.iters_per_epoch = self._iters_per_epoch()
        self.max_iters = (int(self.cfg["train_cfg"]["max_epochs"]) * self.iters_per_epoch if self.iters_per_epoch
                          else int(self.cfg["train_cfg"]["max_iters"]))

    def _place_model(self, model: nn.Module) -> None:
        """The model's starting weights (backbone ``pretrained``, ``load_from``), SyncBN, device, optimizer wrapper,
        schedule and DDP; the sampler comes with the first batch."""
        cfg, info = self.cfg, self.info
        if self.spec.pretrained:
            self._log_report(load_weights(model.backbone, _existing(self.spec.pretrained, "model.backbone.pretrained")))
        if cfg.get("load_from") and not cfg.get("resume"):  # resume=True makes load_from the checkpoint to resume
            self._log_report(load_weights(model, _existing(cfg["load_from"], "load_from")))
        if info.distributed and self.spec.architecture == CHANGE_ARCH and not cfg.get("find_unused_parameters"):
            raise ValueError("a change detector's backbone keeps fpn1..4 and norm (they are in its checkpoints) but "
                             "gives them no gradient, which distributed training must be told: set "
                             "find_unused_parameters=True (MTP's change-detection command does)")
        if info.distributed and self.spec.sync_bn:
            model = convert_sync_bn(model, info.device)
        self.model = model.to(info.device)
        self.optim_wrapper = build_optim_wrapper(self.model, cfg["optim_wrapper"], info.device)
        if info.is_main:
            log.info("%r", self.optim_wrapper)
        self.scheduler = build_scheduler(self.optim_wrapper.optimizer, cfg.get("param_scheduler") or [],
                                         self.max_iters, self.iters_per_epoch)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                    find_unused_parameters=bool(cfg.get("find_unused_parameters")))
            if info.distributed else None
        )
        if self.ddp is not None and info.device.type == "cpu":
            self.ddp.register_comm_hook(None, per_tensor_allreduce)  # bit-exact resume with 3+ ranks
        self.sampler: InfiniteSampler | None = None
        self._sampler_state: dict[str, Any] | None = None
        self._sampler_first_iteration = 0

    def _iters_per_epoch(self) -> int | None:
        """Iterations of one epoch for Open-CD's ``EpochBasedTrainLoop`` (None for iteration-based training).

        An epoch is one pass over the training set by all ranks together: ``ceil(len / (batch x ranks))``
        iterations. The sample stream runs on across epoch borders (no short last batch), so every iteration has a
        full batch and resuming stays exact; the epoch length sets the schedule, validation and checkpoints."""
        train_cfg = self.cfg["train_cfg"]
        loop = train_cfg.get("type", "IterBasedTrainLoop")
        if loop == "IterBasedTrainLoop":
            return None
        if loop != "EpochBasedTrainLoop":
            raise ValueError(f"train_cfg type {loop!r} is not supported: use IterBasedTrainLoop or EpochBasedTrainLoop")
        if not train_cfg.get("max_epochs"):
            raise ValueError("EpochBasedTrainLoop needs train_cfg.max_epochs")
        return max(1, -(-len(self.train_set) // (self.batch_size * self.info.world_size)))

    def _every(self, hook_cfg: dict[str, Any] | None, key: str, default: int, by_epoch: bool) -> int:
        """An interval in iterations: epochs times the epoch length where the setting is per epoch."""
        value = int((hook_cfg or {}).get(key) or default)
        return value * self.iters_per_epoch if by_epoch and self.iters_per_epoch else value

    def _validates(self) -> bool:
        """MMEngine validates when val_dataloader, val_evaluator and val_cfg are all set."""
        return bool(self.cfg.get("val_dataloader") and self.cfg.get("val_evaluator")
                    and self.cfg.get("val_cfg", {}) is not None)

    def _check_batch_norm_batch(self) -> None:
        """BatchNorm on the decode head's 1x1 pooled features needs two samples per (synchronised) batch."""
        norm_batch = self.batch_size * (self.info.world_size if self.spec.sync_bn else 1)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.spec.model.modules())
        if has_bn and norm_batch < 2 and 1 in getattr(self.spec.model.decode_head, "pool_scales", ()):
            raise ValueError(
                "train_dataloader.batch_size=1 with BatchNorm: the decode head's 1x1 pooled features (pool_scales 1) "
                "then have one value per channel, which BatchNorm cannot normalise; use batch_size>=2, or SyncBN "
                "with 2 or more processes (MTP: 8 GPUs x batch 1)")

    # ----------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Every rank calls it (the RNG states of all ranks are gathered); rank 0 writes the file."""
        rng = gather_rng_states(self.info.device)
        path = self.work_dir / f"iter_{self.iteration}.pth"
        if not self.info.is_main:
            return path
        assert self.sampler is not None
        consumed = (self.iteration - self._sampler_first_iteration) * self.batch_size
        state = {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "meta": {
                "model_card": self.card.to_dict(),
                "mtp_core_version": mtp_core.__version__,
                "iteration": self.iteration,
                "seed": self.seed,
                "world_size": self.info.world_size,
                "config": config_text(self.cfg),
            },
            "optimizer": self.optim_wrapper.state_dict(),
            "param_schedulers": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(consumed),
            "rng": {"ranks": rng},
        }
        atomic_torch_save(state, path)
        self._point_last_checkpoint_to(path)
        self._prune_checkpoints()
        log.info("saved checkpoint %s", path)
        return path

    def _prune_checkpoints(self) -> None:
        keep = int(self.cfg["default_hooks"]["checkpoint"].get("max_keep_ckpts", -1))
        if keep <= 0:
            return
        found = sorted(self.work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        for old in found[:-keep]:
            old.unlink(missing_ok=True)

    def resume(self, path: Path) -> None:
        state = safe_load(path)
        missing = [k for k in ("state_dict", "optimizer", "param_schedulers", "meta", "rng") if k not in state]
        if missing:
            raise ValueError(f"{path} is not a training checkpoint of this project (no {missing}); "
                             "use load_from=PATH (without resume=True) to start from its weights instead")
        self.model.load_state_dict(state["state_dict"])
        self.optim_wrapper.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["param_schedulers"])
        self.iteration = int(state["meta"]["iteration"])
        saved_seed = int(state["meta"].get("seed", self.seed))
        if saved_seed != self.seed and self.info.is_main:
            log.warning("the checkpoint was trained with seed %d, the config says %d: continuing with %d (as MMEngine)",
                        saved_seed, self.seed, saved_seed)
        self.seed = saved_seed
        self._sampler_state = state.get("sampler") if "position" in state.get("sampler", {}) else None
        states = state["rng"].get("ranks", [state["rng"]])
        exact = restore_rng_states(states, self.info.rank, self.info.world_size, self.info.device, self.seed,
                                   self.iteration)
        if not exact and self.info.is_main:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: the sample stream continues where "
                "all ranks left it, re-sharded over %d ranks (effective batch %d -> %d), and the random generators "
                "are re-seeded from (seed, iteration, rank). Deterministic, but not the run %d processes would give.",
                len(states), self.info.world_size, self.info.world_size, len(states) * self.batch_size,
                self.info.world_size * self.batch_size, len(states))
        self._forget_log_after(self.iteration)
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    # ----------------------------------------------------------------------------------------------- data
    def _batches(self) -> Iterator[list]:
        cfg = self.cfg["train_dataloader"]
        self.sampler = InfiniteSampler(
            len(self.train_set), shuffle=cfg.get("sampler", {}).get("shuffle", True), seed=self.seed,
            rank=self.info.rank, world_size=self.info.world_size, start=self.iteration * self.batch_size,
        )
        if self._sampler_state is not None:
            self.sampler.load_state_dict(self._sampler_state)
        self._sampler_first_iteration = self.iteration
        workers = int(cfg.get("num_workers", 0))
        loader = StopSafeDataLoader(
            self.train_set, batch_size=self.batch_size, sampler=self.sampler, num_workers=workers,
            collate_fn=collate, persistent_workers=workers > 0 and bool(cfg.get("persistent_workers", False)),
            pin_memory=self.info.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds must not draw from the global RNG
        )
        return iter(loader)

    def _val_loader(self) -> StopSafeDataLoader:
        assert self.val_set is not None
        indices = list(range(self.info.rank, len(self.val_set), self.info.world_size))
        return StopSafeDataLoader(torch.utils.data.Subset(self.val_set, indices), batch_size=1, collate_fn=collate,
                                  num_workers=int(self.cfg["val_dataloader"].get("num_workers", 0)),
                                  generator=torch.Generator())

    # ----------------------------------------------------------------------------------------------- loop
    def validate(self) -> dict[str, Any] | None:
        if self.val_set is None:
            return None
        metrics = evaluate(self.model, self._val_loader(), self.eval_preprocess, self.info, self.classes,
                           self.spec.test_mode, self.spec.crop_size, self.spec.stride,
                           getattr(self.optim_wrapper, "cast_dtype", None))
        keys = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "building_f1", "changed_f1", "changed_iou")
        summary = {k: metrics[k] for k in keys if k in metrics}
        if self.info.is_main:
            log.info("val at iter %d: %s", self.iteration, " ".join(f"{k} {v:.2f}" for k, v in summary.items()))
        self._write_log({"iter": self.iteration, "mode": "val", **summary})
        return metrics

    def train_step(self, batches: Iterator[list]) -> dict[str, torch.Tensor]:
        """One iteration (one micro-batch): forward, backward, and an optimizer step when the wrapper says so."""
        net = self.ddp or self.model
        imgs, gts = self.preprocess(next(batches), self.info.device)
        with self.optim_wrapper.optim_context(net):
            logits, aux = net(imgs, return_aux=True)
            loss, parts = segmentation_loss(logits, aux, gts, self.spec.losses)
        stepped = self.optim_wrapper.update_params(loss)
        self.scheduler.step()  # every iteration, also while gradients accumulate (MMEngine's ParamSchedulerHook)
        out = {key: value.detach() for key, value in parts.items()}
        out["loss"] = loss.detach()
        if stepped and self.optim_wrapper.grad_norm is not None:
            out["grad_norm"] = self.optim_wrapper.grad_norm
        return out

    def _checkpoint_due(self) -> bool:
        hook = self.cfg["default_hooks"]["checkpoint"]
        every = self._every(hook, "interval", 5000, bool(hook.get("by_epoch")))
        return self.iteration % every == 0 or self.iteration == self.max_iters

    def _validation_due(self) -> bool:
        every = self._every(self.cfg["train_cfg"], "val_interval", 0, True)
        return bool(every) and self.iteration % every == 0
