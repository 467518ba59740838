"""The ``mtp`` Processing provider. It imports no torch, so it loads (and says what to install) without it."""
from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS, BUILDING_PREDICTORS, PREDICTORS

ICON_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "icon.svg")


class MTPProvider(QgsProcessingProvider):
    """Provider id ``mtp``: models, scripts and ``qgis_process`` command lines name its algorithms by it."""

    def id(self) -> str:  # noqa: A003  (QGIS API)
        return "mtp"

    def name(self) -> str:
        return "MTP (building extraction)"

    def longName(self) -> str:  # noqa: N802
        return "MTP for QGIS: segmentation and building extraction with the MTP models"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def svgIconPath(self) -> str:  # noqa: N802
        return ICON_PATH

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def unload(self) -> None:
        PREDICTORS.clear()  # frees the models (and their GPU memory) kept between runs
        BUILDING_PREDICTORS.clear()

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["tif"]  # the engine writes GeoTIFF; vector outputs are feature sinks: any format QGIS writes

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802,N803
        return "gpkg"
