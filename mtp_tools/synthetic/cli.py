"""``mtp synth`` (also ``python -m mtp_tools.synthetic``): write synthetic scenes with building labels."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mtp_tools.synthetic.files import write_scene
from mtp_tools.synthetic.render import render_scene
from mtp_tools.synthetic.touching import render_touching_scene, touching_fraction


def main(argv: Sequence[str] | None = None) -> int:
    """``mtp synth OUT_DIR --size 1024 --seed 0 --count 3``: writes NAME_i.tif/.geojson."""
    parser = argparse.ArgumentParser(prog="mtp synth",
                                     description="Write synthetic aerial scenes (GeoTIFF) with building labels "
                                                 "(GeoJSON).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=1024, help="scene height and width in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene; scene i uses seed + i")
    parser.add_argument("--count", type=int, default=1, help="number of scenes (default 1)")
    parser.add_argument("--gsd", type=float, default=0.5, help="metres per pixel (default 0.5)")
    parser.add_argument("--epsg", type=int, default=32633, help="projected CRS of the outputs (default 32633)")
    parser.add_argument("--name", default="scene", help="file name prefix (default scene)")
    parser.add_argument("--layout", choices=("flat", "spacenet", "samrs"), default="flat",
                        help="flat: NAME_i.tif + NAME_i.geojson; spacenet: SpaceNet v1's 3band/3band_NAME_img<i>.tif "
                             "+ vectorData/geoJson/NAME_img<i>_Geo.geojson, for training.data's raw SpaceNet dataset; "
                             "samrs: images/, gray/ and instances.json (COCO RLE), for multi-task pretraining")
    parser.add_argument("--touching", type=float, default=None, metavar="FRACTION",
                        help="scenes where about FRACTION (0-1) of the buildings share a wall with another: rows of "
                             "terraced houses and semi-detached pairs, one label per house (flat and spacenet "
                             "layouts)")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.count <= 0 or args.gsd <= 0:
        parser.error("--size, --count and --gsd must be positive")
    if args.touching is not None and not 0.0 <= args.touching <= 1.0:
        parser.error(f"--touching is a fraction of the buildings, between 0 and 1; got {args.touching}")
    if args.touching is not None and args.layout == "samrs":
        parser.error("--touching writes the flat or spacenet layout (one polygon per house); not --layout samrs")
    if args.layout == "samrs":
        from mtp_tools.samrs import synthetic_images, write_samrs

        images = synthetic_images(args.count, args.size, args.seed, args.name, args.gsd)
        path = write_samrs(args.out_dir, images)
        print(f"{path}: {len(images)} scenes, {sum(len(i.classes) for i in images)} building instances")
        return 0
    for i in range(args.count):
        if args.touching is None:
            scene = render_scene(args.size, args.size, args.seed + i, args.gsd)
        else:
            scene = render_touching_scene(args.size, args.size, args.seed + i, args.touching, args.gsd)
        if args.layout == "spacenet":
            chip = f"{args.name}_img{i + 1}"
            paths = (args.out_dir / "3band" / f"3band_{chip}.tif",
                     args.out_dir / "vectorData" / "geoJson" / f"{chip}_Geo.geojson")
        else:
            paths = (args.out_dir / f"{args.name}_{i}.tif", args.out_dir / f"{args.name}_{i}.geojson")
        tif, geojson = write_scene(scene, *paths, epsg=args.epsg)
        touching = "" if args.touching is None else f", {touching_fraction(scene.buildings):.0%} touching another"
        print(f"{tif} + {geojson}: seed {args.seed + i}, {len(scene.buildings)} buildings{touching}, "
              f"{scene.cover:.1%} building cover")
    return 0

