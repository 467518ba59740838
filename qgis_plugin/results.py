"""A finished run's files as styled layers in one layer-tree group (GUI thread only).

The group is named after the run, so several runs stay apart; buildings (outlined, lightly filled, so the imagery
shows through) are drawn over the class raster (buildings in colour, background transparent).
"""
from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsSingleSymbolRenderer,
    QgsSymbolLayerUtils,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

BUILDING_COLOUR = QColor(255, 64, 32)


def add_result_layers(group_name: str, layer_name: str, mask_path: Path, vector_path: Path,
                      project: QgsProject | None = None) -> QgsLayerTreeGroup:
    """A group on top of the layer tree holding the buildings over the class raster, named after the raster layer
    (its name in the Layers panel, not its file's)."""
    project = project or QgsProject.instance()
    mask = QgsRasterLayer(str(mask_path), f"{layer_name} classes", "gdal")
    buildings = QgsVectorLayer(str(vector_path), f"{layer_name} buildings", "ogr")  # the engine's one layer
    for layer in (mask, buildings):
        if not layer.isValid():
            raise OSError(f"QGIS cannot open the output {layer.source()}; check the output folder")
    style_mask(mask)
    style_buildings(buildings)
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer in (buildings, mask):
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return group


def style_mask(layer: QgsRasterLayer) -> None:
    classes = [QgsPalettedRasterRenderer.Class(0, QColor(0, 0, 0, 0), "background"),
               QgsPalettedRasterRenderer.Class(1, BUILDING_COLOUR, "building")]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    layer.setOpacity(0.5)


def style_buildings(layer: QgsVectorLayer) -> None:
    fill = QColor(BUILDING_COLOUR)
    fill.setAlpha(70)
    symbol = QgsFillSymbol.createSimple({"color": QgsSymbolLayerUtils.encodeColor(fill), "outline_width": "0.5",
                                         "outline_color": QgsSymbolLayerUtils.encodeColor(BUILDING_COLOUR)})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
