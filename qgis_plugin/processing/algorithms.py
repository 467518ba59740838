"""The MTP Processing algorithms. Every result comes from ``mtp_core``, so each equals its ``mtp`` command.

Why it is built this way:

* Ids (``mtp:segment``, ``mtp:extractbuildings``, ``mtp:vectorize``, ``mtp:evaluate``, ``mtp:changedetection``) and
  parameter names are API: models, batch files and ``qgis_process`` command lines store them. Never rename them.
* torch and the engine are imported only inside ``processAlgorithm``. The provider then loads when torch is
  missing, and each run says what is missing and where to install it.
* The model is loaded once for many runs (:data:`PREDICTORS`): the batch dialog and the modeler run an algorithm
  once per raster, each time in a new instance, with the same checkpoint and device (the change detection's building
  model is kept beside it: :data:`BUILDING_PREDICTORS`).
* ``extractbuildings`` and ``vectorize`` run the engine's own functions in a temporary folder and copy its polygons
  into a feature sink: any format QGIS writes, or a temporary layer in the modeler. Its polygons are therefore those
  of ``mtp predict``, and a failed or cancelled run leaves nothing.
* File outputs are checked before the model runs: a folder that cannot be written (read-only, missing rights) is
  named with its parameter, not met later as a raw ``[Errno 30]``.
* Errors a user can fix become ``QgsProcessingException`` naming the parameter and layer, said once
  (:mod:`qgis_plugin.processing.errors`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from ..dependencies import check_dependencies
from ..model_cache import ModelSpec, PredictorCache
from ..results import style_changes
from .errors import engine_errors

if TYPE_CHECKING:  # the engine imports torch: only inside processAlgorithm at run time
    from mtp_core.inference import Predictor, RunStats
    from mtp_core.progress import Progress

DEVICES = ["auto", "cpu", "cuda"]
RULES = ["spacenet", "spacenet1"]
RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".shp")  # what the engine reads (mtp:evaluate)
TAGS = ["mtp", "buildings", "segmentation", "deep learning", "remote sensing", "vectorize", "change detection"]

#: The provider's model, kept between runs (see the module docstring).
PREDICTORS = PredictorCache()
#: The building model of change detection (its kind of changes), kept between runs too.
BUILDING_PREDICTORS = PredictorCache()


def require_engine() -> None:
    """Stop with what is missing and where to install it (before anything imports torch)."""
    status = check_dependencies()
    if not status.ok:
        raise QgsProcessingException(
            f"{status.summary()} Install them with 'Install dependencies' in the MTP dock or in Raster > MTP for "
            "QGIS > MTP environment… (the README says how to install them by hand, e.g. for qgis_process).")


def advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def is_file_destination(value: str) -> bool:
    """A destination that is a file path (not a temporary layer or a provider URI such as postgres:...)."""
    return bool(value) and not value.startswith(("memory:", "TEMPORARY_OUTPUT", "postgres:", "spatialite:", "ogr:",
                                                 "postgis:", "mssql:", "oracle:"))


def require_writable_folder(path: Path, parameter: str) -> None:
    """Fails now, naming the parameter, when the destination's folder cannot be written."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mtp-write-test-"):
            pass
    except OSError as exc:
        raise QgsProcessingException(
            f"{parameter}: cannot write to the folder {folder} ({exc.strerror}); choose another folder") from None


