"""The dock's "Changes between two layers" run as a ``QgsTask``: the engine's ``detect_changes`` (what ``mtp change``
runs) over plain file paths and copied settings.

It is :class:`~qgis_plugin.run_task.SegmentTask` with another job: the same worker-thread rules (no QGIS object in
``run()``), the same hidden folder moved into place only when everything is written (a cancel or an error leaves
nothing), the same progress and messages; its layers are the change mask and the changes, styled by kind.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qgis.core import Qgis, QgsMessageLog

from .area import clip_raster
from .model_cache import ModelSpec, PredictorCache
from .results import add_change_layers
from .run_task import LOG_TAG, RunOutcome, RunRequest, SegmentTask, free_name


@dataclass(frozen=True)
class ChangeRequest(RunRequest):
    """A :class:`RunRequest` whose ``raster`` is the first date, plus the second date and an optional building model
    (its changes then get their kind)."""

    after: str = ""  # the GDAL dataset name of the second date's layer
    after_name: str = ""
    buildings: ModelSpec | None = None


class ChangeTask(SegmentTask):
    """One "Changes between two layers" run; ``on_done`` (GUI thread) receives the :class:`RunOutcome`."""

    def __init__(self, request: ChangeRequest, predictors: PredictorCache, building_predictors: PredictorCache,
                 on_done: Callable[[RunOutcome], None] | None = None) -> None:
        super().__init__(request, predictors, on_done)
        self.setDescription(f"MTP: changes {request.layer_name} → {request.after_name}")
        self.building_predictors = building_predictors

    def _names(self, work: Path | None) -> dict[str, str]:
        names = super()._names(work)
        names[self.request.after] = f"'{self.request.after_name}'"
        return names

    def job(self, work: Path, out: Path) -> RunOutcome:
        from mtp_core.change import describe_kinds, detect_changes, pair_name

        request: ChangeRequest = self.request  # type: ignore[assignment]
        self.progress_text.emit("loading the model…")
        predictor = self.predictors.get(request.model)
        buildings = self.building_predictors.get(request.buildings) if request.buildings else None
        self.device_text.emit(predictor.describe())
        if lines := predictor.weights_summary():
            QgsMessageLog.logMessage("\n".join(lines), LOG_TAG, Qgis.Info)
        before = request.raster
        if request.bounds is not None or request.polygons is not None:  # the second date follows the first's grid
            before = clip_raster(before, work / "area" / f"{Path(before).stem}.vrt", request.bounds, request.polygons)
        started = time.perf_counter()
        result = detect_changes(
            predictor, before, request.after, work / "out", name=pair_name(request.raster, request.after),
            source=f"{Path(request.raster).name} -> {Path(request.after).name}", buildings=buildings,
            bands=request.bands, nodata=request.nodata, min_area_m2=request.min_area_m2,
            simplify_m=request.simplify_m, regularize=request.regularize, progress=self._report,
            cancel=self.isCanceled)
        final = free_name(out / request.run_name)
        os.replace(work / "out", final)
        kinds = describe_kinds(result.kinds)
        stats = result.stats
        return RunOutcome(
            "done", f"{result.changes} changes{f' ({kinds})' if kinds else ''} in "
                    f"{time.perf_counter() - started:.1f} s ({stats.tiles_run} tiles, {stats.tiles_per_s:.1f} "
                    f"tiles/s on {stats.device.split(',')[0]}) in {final.name}",
            mask_path=final / result.mask_path.name, vector_path=final / result.vector_path.name,
            buildings=result.changes)

    def add_layers(self, outcome: RunOutcome) -> None:
        request: ChangeRequest = self.request  # type: ignore[assignment]
        add_change_layers(request.group_name, f"{request.layer_name} → {request.after_name}", outcome.mask_path,
                          outcome.vector_path)
