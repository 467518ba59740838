"""The iteration loop shared by fine-tuning (:class:`training.loop.Trainer`) and multi-task pretraining
(:class:`training.pretrain.Pretrainer`): seeding, the loop with logging, checkpoint and validation points, stopping on
a signal at a step every rank agrees on, resuming, ``log.jsonl`` and ``curves.png``.

A subclass builds its model, optimizer wrapper (``self.optim_wrapper``) and schedule (``self.scheduler``) and
provides the steps: ``_batches`` (the data stream from ``self.iteration`` on), ``train_step``, ``save_checkpoint``,
``resume``, ``validate`` and when to checkpoint. A stop signal on any rank (SIGTERM, SIGUSR1, SIGINT; see
``training.preemption``) makes every rank stop at the next agreed optimizer step, write a checkpoint and exit with
``REQUEUE_EXIT_CODE``; inside a Slurm job rank 0 also asks the batch script of ``mtp-slurm`` for a requeue.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from mtp_core.io import atomic_path
from training.dist import DistInfo, broadcast_object
from training.preemption import StopRequest, write_requeue_marker
from training.randomness import seed_everything

LAST_CHECKPOINT = "last_checkpoint"
log = logging.getLogger("mtp.train")


class IterRunner:
    """Seeds every generator and runs the loop; see the module docstring for what a subclass provides."""

    max_iters: int

    def __init__(self, cfg: dict[str, Any], work_dir: Path, info: DistInfo) -> None:
        self.cfg, self.work_dir, self.info = cfg, work_dir, info
        self.seed = int(cfg["randomness"].get("seed") or 0)
        self.diff_rank_seed = bool(cfg["randomness"].get("diff_rank_seed", False))
        seed_everything(self.seed, info.rank, self.diff_rank_seed)
        self.iteration = 0
        self.stop = StopRequest()

    # ----------------------------------------------------------------------------------------------- subclass steps
    def _batches(self) -> Iterator[Any]:
        raise NotImplementedError

    def train_step(self, batches: Iterator[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        raise NotImplementedError

    def resume(self, path: Path) -> None:
        raise NotImplementedError

    def validate(self) -> dict[str, Any] | None:
        return None

    def _checkpoint_due(self) -> bool:
        """Whether the iteration just finished writes a checkpoint."""
        raise NotImplementedError

    def _validation_due(self) -> bool:
        return False

    def _finish(self) -> None:
        """After the last iteration, on every rank (curves are drawn after it)."""

    # ----------------------------------------------------------------------------------------------- logging
    def _log_report(self, report: Any) -> None:
        if self.info.is_main:
            log.info("%s", report.summary())

    def _write_log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(self.work_dir / "log.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def _forget_log_after(self, iteration: int) -> None:
        """A resumed run re-runs the iterations after its checkpoint: drop what the first run logged for them."""
        path = self.work_dir / "log.jsonl"
        if not self.info.is_main or not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("iter", 0) <= iteration]
        if len(kept) != len(lines):
            with atomic_path(path) as tmp:
                tmp.write_text("".join(kept), encoding="utf-8")

    def _log_progress(self, lrs: dict[str, float], means: dict[str, float], its: float) -> None:
        if not self.info.is_main:
            return
        remaining = (self.max_iters - self.iteration) / max(its, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining < 86400 else f"{remaining / 86400:.1f} d"
        memory = torch.cuda.max_memory_allocated(self.info.device) / 2**30 if self.info.device.type == "cuda" else 0.0
        record = {"iter": self.iteration, "mode": "train", **lrs, **means, "iter_per_s": its}
        if memory:
            record["memory_gib"] = memory
        self._write_log(record)
        losses = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        log.info("iter %d/%d | base_lr %.4e lr %.4e | loss %.4f (%s) | %.2f it/s | eta %s%s", self.iteration,
                 self.max_iters, lrs["base_lr"], lrs["lr"], means["loss"], losses, its, eta,
                 f" | mem {memory:.1f} GiB" if memory else "")

    def _plot_curves(self) -> None:
        from training.curves import plot_training_log

        if not (self.work_dir / "log.jsonl").is_file():
            return
        try:
            plot_training_log(self.work_dir / "log.jsonl", self.work_dir / "curves.png")
        except ImportError as exc:
            log.warning("no curves.png: %s", exc)

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _point_last_checkpoint_to(self, path: Path) -> None:
        """``WORK_DIR/last_checkpoint`` names the newest checkpoint (what ``--resume`` without a path reads)."""
        tmp = self.work_dir / f".{LAST_CHECKPOINT}.tmp"
        tmp.write_text(str(path.resolve()))
        os.replace(tmp, self.work_dir / LAST_CHECKPOINT)

    def resume_source(self, resume: str | bool | None) -> Path | None:
        """The checkpoint to resume from, as MMEngine decides it.

        ``--resume CKPT``: CKPT. ``--resume``: the work dir's last checkpoint (what a requeued job needs). Config
        ``resume=True``: ``load_from`` when set (MMEngine's ``resume=True load_from=CKPT``), else the last checkpoint.
        """
        if isinstance(resume, str):
            return Path(resume)
        pointer = self.work_dir / LAST_CHECKPOINT
        last = Path(pointer.read_text().strip()) if pointer.is_file() else None
        if resume and last is not None:
            return last
        if self.cfg.get("resume") and (self.cfg.get("load_from") or last):
            return Path(self.cfg["load_from"]) if self.cfg.get("load_from") else last
        if (resume or self.cfg.get("resume")) and self.info.is_main:
            log.warning("resume: no checkpoint in %s yet, starting from iteration 0", self.work_dir)
        return None

    # ----------------------------------------------------------------------------------------------- loop
    def run(self, resume: str | bool | None = None) -> int:
        """Train to ``max_iters`` (or stop on a signal); returns the process exit code."""
        source = broadcast_object(self.resume_source(resume), self.info)
        if source is not None:
            self.resume(source)
        self.optim_wrapper.initialize_count_status(self.model, self.iteration, self.max_iters)
        with self.stop.installed():
            return self._train()

    def _train(self) -> int:
        self.model.train()
        batches = self._batches()
        log_every = int(self.cfg["default_hooks"]["logger"].get("interval", 50))
        stop_every = int(self.cfg.get("stop_check_interval", 10))
        next_stop_check = self.iteration + stop_every
        window: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        window_start, window_iters = time.perf_counter(), 0
        while self.iteration < self.max_iters:
            lrs = {"base_lr": self.scheduler.base_lr(), "lr": self.optim_wrapper.param_groups[0]["lr"]}
            parts = self.train_step(batches)
            self.iteration += 1
            window_iters += 1
            for key, value in parts.items():
                window[key] = window.get(key, 0) + value
                counts[key] = counts.get(key, 0) + 1
            if self.iteration % log_every == 0 or self.iteration == self.max_iters:
                elapsed = time.perf_counter() - window_start
                means = {k: float(v) / counts[k] for k, v in window.items()}
                self._log_progress(lrs, means, window_iters / max(elapsed, 1e-9))
                window, counts, window_start, window_iters = {}, {}, time.perf_counter(), 0
            saved = self._checkpoint_due()
            if saved:
                self.save_checkpoint()
            if self._validation_due():
                self.validate()
            # stop only where the optimizer just stepped: no accumulated gradient is lost
            if self.optim_wrapper.should_update() and self.iteration >= next_stop_check:
                next_stop_check = self.iteration + stop_every
                if self.iteration < self.max_iters and self._stop_agreed():
                    return self._stop(saved)
        self._finish()
        if self.info.is_main:
            self._plot_curves()
        return 0

    def _stop_agreed(self) -> bool:
        """All ranks stop at the same step: any rank's signal counts (a tiny all-reduce, every few steps); a
        preemption signal (SIGTERM 15, SIGUSR1 10) outranks Ctrl-C (SIGINT 2)."""
        flag = torch.tensor([float(self.stop.signum or 0)], device=self.info.device)
        if self.info.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            self.stop.signum = int(flag.item())
        return self.stop.requested

    def _stop(self, saved: bool) -> int:
        """Checkpoint, requeue marker and curves, all before any rank exits: with ``srun --kill-on-bad-exit`` the
        first rank to exit gets the others killed."""
        if not saved:
            self.save_checkpoint()
        if self.info.is_main:
            write_requeue_marker(self.work_dir, self.iteration, self.stop)
            self._plot_curves()
            log.warning("stopped by %s at iteration %d; resume with --resume", self.stop.name, self.iteration)
        if self.info.distributed:
            dist.barrier()
        return self.stop.exit_code
