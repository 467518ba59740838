"""Buildings that touch in real imagery: semantic-only against instance polygons on SpaceNet 1 Rio chips.

The chips of ``../shared/realdata/spacenet1_AOI_0_TEST`` (0.5 m RGB in EPSG:4326, labels as GeoJSON; a third to
half of their buildings share a wall) go through the main job twice with one checkpoint (``nodata=0`` for the
strip-edge fill), with and without its instance decoder, and both polygon sets are scored with SpaceNet's rules in
UTM 23S (20 px² = 5 m² minimum area). The model is the demo instance model fine-tuned on chips img1-img7
(``training/configs/demo/rvsa-tiny-upernet-maskrcnn-256-spacenet-rio.py``); the default chips are the held-out
img8-img10. Ends with one line: ``SpaceNet chips: polygon F1 semantic-only S, instances I``.

    .venv/bin/python bench/instances_spacenet.py --checkpoint work_dirs/spacenet_rio/iter_300.pth [--device cpu] [--tta]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mtp_core.inference import InstancePredictor, Predictor
from mtp_core.pipeline import extract_buildings
from mtp_tools.touching_compare import score, total

REPO = Path(__file__).resolve().parents[1]
CHIPS = REPO.parent / "shared" / "realdata" / "spacenet1_AOI_0_TEST" / "AOI_0_TEST"
TEST = REPO / "training" / "configs" / "demo" / "spacenet-rio-test.txt"
UTM_23S = "EPSG:32723"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--chips", type=Path, default=CHIPS)
    parser.add_argument("--split", type=Path, default=TEST, help="chip names, one per line")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true", help="both paths with test-time augmentation (8 views)")
    args = parser.parse_args()

    instances = InstancePredictor.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta)
    semantic = Predictor.from_checkpoint(args.checkpoint, device=args.device, instances=False, tta=args.tta)
    print(f"model: {instances.card.description} ({args.checkpoint})")
    results: dict[str, list] = {"semantic": [], "instances": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.split.read_text().split():
            tif = args.chips / "3band" / f"{name}.tif"
            labels = args.chips / "vectorData" / "geoJson" / f"{name.removeprefix('3band_')}_Geo.geojson"
            line = [name]
            for kind, predictor in (("semantic", semantic), ("instances", instances)):
                job = extract_buildings(predictor, tif, Path(tmp) / kind, nodata=0)
                result = score(job.vector_path, labels, instances.card.gsd_m, UTM_23S)
                results[kind].append(result)
                line.append(f"{kind} F1 {result.f1:.3f} ({result.tp}/{result.fp}/{result.fn})")
            print(" | ".join(line))
    sem, ins = total(results["semantic"]), total(results["instances"])
    print(f"semantic-only P {sem.precision:.3f} R {sem.recall:.3f}; instances P {ins.precision:.3f} "
          f"R {ins.recall:.3f} (TP/FP/FN)")
    print(f"SpaceNet chips: polygon F1 semantic-only {sem.f1:.3f}, instances {ins.f1:.3f}")


if __name__ == "__main__":
    main()
