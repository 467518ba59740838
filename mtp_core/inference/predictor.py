"""The Predictor: tiles in, blended probabilities and classes out, streamed row by row.

Tiles are read in a background thread (:mod:`.sources`), run in batches on the device, and their softmax
probabilities are blended (``tiling.blend_weights``) into an accumulator that only spans the tile rows in flight;
rows no later tile can touch are finished and written immediately. Memory therefore depends on tile size, batch size
and raster width, never on raster height. Tiles that are entirely nodata are not run, and nodata stays nodata in
every output (:mod:`.sinks`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from mtp_core.device import cpu_threads, describe_device, resolve_device, torch_threads
from mtp_core.errors import UserError
from mtp_core.inference.sinks import CLASS_NODATA, ArraySink, RowSink
from mtp_core.inference.sources import ArraySource, Prefetched, TileSource
from mtp_core.io.scaling import normalize
from mtp_core.models import EncoderDecoder, InstanceSegmentor, ModelCard
from mtp_core.models.dihedral import VIEWS
from mtp_core.progress import CancelCallback, Progress, ProgressCallback, check_cancel
from mtp_core.tiling import Tile, TileGrid, blend_weights

Precision = Literal["auto", "fp32", "bf16", "fp16"]


_EMIT_PIXELS = 2**19  # pixels per chunk of finished rows turned into classes


class _RowAccumulator:
    """Weighted probability sums for the raster rows [top, top + rows) that tiles in flight still touch, on the
    model's device (tiles' probabilities never leave the GPU; only finished classes come back).

    Rows are written before the first tile of the next tile row is added, so at most one tile's height of rows is
    held: the buffers are allocated once at that size and the rows left over move up in place (no growing copies).
    Blend weights never reach zero, so a pixel is valid exactly where its weight sum is positive.
    """

    def __init__(self, num_classes: int, width: int, capacity: int, device: torch.device) -> None:
        self.top = 0
        self.rows = 0  # rows in use, from ``top``
        self.prob = torch.zeros((num_classes, capacity, width), dtype=torch.float32, device=device)
        self.weight = torch.zeros((capacity, width), dtype=torch.float32, device=device)

    def _ensure(self, bottom: int) -> None:
        needed = bottom - self.top
        if needed > self.weight.shape[0]:
            raise RuntimeError(f"rows {self.top}..{bottom} do not fit the {self.weight.shape[0]}-row accumulator")
        self.rows = max(self.rows, needed)

    def add(self, tile: Tile, probs: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor, height: int) -> None:
        h = min(tile.size, height - tile.y)
        w = min(tile.size, self.weight.shape[1] - tile.x)
        self._ensure(tile.y + h)
        rows = slice(tile.y - self.top, tile.y - self.top + h)
        cols = slice(tile.x, tile.x + w)
        wv = weights[:h, :w] * valid[:h, :w]
        self.prob[:, rows, cols] += probs[:, :h, :w] * wv
        self.weight[rows, cols] += wv

    def touch(self, tile: Tile, height: int) -> None:
        """A skipped (all-nodata) tile adds no probabilities but its rows must still be written (as nodata)."""
        self._ensure(min(tile.y + tile.size, height))

    def view(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums of rows [top + start, top + stop), without copying."""
        self._ensure(self.top + stop)
        return self.prob[:, start:stop], self.weight[start:stop]

    def drop(self, until: int) -> None:
        """Forget the rows above ``until``; the rows below move up."""
        self._ensure(until)
        n = until - self.top
        for buffer in (self.prob, self.weight):
            view = buffer if buffer.ndim == 3 else buffer[None]
            for row in range(self.rows - n):  # row by row: source and destination never overlap
                view[:, row] = view[:, row + n]
            view[:, max(self.rows - n, 0):self.rows] = 0
        self.rows = max(self.rows - n, 0)
        self.top = until


@dataclass(frozen=True)
class RunStats:
    tiles_total: int
    tiles_run: int
    tiles_skipped: int
    seconds: float
    batch_size: int
    device: str

    @property
    def tiles_per_s(self) -> float:
        return self.tiles_run / self.seconds if self.seconds > 0 else 0.0


