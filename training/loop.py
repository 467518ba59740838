"""The iteration-based training loop of MTP's recipe: resumable bit for bit, preemption-safe, distributed.

Resuming restores model, optimizer, scheduler, iteration, sampler position and RNG; data augmentation is a pure
function of (seed, sample position) (see ``training.data``), so a run interrupted at iteration k and resumed equals an
uninterrupted one. SIGTERM/SIGUSR1 make every rank stop at the next agreed step, write a checkpoint and exit with
``REQUEUE_EXIT_CODE``, on which the sbatch script of ``mtp-slurm`` requeues the job.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import mtp_core
from mtp_core.checkpoint import atomic_torch_save, load_weights, safe_load
from mtp_core.models import EncoderDecoder, ModelCard
from training.builder import SegmentorSpec, build_segmentor, model_card, segmentation_loss
from training.config import config_text
from training.data import InfiniteSampler, SegDataPreProcessor, build_dataset, collate
from training.dist import DistInfo, broadcast_object
from training.evaluation import evaluate
from training.optim import build_optimizer, build_scheduler
from training.sync_bn import convert_sync_bn

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; mtp-slurm's sbatch script requeues the job on it
LAST_CHECKPOINT = "last_checkpoint"
log = logging.getLogger("mtp.train")

DEFAULTS: dict[str, Any] = {
    "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": 80000, "val_interval": 20000},
    "default_hooks": {
        "logger": {"type": "LoggerHook", "interval": 50, "log_metric_by_epoch": False},
        "checkpoint": {"type": "CheckpointHook", "by_epoch": False, "interval": 5000, "max_keep_ckpts": -1},
    },
    "randomness": {"seed": 0},
    "find_unused_parameters": False,
    "load_from": None,
    "resume": False,
    "model_card": {},
    "stop_check_interval": 10,
}


class StopRequested(Exception):
    """A preemption signal arrived; a checkpoint was written."""


@dataclass
class AmpSettings:
    dtype: torch.dtype | None  # None = float32
    scaler: torch.amp.GradScaler | None


def _amp_settings(optim_cfg: dict[str, Any], device: torch.device) -> AmpSettings:
    if optim_cfg.get("type", "OptimWrapper") != "AmpOptimWrapper":
        return AmpSettings(None, None)
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    name = optim_cfg.get("dtype") or ("bfloat16" if bf16_ok else "float16")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
    if dtype is None:
        raise ValueError(f"optim_wrapper.dtype {name!r}: use 'bfloat16' or 'float16'")
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return AmpSettings(dtype, scaler)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state = {"torch": torch.get_rng_state(), "numpy": np_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.array(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Builds everything a config describes and runs (or resumes) the training loop."""

    def __init__(self, cfg: dict[str, Any], work_dir: Path, info: DistInfo) -> None:
        self.cfg, self.work_dir, self.info = cfg, work_dir, info
        self.seed = int(cfg["randomness"].get("seed") or 0)
        seed_everything(self.seed)
        self.spec: SegmentorSpec = build_segmentor(cfg["model"])
        pre_cfg = cfg.get("data_preprocessor") or cfg["model"].get("data_preprocessor") or {}
        self.preprocess = SegDataPreProcessor(
            mean=pre_cfg.get("mean", (123.675, 116.28, 103.53)), std=pre_cfg.get("std", (58.395, 57.12, 57.375)),
            size=tuple(pre_cfg["size"]) if pre_cfg.get("size") else None,
            pad_val=pre_cfg.get("pad_val", 0), seg_pad_val=pre_cfg.get("seg_pad_val", 255),
        )
        self.eval_preprocess = SegDataPreProcessor(mean=self.preprocess.mean, std=self.preprocess.std)
        loader_cfg = cfg["train_dataloader"]
        self.train_set = build_dataset(loader_cfg["dataset"])
        self.classes = tuple(getattr(self.train_set, "classes", ("background", "building")))
        self.card: ModelCard = model_card(self.spec, pre_cfg, self.classes, cfg.get("model_card"))
        self.max_iters = int(cfg["train_cfg"]["max_iters"])
        self.batch_size = int(loader_cfg.get("batch_size", 1))
        self.amp = _amp_settings(cfg["optim_wrapper"], info.device)
        self.accumulate = int(cfg["optim_wrapper"].get("accumulative_counts", 1))
        clip = cfg["optim_wrapper"].get("clip_grad") or {}
        self.clip_norm = float(clip["max_norm"]) if clip.get("max_norm") else None

        model: EncoderDecoder = self.spec.model
        if self.spec.pretrained:
            self._log_report(load_weights(model.backbone, self.spec.pretrained))
        if cfg.get("load_from"):
            self._log_report(load_weights(model, cfg["load_from"]))
        if info.distributed and self.spec.sync_bn:
            model = convert_sync_bn(model, info.device)
        self.model = model.to(info.device)
        self.optimizer = build_optimizer(self.model, cfg["optim_wrapper"])
        self.scheduler = build_scheduler(self.optimizer, cfg.get("param_scheduler") or [], self.max_iters)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                    find_unused_parameters=bool(cfg.get("find_unused_parameters")))
            if info.distributed else None
        )
        self.iteration = 0
        self._stop_signal: int | None = None

    # ----------------------------------------------------------------------------------------------- logging
    def _log_report(self, report: Any) -> None:
        if self.info.is_main:
            log.info("%s", report.summary())

    def _write_log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(self.work_dir / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "meta": {
                "model_card": self.card.to_dict(),
                "mtp_core_version": mtp_core.__version__,
                "iteration": self.iteration,
                "seed": self.seed,
                "config": config_text(self.cfg),
            },
            "optimizer": self.optimizer.state_dict(),
            "param_schedulers": self.scheduler.state_dict(),
            "sampler": {"consumed_per_rank": self.iteration * self.batch_size * self.accumulate},
            "rng": _rng_state(),
            "scaler": self.amp.scaler.state_dict() if self.amp.scaler else None,
        }

    def save_checkpoint(self) -> Path:
        path = self.work_dir / f"iter_{self.iteration}.pth"
        state = self.checkpoint_state()  # every rank: RNG state is per rank, but rank 0's is what resumes
        if self.info.is_main:
            atomic_torch_save(state, path)
            tmp = self.work_dir / f".{LAST_CHECKPOINT}.tmp"
            tmp.write_text(str(path.resolve()))
            os.replace(tmp, self.work_dir / LAST_CHECKPOINT)
            self._prune_checkpoints()
            log.info("saved checkpoint %s", path)
        if self.info.distributed:
            dist.barrier()
        return path

    def _prune_checkpoints(self) -> None:
        keep = int(self.cfg["default_hooks"]["checkpoint"].get("max_keep_ckpts", -1))
        if keep <= 0:
            return
        found = sorted(self.work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        for old in found[:-keep]:
            old.unlink(missing_ok=True)

    def find_resume_checkpoint(self, explicit: str | None) -> Path | None:
        if explicit:
            return Path(explicit)
        pointer = self.work_dir / LAST_CHECKPOINT
        if pointer.is_file():
            return Path(pointer.read_text().strip())
        return None

    def resume(self, path: Path) -> None:
        state = safe_load(path)
        missing = [k for k in ("state_dict", "optimizer", "param_schedulers", "meta", "rng") if k not in state]
        if missing:
            raise ValueError(f"{path} is not a training checkpoint of this project (no {missing}); "
                             "use load_from=PATH to start from its weights instead")
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["param_schedulers"])
        if self.amp.scaler and state.get("scaler"):
            self.amp.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["meta"]["iteration"])
        _set_rng_state(state["rng"])
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    # ----------------------------------------------------------------------------------------------- signals
    def install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: Any) -> None:
            self._stop_signal = signum

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, request_stop)

    def _stop_agreed(self) -> bool:
        """All ranks stop at the same step: any rank's signal counts (a tiny all-reduce, every few steps)."""
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0], device=self.info.device)
        if self.info.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # ----------------------------------------------------------------------------------------------- data
    def _batches(self) -> Iterator[list]:
        cfg = self.cfg["train_dataloader"]
        sampler = InfiniteSampler(
            len(self.train_set), shuffle=cfg.get("sampler", {}).get("shuffle", True), seed=self.seed,
            rank=self.info.rank, world_size=self.info.world_size,
            start=self.iteration * self.batch_size * self.accumulate,
        )
        workers = int(cfg.get("num_workers", 0))
        loader = DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
            persistent_workers=workers > 0 and bool(cfg.get("persistent_workers", False)),
            pin_memory=self.info.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds must not draw from the global RNG
        )
        return iter(loader)

    def _val_loader(self, key: str) -> DataLoader | None:
        loader_cfg = self.cfg.get(key)
        if not loader_cfg:
            return None
        dataset = build_dataset(loader_cfg["dataset"])
        indices = list(range(self.info.rank, len(dataset), self.info.world_size))
        return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1, collate_fn=collate,
                          num_workers=int(loader_cfg.get("num_workers", 0)), generator=torch.Generator())

    # ----------------------------------------------------------------------------------------------- loop
    def validate(self) -> dict[str, Any] | None:
        loader = self._val_loader("val_dataloader")
        if loader is None or not self.cfg.get("val_evaluator"):
            return None
        metrics = evaluate(self.model, loader, self.eval_preprocess, self.info, self.classes, self.spec.test_mode,
                           self.spec.crop_size, self.spec.stride, self.amp.dtype)
        summary = {k: metrics[k] for k in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore")}
        if self.info.is_main:
            log.info("val at iter %d: %s", self.iteration, " ".join(f"{k} {v:.2f}" for k, v in summary.items()))
        self._write_log({"iter": self.iteration, "mode": "val", **summary})
        return metrics

    def train_step(self, batches: Iterator[list]) -> dict[str, torch.Tensor]:
        net = self.ddp or self.model
        parts_sum: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulate):
            imgs, gts = self.preprocess(next(batches), self.info.device)
            sync = self.ddp is None or micro == self.accumulate - 1
            context = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with context:
                with torch.autocast(self.info.device.type, dtype=self.amp.dtype or torch.float32,
                                    enabled=self.amp.dtype is not None):
                    logits, aux = net(imgs, return_aux=True)
                loss, parts = segmentation_loss(logits, aux, gts, self.spec.losses)
                loss = loss / self.accumulate
                (self.amp.scaler.scale(loss) if self.amp.scaler else loss).backward()
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0) + value.detach() / self.accumulate
        if self.clip_norm is not None:
            if self.amp.scaler:
                self.amp.scaler.unscale_(self.optimizer)
            parts_sum["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        if self.amp.scaler:
            self.amp.scaler.step(self.optimizer)
            self.amp.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        parts_sum["loss"] = sum(v for k, v in parts_sum.items() if "loss" in k)
        return parts_sum

    def run(self, resume: str | bool | None = None) -> int:
        """Train to ``max_iters`` (or stop on a signal); returns the process exit code."""
        if resume:
            found = self.find_resume_checkpoint(resume if isinstance(resume, str) else None)
            found = broadcast_object(found, self.info)
            if found is not None:
                self.resume(found)
            elif self.info.is_main:
                log.warning("--resume: no checkpoint in %s yet, starting from iteration 0", self.work_dir)
        self.install_signal_handlers()
        self.model.train()
        batches = self._batches()
        hooks = self.cfg["default_hooks"]
        log_every = int(hooks["logger"].get("interval", 50))
        ckpt_every = int(hooks["checkpoint"].get("interval", 5000))
        val_every = int(self.cfg["train_cfg"].get("val_interval") or 0)
        stop_every = int(self.cfg.get("stop_check_interval", 10))
        window: dict[str, torch.Tensor] = {}
        window_start, window_iters = time.perf_counter(), 0
        start_iter = self.iteration
        while self.iteration < self.max_iters:
            lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0)
            parts = self.train_step(batches)
            self.iteration += 1
            window_iters += 1
            for key, value in parts.items():
                window[key] = window.get(key, 0) + value
            if self.iteration % log_every == 0 or self.iteration == self.max_iters:
                elapsed = time.perf_counter() - window_start
                self._log_progress(lr, {k: float(v) / window_iters for k, v in window.items()},
                                   window_iters / max(elapsed, 1e-9), start_iter)
                window, window_start, window_iters = {}, time.perf_counter(), 0
            if self.iteration % ckpt_every == 0 or self.iteration == self.max_iters:
                self.save_checkpoint()
            if val_every and self.iteration % val_every == 0:
                self.validate()
            if self.iteration % stop_every == 0 and self._stop_agreed():
                if self.iteration % ckpt_every:
                    self.save_checkpoint()
                if self.info.is_main:
                    log.warning("stopped by signal %s at iteration %d; resume with --resume", self._stop_signal,
                                self.iteration)
                return REQUEUE_EXIT_CODE
        if self.info.is_main:
            self._plot_curves()
        return 0

    def _log_progress(self, lr: float, means: dict[str, float], its: float, start_iter: int) -> None:
        if not self.info.is_main:
            return
        remaining = (self.max_iters - self.iteration) / max(its, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining < 86400 else f"{remaining / 86400:.1f} d"
        memory = torch.cuda.max_memory_allocated(self.info.device) / 2**30 if self.info.device.type == "cuda" else 0.0
        record = {"iter": self.iteration, "mode": "train", "lr": lr, **means, "iter_per_s": its}
        if memory:
            record["memory_gib"] = memory
        self._write_log(record)
        losses = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        log.info("iter %d/%d | lr %.4e | loss %.4f (%s) | %.2f it/s | eta %s%s", self.iteration, self.max_iters, lr,
                 means["loss"], losses, its, eta, f" | mem {memory:.1f} GiB" if memory else "")

    def _plot_curves(self) -> None:
        from training.curves import plot_training_log

        try:
            plot_training_log(self.work_dir / "log.jsonl", self.work_dir / "curves.png")
        except ImportError as exc:
            log.warning("no curves.png: %s", exc)
