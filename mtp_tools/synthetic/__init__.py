"""Synthetic georeferenced suburb scenes with exact building labels (:mod:`.render`), rasterized with GDAL
(:mod:`.rasterize`) and written as GeoTIFF + GeoJSON (:mod:`.files`); ``mtp synth`` (:mod:`.cli`)."""
from mtp_tools.synthetic.files import generate_scene_files, write_scene
from mtp_tools.synthetic.rasterize import rasterize_polygons
from mtp_tools.synthetic.render import Scene, render_scene, value_noise

__all__ = ["Scene", "generate_scene_files", "rasterize_polygons", "render_scene", "value_noise", "write_scene"]
