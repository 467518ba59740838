"""A finished run's files as styled layers in one layer-tree group (GUI thread only).

The group is named after the run, so several runs stay apart; buildings (outlined, lightly filled, so the imagery
shows through) are drawn over the class raster (buildings in colour, background transparent). Changes between two
dates are drawn the same way over their change mask, coloured by ``kind`` when they have one: new buildings green,
demolished red, modified orange, other changes grey.
"""
from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSingleSymbolRenderer,
    QgsSymbolLayerUtils,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

BUILDING_COLOUR = QColor(255, 64, 32)
CHANGE_COLOUR = QColor(255, 200, 0)
#: the colour of each kind of change (``mtp change --buildings``), and its legend label
KIND_STYLES = (("new", QColor(40, 200, 60), "new building"), ("demolished", QColor(230, 30, 40), "demolished"),
               ("modified", QColor(255, 140, 0), "modified building"), ("other", QColor(150, 150, 150), "other"))


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


def add_change_layers(group_name: str, name: str, mask_path: Path, vector_path: Path,
                      project: QgsProject | None = None) -> QgsLayerTreeGroup:
    """A group on top of the layer tree with the changes over their change mask, named after the pair of layers."""
    project = project or QgsProject.instance()
    mask = QgsRasterLayer(str(mask_path), f"{name} change mask", "gdal")
    changes = QgsVectorLayer(str(vector_path), f"{name} changes", "ogr")
    for layer in (mask, changes):
        if not layer.isValid():
            raise OSError(f"QGIS cannot open the output {layer.source()}; check the output folder")
    classes = [QgsPalettedRasterRenderer.Class(0, QColor(0, 0, 0, 0), "unchanged"),
               QgsPalettedRasterRenderer.Class(1, CHANGE_COLOUR, "changed")]
    mask.setRenderer(QgsPalettedRasterRenderer(mask.dataProvider(), 1, classes))
    mask.setOpacity(0.5)
    style_changes(changes)
    group = project.layerTreeRoot().insertGroup(0, group_name)
    for layer in (changes, mask):
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return group


def _outlined(colour: QColor) -> QgsFillSymbol:
    fill = QColor(colour)
    fill.setAlpha(80)
    return QgsFillSymbol.createSimple({"color": QgsSymbolLayerUtils.encodeColor(fill), "outline_width": "0.6",
                                       "outline_color": QgsSymbolLayerUtils.encodeColor(colour)})


def style_changes(layer: QgsVectorLayer) -> None:
    """Categories by ``kind`` when the layer has it (a change detector run with a building model), else one colour."""
    if layer.fields().indexOf("kind") < 0:
        layer.setRenderer(QgsSingleSymbolRenderer(_outlined(CHANGE_COLOUR)))
        return
    categories = [QgsRendererCategory(kind, _outlined(colour), label) for kind, colour, label in KIND_STYLES]
    layer.setRenderer(QgsCategorizedSymbolRenderer("kind", categories))