class MTPAlgorithm(QgsProcessingAlgorithm):
    """Shared by the four algorithms: naming, parameters, the dependency check and error translation.

    Each algorithm's ``run_engine`` makes its engine call (``run`` is QgsProcessingAlgorithm's own: not overridden).
    """

    ALG_ID = ""
    TITLE = ""
    HELP = ""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, str] = {}  # the run's files and temporary folders -> the parameter (and layer)

    def name(self) -> str:
        return self.ALG_ID

    def displayName(self) -> str:  # noqa: N802
        return self.TITLE

    def shortHelpString(self) -> str:  # noqa: N802
        return self.HELP

    def tags(self) -> list[str]:
        return TAGS

    def createInstance(self) -> "MTPAlgorithm":  # noqa: N802
        return type(self)()

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        with engine_errors(self.names):
            require_engine()
            return self.run_engine(parameters, context, feedback)

    # ------------------------------------------------------------------------------------------ parameters
    def add_model_parameters(self, rasters: tuple[tuple[str, str], ...] = (("INPUT", "Input raster"),),
                             demo: str = "the embedded demo model") -> None:
        for name, label in rasters:
            self.addParameter(QgsProcessingParameterRasterLayer(name, label))
        self.addParameter(QgsProcessingParameterFile(
            "CHECKPOINT", f"Model checkpoint (empty: {demo})", optional=True,
            fileFilter="PyTorch checkpoints (*.pth *.pt *.ckpt);;All files (*.*)"))
        self.addParameter(QgsProcessingParameterEnum(
            "DEVICE", "Device (auto: the first CUDA GPU, else the CPU)", DEVICES, defaultValue="auto",
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterNumber(
            "BATCH_SIZE", "Batch size (tiles per step; halved on CUDA out-of-memory)",
            QgsProcessingParameterNumber.Integer, 8, False, 1))
        self.addParameter(QgsProcessingParameterString(
            "BANDS", "Bands fed as the model's R,G,B, e.g. 3,2,1 (empty: the model's own)", optional=True))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            "TTA", "Test-time augmentation: each tile also turned and mirrored, the 8 views averaged (8x the time)",
            False)))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            "PIXEL_CRS", "Accept a raster without georeference (areas in pixel units)", False)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            "NODATA", "Treat this band value as nodata (e.g. 0 for black fill; empty: the raster's own)",
            QgsProcessingParameterNumber.Double, optional=True)))

    def add_vector_options(self) -> None:
        self.addParameter(QgsProcessingParameterNumber(
            "MIN_AREA", "Drop polygons smaller than (m²)", QgsProcessingParameterNumber.Double, 4.0, False, 0.0))
        self.addParameter(QgsProcessingParameterNumber(
            "SIMPLIFY", "Simplify tolerance (m; 0 = off)", QgsProcessingParameterNumber.Double, 0.25, False, 0.0))
        self.addParameter(QgsProcessingParameterBoolean("REGULARIZE", "Right-angled building outlines", False))

    # ------------------------------------------------------------------------------------------ values
    def raster_source(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> str | None:
        """The GDAL dataset name of a raster parameter (None when an optional one is not set); errors about its file
        will name the parameter and the layer."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            return None
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"{name}: {layer.name()} is a '{layer.providerType()}' layer, but MTP reads raster files through "
                "GDAL; save it as a GeoTIFF first (right-click the layer > Export > Save As…)")
        self.names[layer.source()] = f"{name} ({layer.name()})"
        return layer.source()

    def output_path(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext,
                    suffixes: tuple[str, ...]) -> Path | None:
        """The file a destination parameter asks for (None when an optional one is not set), in a folder that can
        be written."""
        value = self.parameterAsOutputLayer(parameters, name, context)
        if not value:
            return None
        path = Path(value)
        if path.suffix.lower() not in suffixes:
            raise QgsProcessingException(
                f"{name}: MTP writes {', '.join(suffixes)} files, not {value}; choose 'Save to File…' with one of "
                "these extensions")
        require_writable_folder(path, name)
        self.names[str(path)] = f"{name} ({path})"
        return path

    def check_sink(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> None:
        """Fails before the model runs when a feature sink's file cannot be written."""
        value = self.parameterAsOutputLayer(parameters, name, context)
        if is_file_destination(value):
            require_writable_folder(Path(value.split("|")[0]), name)

    def work_folder(self, input_words: str) -> tempfile.TemporaryDirectory:
        """A temporary folder for the engine's files, whose paths errors call ``input_words`` (the files there that
        errors can name are the engine's VRTs of the input)."""
        work = tempfile.TemporaryDirectory(dir=QgsProcessingUtils.tempFolder(), prefix=".mtp-")
        self.names[work.name] = input_words
        return work

    def copy_to_sink(self, source: Path, parameters: dict[str, Any], name: str, context: QgsProcessingContext,
                     feedback: QgsProcessingFeedback) -> tuple[str, int]:
        """The engine's vector file copied into the feature sink ``name`` (its fields without the GeoPackage fid);
        the sink's id and the number of features."""
        from mtp_core.progress import Cancelled

        layer = QgsVectorLayer(str(source), "engine", "ogr")
        if not layer.isValid():
            raise QgsProcessingException(f"{name}: QGIS cannot read the engine's output {source.name}")
        fields = QgsFields()
        for field in layer.fields():
            if field.name().lower() != "fid":
                fields.append(field)
        sink, dest_id = self.parameterAsSink(parameters, name, context, fields, layer.wkbType(), layer.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, name))
        count = 0
        for feature in layer.getFeatures():
            if feedback.isCanceled():
                raise Cancelled()
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            out.setAttributes([feature[field.name()] for field in fields])
            if not sink.addFeature(out, QgsFeatureSink.FastInsert):
                raise QgsProcessingException(f"{name}: cannot write a feature ({sink.lastError()})")
            count += 1
        del layer  # closes the engine's file before its folder goes
        return dest_id, count

    def nodata(self, parameters: dict[str, Any], context: QgsProcessingContext) -> float | None:
        """NODATA, or None when it is not set (``parameterAsDouble`` would give 0 for that)."""
        if parameters.get("NODATA") in (None, ""):
            return None
        return self.parameterAsDouble(parameters, "NODATA", context)

    def bands(self, parameters: dict[str, Any], context: QgsProcessingContext) -> tuple[int, ...] | None:
        from mtp_core.pipeline import parse_bands

        return parse_bands(self.parameterAsString(parameters, "BANDS", context), "BANDS")

    def vector_options(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        return dict(min_area_m2=self.parameterAsDouble(parameters, "MIN_AREA", context),
                    simplify_m=self.parameterAsDouble(parameters, "SIMPLIFY", context),
                    regularize=self.parameterAsBoolean(parameters, "REGULARIZE", context))

    def load_predictor(self, parameters: dict[str, Any], context: QgsProcessingContext,
                       feedback: QgsProcessingFeedback, name: str = "CHECKPOINT", demo: str = "",
                       cache: PredictorCache = PREDICTORS) -> Predictor:
        """The model of the file parameter ``name`` (empty: ``demo``, default the demo segmentation model) on the
        chosen device, which is reported first (users must always see what runs the model); loaded once for
        consecutive runs with the same checkpoint, device, batch size and test-time augmentation."""
        from mtp_core.weights import DEMO_CHECKPOINT

        checkpoint = self.parameterAsFile(parameters, name, context) or demo or str(DEMO_CHECKPOINT)
        self.names[checkpoint] = f"{name} ({checkpoint})"
        spec = ModelSpec(checkpoint, device=self.parameterAsEnumString(parameters, "DEVICE", context),
                         batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                         tta=self.parameterAsBoolean(parameters, "TTA", context))
        loaded = cache.holds(spec)
        predictor = cache.get(spec)
        card = predictor.card
        feedback.pushInfo(f"device: {predictor.describe()}")
        feedback.pushInfo(f"model: {card.description or card.architecture} ({card.tile} px tiles, overlap "
                          f"{predictor.overlap}, {card.gsd_m} m/px) from {checkpoint}"
                          + ("; already loaded by an earlier run" if loaded else ""))
        for line in predictor.weights_summary():
            feedback.pushInfo(line)
        if getattr(predictor, "instances", False):
            feedback.pushInfo("instances: the model has an instance decoder, so every building is its own polygon, "
                              "also where buildings touch (the class raster is its semantic decoder's)")
        return predictor


def tile_progress(feedback: QgsProcessingFeedback) -> Callable[[Progress], None]:
    """The engine's ``progress(Progress)`` callback as the Processing progress bar."""
    return lambda p: feedback.setProgress(100.0 * p.fraction)


def run_summary(stats: RunStats, km2: float) -> str:
    rate = f", {km2 / stats.seconds:.3f} km²/s" if km2 and stats.seconds > 0 else ""
    return (f"{stats.tiles_run} tiles ({stats.tiles_skipped} nodata skipped) in {stats.seconds:.1f} s "
            f"({stats.tiles_per_s:.1f} tiles/s{rate})")


class SegmentAlgorithm(MTPAlgorithm):
    ALG_ID = "segment"
    TITLE = "Segment raster (class raster)"
    HELP = ("Runs an MTP segmentation model over a georeferenced raster, tile by tile with blended overlaps, and "
            "writes the class raster (uint8, nodata 255) on the raster's own grid and CRS: the NAME_mask.tif of "
            "`mtp predict`. Optionally also the class probabilities (uint8, P × 255), which give polygons made "
            "with 'Vectorize class raster' their score. Without a checkpoint the embedded demo model runs.")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.add_model_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Class raster"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "PROBABILITIES", "Probabilities (uint8, P × 255)", optional=True, createByDefault=False))

    def run_engine(self, parameters: dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback) -> dict[str, Any]:
        from mtp_core.pipeline import predict_raster

        raster = self.raster_source(parameters, "INPUT", context)
        mask = self.output_path(parameters, "OUTPUT", context, RASTER_SUFFIXES)
        probs = self.output_path(parameters, "PROBABILITIES", context, RASTER_SUFFIXES)
        self.names[str(mask.parent / ".mtp-")] = self.names[raster]  # the engine's VRTs of the input, beside OUTPUT
        predictor = self.load_predictor(parameters, context, feedback)
        prediction = predict_raster(
            predictor, raster, mask, probs, bands=self.bands(parameters, context),
            pixel_crs=self.parameterAsBoolean(parameters, "PIXEL_CRS", context),
            nodata=self.nodata(parameters, context), progress=tile_progress(feedback), cancel=feedback.isCanceled)
        feedback.pushInfo(f"{run_summary(prediction.stats, prediction.km2)} -> {mask}")
        return {"OUTPUT": str(mask), "PROBABILITIES": str(probs) if probs else None}


class ExtractBuildingsAlgorithm(MTPAlgorithm):
    ALG_ID = "extractbuildings"
    TITLE = "Extract buildings (raster to polygons)"
    HELP = ("The whole job of `mtp predict`: segments a georeferenced raster with an MTP model and writes clean "
            "building polygons (attributes id, class, score, area_m2, perimeter_m, source, model) in the raster's "
            "CRS, and optionally the class raster. The same options give the same polygons as `mtp predict`. "
            "Without a checkpoint the embedded demo model runs. Runs in batch mode over many rasters.")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.add_model_parameters()
        self.add_vector_options()
        self.addParameter(QgsProcessingParameterFeatureSink(
            "OUTPUT", "Buildings", QgsProcessing.TypeVectorPolygon))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "MASK", "Class raster", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("BUILDINGS", "Buildings found"))

    def run_engine(self, parameters: dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback) -> dict[str, Any]:
        from mtp_core.pipeline import extract_buildings

        raster = self.raster_source(parameters, "INPUT", context)
        self.check_sink(parameters, "OUTPUT", context)
        mask = self.output_path(parameters, "MASK", context, RASTER_SUFFIXES)
        predictor = self.load_predictor(parameters, context, feedback)
        with self.work_folder(self.names[raster]) as work:
            result = extract_buildings(
                predictor, raster, work, bands=self.bands(parameters, context),
                pixel_crs=self.parameterAsBoolean(parameters, "PIXEL_CRS", context),
                nodata=self.nodata(parameters, context), progress=tile_progress(feedback),
                cancel=feedback.isCanceled, **self.vector_options(parameters, context))
            output, count = self.copy_to_sink(result.vector_path, parameters, "OUTPUT", context, feedback)
            if mask is not None:
                shutil.move(result.mask_path, mask)
        feedback.pushInfo(f"{run_summary(result.prediction.stats, result.prediction.km2)}; {count} buildings")
        return {"OUTPUT": output, "MASK": str(mask) if mask else None, "BUILDINGS": count}


