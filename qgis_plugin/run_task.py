"""The dock's run as a ``QgsTask``: the engine's ``extract_buildings`` over plain file paths and copied settings.

Why it is built this way (see DESIGN.md "Plugin" and the users' complaints 1, 2 and 6 in anchors.md):

* ``run()`` (a worker thread) touches no QGIS object: it gets a :class:`RunRequest` of strings and numbers, builds
  or reuses the Predictor (:class:`~qgis_plugin.model_cache.PredictorCache`), cuts the area out (a VRT), and runs the
  same engine call as ``mtp predict``, so the polygons are those of the CLI.
* Its outputs go to a hidden folder inside the output folder first and are moved to ``<raster>_<time>/`` only when
  everything is written. A cancel (checked before every batch) or an error removes that folder: nothing is left and
  no layer is added.
* ``finished()`` (the GUI thread) adds the result layers, logs the outcome, and hands it to the dock.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .area import Bounds, clip_raster
from .model_cache import ModelSpec, PredictorCache
from .results import add_result_layers
from .wording import for_dock

if TYPE_CHECKING:
    from mtp_core.progress import Progress

LOG_TAG = "MTP"

@dataclass(frozen=True)
class RunRequest:
    """Everything a run needs, as plain values read from the dock on the GUI thread."""

    raster: str  # the GDAL dataset name of the raster layer
    layer_name: str
    model: ModelSpec
    out_folder: str
    run_name: str  # the folder of this run's outputs inside out_folder, e.g. scene_20261126-140312
    group_name: str  # the layer-tree group of its layers, e.g. "MTP scene 14:03:12"
    bands: tuple[int, ...] | None = None
    nodata: float | None = None  # a band value treated as nodata (None: the raster's own)
    bounds: Bounds | None = None  # a part of the raster (its CRS), or the whole raster
    polygons: str | None = None  # WKT in the raster's CRS: only pixels inside are segmented
    min_area_m2: float = 4.0
    simplify_m: float = 0.25
    regularize: bool = False


@dataclass(frozen=True)
class RunOutcome:
    state: Literal["done", "cancelled", "failed"]
    message: str  # one line for the dock and the message bar
    details: str = ""  # the traceback of an unexpected error
    mask_path: Path | None = None
    vector_path: Path | None = None
    buildings: int = 0


class SegmentTask(QgsTask):
    """One dock run. ``on_done`` (GUI thread) receives the :class:`RunOutcome` after the layers are added."""

    progress_text = pyqtSignal(str)  # progress_line(...) after every batch, for the dock
    device_text = pyqtSignal(str)  # the Predictor's device, name, memory, precision and batch

    def __init__(self, request: RunRequest, predictors: PredictorCache,
                 on_done: Callable[[RunOutcome], None] | None = None) -> None:
        super().__init__(f"MTP: segment {request.layer_name}", QgsTask.CanCancel)
        self.request = request
        self.predictors = predictors
        self.on_done = on_done
        self.outcome: RunOutcome | None = None

    # ------------------------------------------------------------------------------------------ worker thread
    def run(self) -> bool:
        from mtp_core.progress import Cancelled

        request = self.request
        work: Path | None = None
        try:
            out = Path(request.out_folder)
            try:
                out.mkdir(parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(dir=out, prefix=".mtp-"))
            except OSError as exc:
                raise OSError(f"cannot write to the output folder {out} ({exc.strerror}): choose another "
                              "'Output folder'") from exc
            self.outcome = self.job(work, out)
        except Cancelled:
            self.outcome = RunOutcome("cancelled", "Cancelled: no file was written and no layer added.")
        except (ValueError, OSError) as exc:  # the engine's messages say what to do
            self.outcome = RunOutcome("failed", for_dock(str(exc), self._names(work)))
        except Exception as exc:  # noqa: BLE001  (a bug: the message bar says where the traceback is)
            detail = for_dock(str(exc), self._names(work))
            self.outcome = RunOutcome(
                "failed", f"MTP failed unexpectedly ({type(exc).__name__}: {detail}). The traceback is in the Log "
                          "Messages panel, tab MTP; please report it with the plugin's bug tracker.",
                traceback.format_exc())
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        return self.outcome.state == "done"

    def _names(self, work: Path | None) -> dict[str, str]:
        """The layer's name for its file and for the run's temporary files (the VRTs of its area, and those the engine
        makes of it in hidden folders while it writes); the output folder for the files being written."""
        layer = f"'{self.request.layer_name}'"
        names = {self.request.raster: layer}
        if work is not None:
            names.update({str(work): layer, str(work / "out"): f"the output folder {self.request.out_folder}",
                          str(work / "out" / ".mtp-"): layer})
        return names

    def job(self, work: Path, out: Path) -> RunOutcome:
        """The engine's work in ``work`` (worker thread), moved to its run folder in ``out`` when complete."""
        from mtp_core.pipeline import extract_buildings

        request = self.request
        self.progress_text.emit("loading the model…")
        predictor = self.predictors.get(request.model)
        self.device_text.emit(predictor.describe())
        if lines := predictor.weights_summary():  # what loading the checkpoint did, in the MTP log
            QgsMessageLog.logMessage("\n".join(lines), LOG_TAG, Qgis.Info)
        raster = request.raster
        if request.bounds is not None or request.polygons is not None:
            raster = clip_raster(raster, work / "area" / f"{Path(raster).stem}.vrt", request.bounds, request.polygons)
        started = time.perf_counter()
        result = extract_buildings(  # ``source``: the layer's file, not the VRT of its area
            predictor, raster, work / "out", bands=request.bands, nodata=request.nodata,
            min_area_m2=request.min_area_m2, simplify_m=request.simplify_m, regularize=request.regularize,
            progress=self._report, cancel=self.isCanceled, source=Path(request.raster).name)
        final = free_name(out / request.run_name)
        os.replace(work / "out", final)
        stats = result.prediction.stats
        instances = getattr(predictor, "instances", False)
        apart = " (one per building: the model separates touching buildings)" if instances else ""
        return RunOutcome(  # the run's folder by name: a full path would not wrap in a narrow dock (the log has it)
            "done", f"{result.buildings} buildings{apart} in {time.perf_counter() - started:.1f} s "
                    f"({stats.tiles_run} tiles, {stats.tiles_per_s:.1f} tiles/s on {stats.device.split(',')[0]}) in "
                    f"{final.name}",
            mask_path=final / result.mask_path.name, vector_path=final / result.vector_path.name,
            buildings=result.buildings)

    def _report(self, progress: Progress) -> None:
        from mtp_core.pipeline import progress_line

        self.setProgress(100.0 * progress.fraction)
        done = progress.done == progress.total
        self.progress_text.emit(progress_line(progress) + ("; vectorizing…" if done else ""))

    # ------------------------------------------------------------------------------------------ GUI thread
    def finished(self, result: bool) -> None:
        outcome = self.outcome or RunOutcome("cancelled", "Cancelled before it started: nothing was written.")
        if outcome.state == "done":
            try:
                self.add_layers(outcome)
            except OSError as exc:
                outcome = RunOutcome("failed", str(exc))
        level = {"done": Qgis.Success, "cancelled": Qgis.Info, "failed": Qgis.Critical}[outcome.state]
        log = f"{self.request.layer_name}: {outcome.message}" + (
            f" ({outcome.vector_path.parent})" if outcome.vector_path else "")
        QgsMessageLog.logMessage(f"{log}\n{outcome.details}" if outcome.details else log, LOG_TAG, level)
        if self.on_done is not None:
            self.on_done(outcome)


    def add_layers(self, outcome: RunOutcome) -> None:
        """The run's layers, styled, in a new group (GUI thread)."""
        add_result_layers(self.request.group_name, self.request.layer_name, outcome.mask_path, outcome.vector_path)


def free_name(path: Path) -> Path:
    """``path``, or ``path_2``, ``path_3``… when a run of the same second already wrote there."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}_{n}")
    return candidate
