"""The SAMRS subsets MTP pretrains on and their classes, in the order of the released per-dataset heads (k = 1 SOTA,
2 SIOR, 3 FAST; ``mtp_multitask_spec.md`` §4). Class i of a subset is label i of its heads (background last in the
RoI classifiers, first in the semantic ones)."""
from __future__ import annotations

SOTA_CLASSES = (
    "large-vehicle", "swimming-pool", "helicopter", "bridge", "plane", "ship", "soccer-ball-field",
    "basketball-court", "ground-track-field", "small-vehicle", "baseball-diamond", "tennis-court", "roundabout",
    "storage-tank", "harbor", "container-crane", "airport", "helipad",
)
SIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "expressway-service-area",
    "expressway-toll-station", "dam", "golffield", "groundtrackfield", "harbor", "overpass", "ship", "stadium",
    "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)
FAST_CLASSES = (
    "A220", "A321", "A330", "A350", "ARJ21", "Baseball-Field", "Basketball-Court", "Boeing737", "Boeing747",
    "Boeing777", "Boeing787", "Bridge", "Bus", "C919", "Cargo-Truck", "Dry-Cargo-Ship", "Dump-Truck",
    "Engineering-Ship", "Excavator", "Fishing-Boat", "Football-Field", "Intersection", "Liquid-Cargo-Ship",
    "Motorboat", "other-airplane", "other-ship", "other-vehicle", "Passenger-Ship", "Roundabout", "Small-Car",
    "Tennis-Court", "Tractor", "Trailer", "Truck-Tractor", "Tugboat", "Van", "Warship",
)
SAMRS_CLASSES = {"sota": SOTA_CLASSES, "sior": SIOR_CLASSES, "fast": FAST_CLASSES}