class Predictor:
    """A segmentor or change detector ready for rasters: device, precision, batching and the model card's data
    conventions. A change detector (``model.num_inputs == 2``) reads a :class:`~.sources.TwoDateSource`: each date
    is normalised with the card's mean/std, as Open-CD's preprocessor repeats them for the second date.

    CUDA runs in bf16 autocast (fp16 where bf16 is unsupported) with channels-last tensors; CPU in float32 with
    :func:`~mtp_core.device.cpu_threads` threads, set for each run only (inside QGIS the rest of the process keeps
    its own). On CUDA out-of-memory the batch is halved and the run goes on. ``tta``: each tile is also predicted
    flipped and rotated (the 8 symmetries of the square) and the probabilities averaged: 8x the model's time.
    ``load_report``: what loading the checkpoint did (:meth:`from_checkpoint`).
    """

    def __init__(
        self,
        model: EncoderDecoder,
        card: ModelCard,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        precision: Precision = "auto",
        compile: bool = False,
        overlap: int | None = None,
        threshold: float | None = None,
        tta: bool = False,
        threads: int | None = None,
        load_report: Any = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.card = card
        self.batch_size = batch_size
        self.overlap = card.overlap if overlap is None else overlap
        if not 0 <= self.overlap < card.tile:
            raise UserError(f"overlap must be in [0, {card.tile}) for {card.tile} px tiles, got {self.overlap}")
        self.threshold = card.threshold if threshold is None else threshold
        self.dtype = self._precision(precision)
        if hasattr(model.backbone, "set_attn_impl"):
            model.backbone.set_attn_impl("sdpa")
        model = model.eval().to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.threads = threads or cpu_threads()
        self.num_inputs = int(getattr(model, "num_inputs", 1))
        self.tta = tta
        self.load_report = load_report
        self.model = model
        self._forward = torch.compile(model, dynamic=False) if compile else model

    def _precision(self, precision: Precision) -> torch.dtype | None:
        if precision == "auto":
            if self.device.type != "cuda":
                return None
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    @classmethod
    def from_checkpoint(cls, path: str | Path, architecture: str | None = None, instances: bool = True,
                        **kwargs: Any) -> "Predictor":
        """A predictor for a checkpoint file (built as ``architecture`` when given, else as the file says);
        refused when the file has no trained decoder (its predictions would be random), with the report of what
        loading did in :attr:`load_report`. A segmentor with instances gives an
        :class:`~mtp_core.inference.instances.InstancePredictor` (one polygon per building) unless ``instances`` is
        False (its semantic decoder alone)."""
        from mtp_core.checkpoint import load_model, require_decoder

        model, card, report = load_model(path, architecture=architecture or None)
        require_decoder(report, card.architecture)
        if instances and cls is Predictor and isinstance(model, InstanceSegmentor):
            from mtp_core.inference.instances import InstancePredictor

            return InstancePredictor.for_model(model, card, report, **kwargs)
        return cls(model, card, load_report=report, **kwargs)

    def weights_summary(self) -> list[str]:
        """What loading the checkpoint did, for a log: one line, or the whole report when something was resized,
        dropped, left missing or noted."""
        report = self.load_report
        if report is None:
            return []
        if report.missing or report.dropped or report.resized or report.notes or getattr(report, "unused", None):
            return report.summary().splitlines()
        return [f"weights: {len(report.loaded)} tensors from {report.source} ({report.layout})"]

    def describe(self) -> str:
        precision = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        tta = ", 8x test-time augmentation" if self.tta else ""
        return f"{describe_device(self.device, self.threads)}; {precision}, batch {self.batch_size}{tta}"

    def _threads(self) -> contextlib.AbstractContextManager:
        """This predictor's CPU threads for the length of one call (torch's thread count is process-wide)."""
        return torch_threads(self.threads) if self.device.type == "cpu" else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------ model
    def normalize(self, scaled: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """0–255 band values → model input (:func:`mtp_core.io.scaling.normalize` with the card's mean/std, once per
        date for a change detector)."""
        return normalize(scaled, self.card.mean * self.num_inputs, self.card.std * self.num_inputs, valid)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits = self._forward(x)
        return torch.softmax(logits.float(), dim=1)

    def _run_model(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (B, K, t, t), float32 on the device, of normalized tiles already on the device."""
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.tta:
            return self._probabilities(x)
        total = torch.zeros((), device=x.device)
        for view in VIEWS:
            total = total + view.undo(self._probabilities(view.apply(x)))
        return total / len(VIEWS)

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_run_model`, halving the batch on CUDA out-of-memory."""
        try:
            return self._run_model(x)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(x) == 1:
                raise RuntimeError(
                    f"CUDA ran out of memory on a single {self.card.tile} px tile: use a smaller model, free GPU "
                    "memory or run with --device cpu"
                ) from None
            self.batch_size = max(1, len(x) // 2)
            half = len(x) // 2
            return torch.cat([self._infer(x[:half]), self._infer(x[half:])])

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, K, t, t) of normalized tiles, halving the batch on CUDA out-of-memory."""
        with self._threads():
            return self._infer(torch.from_numpy(batch).to(self.device)).cpu().numpy()

    # ------------------------------------------------------------------------------------------ tiling
    def _prepared_tiles(
        self, source: TileSource, grid: TileGrid
    ) -> Iterator[tuple[Tile, np.ndarray | None, np.ndarray]]:
        for tile in grid:
            scaled, valid = source.read(tile)
            yield tile, (self.normalize(scaled, valid) if valid.any() else None), valid

    def run(
        self,
        source: TileSource,
        sink: RowSink,
        *,
        want_probs: bool = False,
        progress: ProgressCallback = None,
        cancel: CancelCallback = None,
        km2_per_pixel: float = 0.0,
        prefetch: bool = True,
    ) -> RunStats:
        """Predict every tile of ``source`` and stream finished rows into ``sink``."""
        with torch.inference_mode(), self._threads():
            return self._run(source, sink, want_probs, progress, cancel, km2_per_pixel, prefetch)

    def _run(self, source: TileSource, sink: RowSink, want_probs: bool, progress: ProgressCallback,
             cancel: CancelCallback, km2_per_pixel: float, prefetch: bool) -> RunStats:
        grid = TileGrid(source.height, source.width, self.card.tile, self.overlap)
        weights = torch.tensor(blend_weights(self.card.tile, self.overlap), device=self.device)
        acc = _RowAccumulator(self.card.num_classes, source.width, min(self.card.tile, source.height), self.device)
        tiles = Prefetched(self._prepared_tiles(source, grid), depth=2 * self.batch_size) if prefetch \
            else self._prepared_tiles(source, grid)
        start = time.perf_counter()
        done = run = skipped = flushed_skips = 0  # skipped tiles up to the last flush
        km2_per_tile = km2_per_pixel * source.height * source.width / max(len(grid), 1)
        pending: list[tuple[Tile, np.ndarray | None, np.ndarray]] = []  # in grid order, all-nodata tiles included
        finished_row = -1

        def emit_rows_before(row: int) -> None:
            nonlocal finished_row
            for r in range(finished_row + 1, row):
                self._emit(acc, grid.final_row(r), sink, want_probs)
            finished_row = max(finished_row, row - 1)

        def flush() -> None:
            """Run the pending tiles and add them in grid order; every tile row is complete (and its final rows
            are written) before the next row's first tile is added."""
            nonlocal run, flushed_skips
            flushed_skips = skipped
            batch = [(data, valid) for _, data, valid in pending if data is not None]
            if batch:
                probs = iter(self._infer(torch.from_numpy(np.stack([d for d, _ in batch])).to(self.device)))
                valids = iter(torch.from_numpy(np.stack([v for _, v in batch])).to(self.device))
                run += len(batch)
            for tile, data, _ in pending:
                emit_rows_before(tile.row)
                if data is None:
                    acc.touch(tile, source.height)
                else:
                    acc.add(tile, next(probs), weights, next(valids), source.height)
            pending.clear()

        try:
            for tile, data, valid in tiles:
                check_cancel(cancel)
                pending.append((tile, data, valid))
                skipped += data is None
                done += 1
                if len(pending) - (skipped - flushed_skips) >= self.batch_size or len(pending) >= 4 * self.batch_size:
                    flush()
                    if progress is not None:
                        progress(Progress(done, len(grid), time.perf_counter() - start, done * km2_per_tile))
            flush()
            emit_rows_before(len(grid.row_origins))
        finally:
            tiles.close()
        if progress is not None:
            progress(Progress(done, len(grid), time.perf_counter() - start, done * km2_per_tile))
        return RunStats(len(grid), run, skipped, time.perf_counter() - start, self.batch_size,
                        describe_device(self.device))

    def _emit(self, acc: _RowAccumulator, until: int, sink: RowSink, want_probs: bool) -> None:
        """Classes (and probabilities) of the finished rows up to ``until``, in chunks of about half a million pixels,
        so the temporary arrays stay small however wide the raster is."""
        y0 = acc.top
        if until <= y0:
            return
        chunk = max(1, _EMIT_PIXELS // acc.weight.shape[1])
        for start in range(0, until - y0, chunk):
            classes, probs = self._classify(*acc.view(start, min(start + chunk, until - y0)))
            sink.write_rows(y0 + start, classes.cpu().numpy(), probs.cpu().numpy() if want_probs else None)
        acc.drop(until)

    def classify(self, prob_sum: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blended probabilities (K, h, w) from weighted sums, and classes: the card's threshold on the building
        probability of a two-class model, else argmax; CLASS_NODATA where no valid pixel was seen (weight 0)."""
        classes, probs = self._classify(torch.from_numpy(prob_sum), torch.from_numpy(weight))
        return classes.numpy(), probs.numpy()

    def _classify(self, prob_sum: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = prob_sum / weight.clamp_min(1e-12)
        if self.threshold is not None and probs.shape[0] == 2:
            classes = (probs[1] >= self.threshold).to(torch.uint8)
        else:  # argmax over the few classes (the first on ties), one comparison per class: fast on CPU and GPU
            classes = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
            best = probs[0]
            for k in range(1, probs.shape[0]):
                better = probs[k] > best
                classes[better] = k
                best = torch.maximum(best, probs[k])
        classes[weight <= 0] = CLASS_NODATA
        return classes, probs

    def predict_array(self, image: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Classes (H, W) and probabilities (K, H, W) of an in-memory (H, W, C) image on the 0–255 scale."""
        source = ArraySource(image.astype(np.float32, copy=False), valid)
        sink = ArraySink(source.height, source.width, self.card.num_classes)
        self.run(source, sink, want_probs=True, prefetch=False)
        return sink.classes, sink.probs


