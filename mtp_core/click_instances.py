"""Click-a-roof with a segmentor with instances: the building under the click, not the whole terrace it is part of.

:class:`InstanceClickSegmenter` is the :class:`~mtp_core.click.ClickSegmenter` (the job's own tiles, cached; the
clicked region grown over final pixels until it is whole) that also keeps each tile's detections. Once the clicked
semantic region is final, the detections of its tiles are merged and combined with the region exactly as the job
does it (:mod:`mtp_core.inference.instance_merge`, :mod:`mtp_core.inference.instance_rows`), and the polygon returned
is the building under the click, with its instance score. :func:`segmenter_for` picks the right segmenter for a
predictor, so front ends need not know which model they run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtp_core.click import ClickResult, ClickSegmenter, _Area, _region, _TilePrediction
from mtp_core.inference import CLASS_NODATA, Predictor
from mtp_core.inference.instance_merge import Detection, InstanceMerger, tile_detections
from mtp_core.inference.instance_rows import InstanceRows
from mtp_core.progress import CancelCallback, check_cancel
from mtp_core.tiling import Tile


@dataclass(frozen=True)
class _TileInstances(_TilePrediction):
    detections: tuple[Detection, ...] = ()


class InstanceClickSegmenter(ClickSegmenter):
    """A :class:`ClickSegmenter` for an :class:`~mtp_core.inference.InstancePredictor` (see the module docstring)."""

    def _fetch(self, keys: set[tuple[int, int]], run_model: bool,
               cancel: CancelCallback) -> tuple[dict[tuple[int, int], _TilePrediction], int] | None:
        found: dict[tuple[int, int], _TilePrediction] = {}
        missing = []
        for key in sorted(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            else:
                missing.append(key)
        if missing and not run_model:
            return None
        predictor = self.predictor
        shape = (self.plan.height, self.plan.width)
        run_total = 0
        while missing:
            check_cancel(cancel)
            batch, missing = missing[: predictor.batch_size], missing[predictor.batch_size :]
            reads = [self._source.read(Tile(x, y, self._tile, 0)) for y, x in batch]
            run = [i for i, (_, valid) in enumerate(reads) if valid.any()]
            results: dict[int, tuple[np.ndarray, Any]] = {}
            if run:
                x = torch.from_numpy(np.stack([predictor.normalize(*reads[i]) for i in run])).to(predictor.device)
                with torch.inference_mode(), predictor._threads():
                    probs, detected = predictor._infer_both(x)
                results = dict(zip(run, zip(probs.cpu().numpy(), detected)))
            for i, (y, x0) in enumerate(batch):
                valid = reads[i][1]
                detections: tuple[Detection, ...] = ()
                if i in results:
                    det = results[i][1]
                    detections = tuple(tile_detections(
                        det.bboxes.float().cpu().numpy(), det.scores.float().cpu().numpy(), det.labels.cpu().numpy(),
                        det.mask_probs.float().cpu(), (y, x0), self._tile, shape, valid, y * shape[1] + x0,
                        predictor.score_threshold))
                found[(y, x0)] = self._cache[(y, x0)] = _TileInstances(
                    results[i][0] if i in results else None, valid, detections)
                if len(self._cache) > self.cache_tiles:
                    self._cache.popitem(last=False)
            run_total += len(run)
        self.tiles_predicted += run_total
        return found, run_total

    def segment_at(self, x: float, y: float, *, run_model: bool = True, cancel: CancelCallback = None) -> ClickResult:
        """As :meth:`ClickSegmenter.segment_at`; a building found is one instance, and its name says so."""
        result = super().segment_at(x, y, run_model=run_model, cancel=cancel)
        if not result.found:
            return result
        return dataclasses.replace(result, class_name=f"{result.class_name} (instance, score "
                                                      f"{result.attributes['score']:.2f})")

    def _blend(self, tiles: dict[tuple[int, int], _TilePrediction]) -> _Area:
        self._tiles = tiles  # the tiles of the click in progress: their detections make its instances
        return super()._blend(tiles)

    def _polygon(self, region: np.ndarray, area: _Area, cls: int, x: float, y: float) -> Any:
        """The building under the click within the clicked region, vectorized as the job vectorizes it, scored by
        its instance."""
        values, scores = self._instance_values(region, area, cls)
        pixel = self._model_pixel(x, y)
        seed = (pixel[0] - area.y0, pixel[1] - area.x0)
        building = _region(values == values[seed], *seed)
        probs = area.probs.copy()
        probs[cls] = np.where(building, scores.astype(np.float32) / 255.0, probs[cls])
        return super()._polygon(building, dataclasses.replace(area, probs=probs), cls, x, y)

    def _instance_values(self, region: np.ndarray, area: _Area, cls: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance values and scores over the area, the clicked region alone being building (the job's rules)."""
        merger = InstanceMerger()
        for key in sorted(self._tiles):
            merger.add(list(getattr(self._tiles[key], "detections", ())))
        h, w = region.shape
        classes = np.where(region, cls, 0).astype(np.uint8)
        classes[area.classes == CLASS_NODATA] = CLASS_NODATA
        rows = InstanceRows(w, h)
        rows.add_semantic(0, classes, area.probs)
        rows.paint([_shifted(inst, area) for inst in merger.finish(float("inf"))])
        (_, values, scores), = rows.ready(h)
        return values, scores


def _shifted(inst: Any, area: _Area) -> Any:
    """An instance moved into the area's frame."""
    return dataclasses.replace(inst, y0=inst.y0 - area.y0, x0=inst.x0 - area.x0)


def segmenter_for(predictor: Predictor, raster: str | Path, **options: Any) -> ClickSegmenter:
    """The click segmenter for ``predictor``: one that returns single buildings when the model finds instances."""
    cls = InstanceClickSegmenter if getattr(predictor, "instances", False) else ClickSegmenter
    return cls(predictor, raster, **options)
