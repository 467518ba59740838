"""``mtp synth`` (also ``python -m mtp_tools.synthetic``): write synthetic scenes with building labels, or with
``--pair`` before/after scenes with their building changes."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mtp_tools.synthetic.files import write_scene
from mtp_tools.synthetic.pair import render_pair, write_pair, write_pair_levir
from mtp_tools.synthetic.render import render_scene
from mtp_tools.synthetic.touching import render_touching_scene, touching_fraction


def main(argv: Sequence[str] | None = None) -> int:
    """``mtp synth OUT_DIR --size 1024 --seed 0 --count 3``: writes NAME_i.tif/.geojson; ``--pair`` writes
    NAME_i_before.tif, NAME_i_after.tif and NAME_i_changes.geojson."""
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
    parser.add_argument("--layout", choices=("flat", "spacenet", "samrs", "levir"), default="flat",
                        help="flat: NAME_i.tif + NAME_i.geojson (with --pair: NAME_i_before.tif, NAME_i_after.tif, "
                             "NAME_i_changes.geojson); spacenet: SpaceNet v1's 3band/3band_NAME_img<i>.tif + "
                             "vectorData/geoJson/NAME_img<i>_Geo.geojson, for training.data's raw SpaceNet dataset; "
                             "samrs: images/, gray/ and instances.json (COCO RLE), for multi-task pretraining; "
                             "levir (with --pair): LEVIR-CD's A/NAME_i.png, B/NAME_i.png, label/NAME_i.png for "
                             "training a change detector")
    parser.add_argument("--touching", type=float, default=None, metavar="FRACTION",
                        help="scenes where about FRACTION (0-1) of the buildings share a wall with another: rows of "
                             "terraced houses and semi-detached pairs, one label per house (flat and spacenet "
                             "layouts)")
    parser.add_argument("--pair", action="store_true",
                        help="two dates per scene: buildings added and demolished, sun, season, light and parked cars "
                             "changed, the after image slightly misregistered")
    parser.add_argument("--shift", type=float, default=None, metavar="PX",
                        help="--pair: misregistration of the after image in pixels (direction from the seed; "
                             "default: drawn in [0.25, --max-shift])")
    parser.add_argument("--max-shift", type=float, default=1.0, metavar="PX",
                        help="--pair: largest drawn misregistration in pixels (default 1)")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.count <= 0 or args.gsd <= 0:
        parser.error("--size, --count and --gsd must be positive")
    if args.touching is not None and not 0.0 <= args.touching <= 1.0:
        parser.error(f"--touching is a fraction of the buildings, between 0 and 1; got {args.touching}")
    if args.touching is not None and (args.pair or args.layout not in ("flat", "spacenet")):
        parser.error("--touching writes single-date scenes in the flat or spacenet layout (one polygon per house); "
                     "not with --pair or --layout samrs/levir")
    if args.pair:
        if args.layout not in ("flat", "levir"):
            parser.error("--pair writes the flat or the levir layout")
        if (args.shift is not None and args.shift < 0) or args.max_shift < 0.25:
            parser.error("--shift must be >= 0 and --max-shift >= 0.25")
        return _pairs(args)
    if args.layout == "levir":
        parser.error("--layout levir is for change detection: add --pair")
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


def _pairs(args) -> int:
    for i in range(args.count):
        pair = render_pair(args.size, args.size, args.seed + i, args.gsd, args.shift, args.max_shift)
        if args.layout == "levir":
            paths = write_pair_levir(pair, args.out_dir, f"{args.name}_{i}")
        else:
            paths = write_pair(pair, args.out_dir, f"{args.name}_{i}", epsg=args.epsg)
        new = pair.kinds.count("new")
        print(f"{', '.join(map(str, paths))}: seed {args.seed + i}, {new} new and {len(pair.kinds) - new} demolished "
              f"buildings, after image shifted by {abs(complex(*pair.shift_px)):.2f} px")
    return 0
