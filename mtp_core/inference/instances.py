"""Tiled, streamed inference with a segmentor with instances: semantic rows as the :class:`Predictor` makes them, and
beside them rows of instance values (one number per building) that the vectorizer turns into one polygon each.

Each batch of tiles runs the encoder once for both decoders. The semantic probabilities are blended and finished row
by row exactly as the plain Predictor does (so the semantic mask is the same file). Each tile's detections are
pasted into the model grid and merged across tile overlaps (:mod:`.instance_merge`: duplicates suppressed by mask
IoU, buildings cut by a tile edge made whole), then combined with the semantic mask (:mod:`.instance_rows`: the
semantic mask says what is building, the instances which building). Detections, merged instances and rows are held
only while a tile still to come can change them: memory follows the tile rows in flight, not the raster.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from mtp_core.device import describe_device
from mtp_core.errors import UserError
from mtp_core.heap import trim_heap
from mtp_core.inference.instance_merge import InstanceMerger, tile_detections
from mtp_core.inference.instance_rows import InstanceRows
from mtp_core.inference.predictor import Predictor, RunStats, _RowAccumulator
from mtp_core.inference.sinks import ArraySink, GeoTiffSink, RowSink
from mtp_core.inference.sources import ArraySource, Prefetched, TileSource
from mtp_core.io import GeoTiffWriter
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.models.maskrcnn import SoftInstances
from mtp_core.progress import CancelCallback, Progress, ProgressCallback, check_cancel
from mtp_core.tiling import Tile, TileGrid, blend_weights
from mtp_core.vectorize.instances import MAX_CLASS

SCORE_THRESHOLD = 0.5  # detections scoring less are not buildings


class InstanceRowSink(RowSink, Protocol):
    """A row sink that also takes rows of instance values (int32) and their scores (uint8, score x 255)."""

    def write_instance_rows(self, y0: int, values: np.ndarray, scores: np.ndarray) -> None: ...


@dataclass
class InstanceArraySink(ArraySink):
    """The outputs of an in-memory prediction, instance values and scores included."""

    values: np.ndarray = field(init=False)
    scores: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.values = np.zeros((self.height, self.width), np.int32)
        self.scores = np.zeros((self.height, self.width), np.uint8)

    def write_instance_rows(self, y0: int, values: np.ndarray, scores: np.ndarray) -> None:
        self.values[y0 : y0 + values.shape[0]] = values
        self.scores[y0 : y0 + values.shape[0]] = scores


class InstanceGeoTiffSink(GeoTiffSink):
    """The class (and probability) GeoTIFFs, plus an instance-value GeoTIFF (int32) and a score GeoTIFF (uint8)."""

    def __init__(self, classes: GeoTiffWriter, probs: GeoTiffWriter | None, values: GeoTiffWriter,
                 scores: GeoTiffWriter) -> None:
        super().__init__(classes, probs)
        self.values, self.scores = values, scores

    def write_instance_rows(self, y0: int, values: np.ndarray, scores: np.ndarray) -> None:
        self.values.write(values, 0, y0)
        self.scores.write(scores, 0, y0)


class _Semantic:
    """Finished semantic rows to the caller's sink (probabilities only if it wants them) and to the combination."""

    def __init__(self, sink: RowSink, rows: InstanceRows, want_probs: bool) -> None:
        self.sink, self.rows, self.want_probs = sink, rows, want_probs

    def write_rows(self, y0: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        self.sink.write_rows(y0, classes, probs if self.want_probs else None)
        self.rows.add_semantic(y0, classes, probs)


class InstancePredictor(Predictor):
    """A :class:`Predictor` whose model also finds instances (:class:`~mtp_core.models.InstanceSegmentor`):
    :meth:`run` writes the semantic rows and the instance rows. ``score_threshold``: the least score of a detection
    that counts as a building. ``tta``: the eight views of each tile (``predict_with_instances_tta`` of
    :class:`~mtp_core.models.InstanceSegmentor`: semantic probabilities, detection scores, boxes and masks averaged
    over the views), 8x the time. ``torch.compile`` applies to the semantic decoder only: use the plain Predictor
    (``--semantic-only``) for it."""

    instances = True

    def __init__(self, model: InstanceSegmentor, card: Any, *, score_threshold: float = SCORE_THRESHOLD,
                 **kwargs: Any) -> None:
        if not isinstance(model, InstanceSegmentor):
            raise UserError(f"{card.architecture} has no instance decoder: predict with its semantic decoder")
        if kwargs.get("compile"):
            raise UserError("--compile is for the semantic decoder alone: leave it out, or add --semantic-only to "
                            "predict without instances")
        if card.num_classes - 1 > MAX_CLASS:
            raise UserError(f"instance models take at most {MAX_CLASS} object classes, this one has "
                            f"{card.num_classes - 1}")
        if not 0.0 <= score_threshold <= 1.0:
            raise UserError(f"the instance score threshold is between 0 and 1, got {score_threshold}")
        super().__init__(model, card, **kwargs)
        self.score_threshold = score_threshold

    @classmethod
    def for_model(cls, model: InstanceSegmentor, card: Any, report: Any, **kwargs: Any) -> "InstancePredictor":
        """A predictor for a loaded model, refused when its instance decoder was never trained (``report``: what
        loading its checkpoint did)."""
        from mtp_core.checkpoint.instance_segmentor import require_instance_decoder

        require_instance_decoder(report)
        return cls(model, card, load_report=report, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, architecture: str | None = None, instances: bool = True,
                        **kwargs: Any) -> "InstancePredictor":
        """As :meth:`Predictor.from_checkpoint`; refused for a checkpoint without a trained instance decoder."""
        predictor = Predictor.from_checkpoint(path, architecture, **kwargs)
        if not isinstance(predictor, InstancePredictor):
            raise UserError(f"{path} holds a segmentor without an instance decoder ({predictor.card.architecture}): "
                            "predict with it as it is, one polygon per connected region")
        return predictor

    def describe(self) -> str:
        return f"{super().describe()}; instances (one polygon per building), score >= {self.score_threshold:g}"

    # ------------------------------------------------------------------------------------------ model
    def _run_both(self, x: torch.Tensor) -> tuple[torch.Tensor, list[SoftInstances]]:
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            if self.tta:
                return self.model.predict_with_instances_tta(x)
            logits, found = self.model.predict_with_instances(x)
        return torch.softmax(logits.float(), dim=1), found

    def _infer_both(self, x: torch.Tensor) -> tuple[torch.Tensor, list[SoftInstances]]:
        """:meth:`_run_both`, halving the batch on CUDA out-of-memory."""
        try:
            return self._run_both(x)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(x) == 1:
                raise RuntimeError(
                    f"CUDA ran out of memory on a single {self.card.tile} px tile: use a smaller model, free GPU "
                    "memory or run with --device cpu") from None
            self.batch_size = max(1, len(x) // 2)
            half = len(x) // 2
            (p1, f1), (p2, f2) = self._infer_both(x[:half]), self._infer_both(x[half:])
            return torch.cat([p1, p2]), f1 + f2

    # ------------------------------------------------------------------------------------------ tiling
    def run(self, source: TileSource, sink: InstanceRowSink, *, want_probs: bool = False,
            progress: ProgressCallback = None, cancel: CancelCallback = None, km2_per_pixel: float = 0.0,
            prefetch: bool = True) -> RunStats:
        """Predict every tile of ``source`` and stream finished semantic and instance rows into ``sink``; a sink
        without instance rows (the class raster alone, ``predict_raster``) gets the semantic rows as the plain
        :class:`Predictor` makes them."""
        if not hasattr(sink, "write_instance_rows"):
            return super().run(source, sink, want_probs=want_probs, progress=progress, cancel=cancel,
                               km2_per_pixel=km2_per_pixel, prefetch=prefetch)
        with torch.inference_mode(), self._threads():
            return self._run_instances(source, sink, want_probs, progress, cancel, km2_per_pixel, prefetch)

    def _run_instances(self, source: TileSource, sink: InstanceRowSink, want_probs: bool,
                       progress: ProgressCallback, cancel: CancelCallback, km2_per_pixel: float,
                       prefetch: bool) -> RunStats:
        grid = TileGrid(source.height, source.width, self.card.tile, self.overlap)
        weights = torch.tensor(blend_weights(self.card.tile, self.overlap), device=self.device)
        acc = _RowAccumulator(self.card.num_classes, source.width, min(self.card.tile, source.height), self.device)
        merger = InstanceMerger()
        rows = InstanceRows(source.width, source.height)
        semantic = _Semantic(sink, rows, want_probs)
        tiles: Iterator[Any] = Prefetched(self._prepared_tiles(source, grid), depth=2 * self.batch_size) \
            if prefetch else self._prepared_tiles(source, grid)
        start = time.perf_counter()
        done = run = skipped = flushed_skips = 0
        km2_per_tile = km2_per_pixel * source.height * source.width / max(len(grid), 1)
        pending: list[tuple[int, Tile, np.ndarray | None, np.ndarray]] = []
        finished_row = -1

        def emit_rows_before(row: int) -> None:
            """Semantic rows above tile row ``row``, the instances no later tile reaches, the rows they finish."""
            nonlocal finished_row
            for r in range(finished_row + 1, row):
                limit = grid.final_row(r)
                self._emit(acc, limit, semantic, True)
                rows.paint(merger.finish(limit))
                top = merger.top
                for y0, values, scores in rows.ready(limit if top is None else min(limit, top)):
                    sink.write_instance_rows(y0, values, scores)
            finished_row = max(finished_row, row - 1)

        def flush() -> None:
            nonlocal run, flushed_skips
            flushed_skips = skipped
            batch = [(data, valid) for _, _, data, valid in pending if data is not None]
            if batch:
                probs, found = self._infer_both(torch.from_numpy(np.stack([d for d, _ in batch])).to(self.device))
                probs_it, found_it = iter(probs), iter(found)
                valids = iter(torch.from_numpy(np.stack([v for _, v in batch])).to(self.device))
                run += len(batch)
            for index, tile, data, valid in pending:
                emit_rows_before(tile.row)
                if data is None:
                    acc.touch(tile, source.height)
                    continue
                acc.add(tile, next(probs_it), weights, next(valids), source.height)
                det = next(found_it)
                merger.add(tile_detections(
                    det.bboxes.float().cpu().numpy(), det.scores.float().cpu().numpy(), det.labels.cpu().numpy(),
                    det.mask_probs.float().cpu(), (tile.y, tile.x), tile.size, (source.height, source.width), valid,
                    index, self.score_threshold))
            pending.clear()
            trim_heap()  # after every batch: resident memory flat in raster size (mtp_core.heap)

        try:
            for index, (tile, data, valid) in enumerate(tiles):
                check_cancel(cancel)
                pending.append((index, tile, data, valid))
                skipped += data is None
                done += 1
                if len(pending) - (skipped - flushed_skips) >= self.batch_size or len(pending) >= 4 * self.batch_size:
                    flush()
                    if progress is not None:
                        progress(Progress(done, len(grid), time.perf_counter() - start, done * km2_per_tile))
            flush()
            emit_rows_before(len(grid.row_origins))
        finally:
            if isinstance(tiles, Prefetched):
                tiles.close()
        if progress is not None:
            progress(Progress(done, len(grid), time.perf_counter() - start, done * km2_per_tile))
        return RunStats(len(grid), run, skipped, time.perf_counter() - start, self.batch_size,
                        describe_device(self.device))

    def predict_instances_array(self, image: np.ndarray, valid: np.ndarray | None = None
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Classes (H, W), probabilities (K, H, W), instance values (H, W) int32 and scores (H, W) uint8 of an
        in-memory (H, W, C) image on the 0-255 scale."""
        source = ArraySource(image.astype(np.float32, copy=False), valid)
        sink = InstanceArraySink(source.height, source.width, self.card.num_classes)
        self.run(source, sink, want_probs=True, prefetch=False)
        return sink.classes, sink.probs, sink.values, sink.scores