class VectorizeAlgorithm(MTPAlgorithm):
    ALG_ID = "vectorize"
    TITLE = "Vectorize class raster"
    HELP = ("Turns a class raster (e.g. the output of 'Segment raster') into clean polygons, as `mtp vectorize`: "
            "4-connected regions, small polygons and holes dropped, coverage simplification (no gaps between "
            "classes), optional right-angled outlines. A probability raster gives each polygon its score.")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(QgsProcessingParameterRasterLayer(
            "PROBABILITIES", "Probabilities (uint8, P × 255) for the score attribute", optional=True))
        self.add_vector_options()
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", "Polygons", QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputNumber("POLYGONS", "Polygons written"))

    def run_engine(self, parameters: dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback) -> dict[str, Any]:
        from mtp_core.vectorize import vectorize_raster_to_file

        mask = self.raster_source(parameters, "INPUT", context)
        probs = self.raster_source(parameters, "PROBABILITIES", context)
        self.check_sink(parameters, "OUTPUT", context)
        with self.work_folder(self.names[mask]) as work:
            polygons = Path(work) / "polygons.gpkg"
            vectorize_raster_to_file(
                mask, polygons, prob_raster_path=probs, source=Path(mask).name, cancel=feedback.isCanceled,
                progress=lambda p: feedback.setProgress(100.0 * p.fraction),
                **self.vector_options(parameters, context))
            output, count = self.copy_to_sink(polygons, parameters, "OUTPUT", context, feedback)
        feedback.pushInfo(f"{count} polygons")
        return {"OUTPUT": output, "POLYGONS": count}


SCORE_FIELDS = (("area", QVariant.String), ("tp", QVariant.Int), ("fp", QVariant.Int), ("fn", QVariant.Int),
                ("precision", QVariant.Double), ("recall", QVariant.Double), ("f1", QVariant.Double))


class EvaluateAlgorithm(MTPAlgorithm):
    ALG_ID = "evaluate"
    TITLE = "Evaluate building polygons (TP/FP/FN, F1)"
    HELP = ("Scores predicted building polygons against reference polygons with the SpaceNet rules, as "
            "`mtp evaluate`: proposals by descending score take the unmatched reference of highest IoU; a match "
            "when IoU > the threshold. Areas in metres (the reference is reprojected to the prediction's CRS). "
            "Writes a table (area, tp, fp, fn, precision, recall, f1) and returns the numbers for the modeler.")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFeatureSource(
            "PREDICTION", "Predicted buildings", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "REFERENCE", "Reference buildings", [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterNumber(
            "IOU", "IoU threshold of a match", QgsProcessingParameterNumber.Double, 0.5, False, 0.0, 1.0))
        self.addParameter(QgsProcessingParameterNumber(
            "MIN_AREA", "Ignore polygons smaller than (m²; empty: 5 m², SpaceNet's 20 px² at 0.5 m)",
            QgsProcessingParameterNumber.Double, None, True, 0.0))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            "RULES", "Matching rules (spacenet1: the 2016 scorer, IoU ≥ threshold, file order)", RULES,
            defaultValue="spacenet", usesStaticStrings=True)))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", "Scores", QgsProcessing.TypeVector))
        for key in ("TP", "FP", "FN", "PRECISION", "RECALL", "F1"):
            self.addOutput(QgsProcessingOutputNumber(key, key.lower()))

    def vector_file(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext,
                    feedback: QgsProcessingFeedback) -> str:
        """A file whose first layer holds the parameter's features, as the engine reads it: the layer's own file, or
        an export when it has none (a memory layer, a filter, selected features only)."""
        from osgeo import gdal

        path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, name, context, [s.lstrip(".") for s in VECTOR_SUFFIXES], "gpkg", feedback)
        if layer_name:
            dataset = gdal.OpenEx(path, gdal.OF_VECTOR)  # kept in a variable: its layer dies with it
            first = dataset.GetLayer(0).GetName()
            if layer_name != first:
                raise QgsProcessingException(
                    f"{name}: {path} holds several layers and MTP reads the first ({first}); export layer "
                    f"{layer_name} to its own file (right-click > Export > Save Features As…)")
        return path

    def run_engine(self, parameters: dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback) -> dict[str, Any]:
        from mtp_core.metrics import MatchResult, evaluate_files

        prediction = self.vector_file(parameters, "PREDICTION", context, feedback)
        reference = self.vector_file(parameters, "REFERENCE", context, feedback)
        min_area = self.parameterAsString(parameters, "MIN_AREA", context).strip()
        results = evaluate_files(
            prediction, reference, iou_threshold=self.parameterAsDouble(parameters, "IOU", context),
            min_area=float(min_area) if min_area else None,
            rules=self.parameterAsEnumString(parameters, "RULES", context))
        fields = QgsFields()
        for field_name, field_type in SCORE_FIELDS:
            fields.append(QgsField(field_name, field_type))
        sink, dest_id = self.parameterAsSink(parameters, "OUTPUT", context, fields, QgsWkbTypes.NoGeometry,
                                             QgsCoordinateReferenceSystem())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, "OUTPUT"))
        for area, r in results.items():
            feature = QgsFeature(fields)
            feature.setAttributes([area, r.tp, r.fp, r.fn, r.precision, r.recall, r.f1])
            sink.addFeature(feature, QgsFeatureSink.FastInsert)
            feedback.pushInfo(f"{area}: TP {r.tp}, FP {r.fp}, FN {r.fn}, precision {r.precision:.4f}, "
                              f"recall {r.recall:.4f}, F1 {r.f1:.4f}")
        total = MatchResult.from_counts(sum(r.tp for r in results.values()), sum(r.fp for r in results.values()),
                                        sum(r.fn for r in results.values()))
        return {"OUTPUT": dest_id, "TP": total.tp, "FP": total.fp, "FN": total.fn, "PRECISION": total.precision,
                "RECALL": total.recall, "F1": total.f1}


class ChangeStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the changes layer a run loads by ``kind`` (new, demolished, modified, other), as the dock does.

    QGIS holds a post-processor only by a plain pointer: :attr:`alive` keeps every one made (a few bytes each) so a
    batch's layers, loaded at its end, still find theirs."""

    alive: list["ChangeStyler"] = []

    def postProcessLayer(self, layer, context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsVectorLayer):
            style_changes(layer)

    @classmethod
    def create(cls) -> "ChangeStyler":
        cls.alive.append(cls())
        return cls.alive[-1]


class ChangeDetectionAlgorithm(MTPAlgorithm):
    ALG_ID = "changedetection"
    TITLE = "Detect changes between two rasters"
    HELP = ("The job of `mtp change`: an MTP change-detection model (Siamese RVSA ViT + UNet) compares two "
            "georeferenced rasters of one place. The second is warped onto the first's grid at the model's ground "
            "resolution (they must overlap, and their pixel sizes must be within 4x of each other); both are read "
            "tile by tile. Writes the change polygons (id, class, score, area_m2, perimeter_m, source, model) in the "
            "first raster's CRS and optionally the change raster. With 'Kind of each change' a building model runs "
            "on both dates and each change gets its kind: new, demolished, modified or other (the layer is styled "
            "by it). Without checkpoints the embedded demo models run.")

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        self.add_model_parameters((("BEFORE", "First date (before)"), ("AFTER", "Second date (after)")),
                                  "the embedded demo change detector")
        self.addParameter(QgsProcessingParameterBoolean(
            "KINDS", "Kind of each change (new / demolished / modified: runs a building model on both dates)", False))
        self.addParameter(QgsProcessingParameterFile(
            "BUILDINGS_CHECKPOINT", "Building model checkpoint (empty: the embedded demo model)", optional=True,
            fileFilter="PyTorch checkpoints (*.pth *.pt *.ckpt);;All files (*.*)"))
        self.add_vector_options()
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", "Changes", QgsProcessing.TypeVectorPolygon))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "MASK", "Change raster", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("CHANGES", "Changes found"))

    def run_engine(self, parameters: dict[str, Any], context: QgsProcessingContext,
                   feedback: QgsProcessingFeedback) -> dict[str, Any]:
        from mtp_core.change import describe_kinds, detect_changes, pair_name
        from mtp_core.weights import DEMO_CD_CHECKPOINT

        before = self.raster_source(parameters, "BEFORE", context)
        after = self.raster_source(parameters, "AFTER", context)
        self.check_sink(parameters, "OUTPUT", context)
        mask = self.output_path(parameters, "MASK", context, RASTER_SUFFIXES)
        predictor = self.load_predictor(parameters, context, feedback, demo=str(DEMO_CD_CHECKPOINT))
        buildings = None
        if self.parameterAsBoolean(parameters, "KINDS", context):
            buildings = self.load_predictor(parameters, context, feedback, "BUILDINGS_CHECKPOINT",
                                            cache=BUILDING_PREDICTORS)
        with self.work_folder(self.names[before]) as work:
            result = detect_changes(
                predictor, before, after, work, name=pair_name(before, after), buildings=buildings,
                bands=self.bands(parameters, context),
                pixel_crs=self.parameterAsBoolean(parameters, "PIXEL_CRS", context),
                nodata=self.nodata(parameters, context), progress=tile_progress(feedback),
                cancel=feedback.isCanceled, **self.vector_options(parameters, context))
            output, count = self.copy_to_sink(result.vector_path, parameters, "OUTPUT", context, feedback)
            if mask is not None:
                shutil.move(result.mask_path, mask)
        if result.kinds is not None and context.willLoadLayerOnCompletion(output):
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(ChangeStyler.create())
        kinds = describe_kinds(result.kinds)
        feedback.pushInfo(f"{run_summary(result.stats, result.km2)}; {result.overlap:.0%} of the first date covered; "
                          f"{count} changes{f' ({kinds})' if kinds else ''}")
        return {"OUTPUT": output, "MASK": str(mask) if mask else None, "CHANGES": count}


ALGORITHMS: tuple[type[MTPAlgorithm], ...] = (
    SegmentAlgorithm, ExtractBuildingsAlgorithm, VectorizeAlgorithm, EvaluateAlgorithm, ChangeDetectionAlgorithm)
