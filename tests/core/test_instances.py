"""Instances in the main job: merging across tiles, combining with the semantic mask, one polygon per building.

The merging and combining rules are pinned with an *oracle* segmentor: a real :class:`InstanceSegmentor` whose two
decoders are replaced by exact answers read off a colour-coded scene (every building a rectangle of its own colour),
so each tile reports exactly what it sees: whole buildings, and pieces of those its edges cut. Everything after the
network (pasting, merging across overlaps, the semantic partition, streaming, vectorizing) is the real code. The
trained demo instance model is checked on a synthetic scene in ``tests/training/test_demo_instances.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from osgeo import gdal, osr
from shapely.geometry import box
from torchvision.ops import roi_align

from mtp_core.checkpoint import save_checkpoint
from mtp_core.cli import main
from mtp_core.errors import UserError
from mtp_core.inference import InstancePredictor, Predictor
from mtp_core.inference.instance_merge import Detection, InstanceMerger, resolve, window_iou
from mtp_core.inference.instance_rows import InstanceRows
from mtp_core.io import read_vector
from mtp_core.models import InstanceSegmentor, create_model, default_card
from mtp_core.models.maskrcnn import SoftInstances
from mtp_core.pipeline import extract_buildings
from mtp_core.vectorize.instances import class_of

GSD = 0.5
ORIGIN = (500000.0, 4500000.0)
# (x0, y0, x1, y1) in pixels: a terrace of four houses wall to wall, a semi-detached pair across a tile border, a
# lone house, a long building wider than a tile, and a house cut by the raster's right edge
BUILDINGS = [(20, 20, 36, 44), (36, 20, 50, 44), (50, 20, 66, 44), (66, 20, 80, 44),
             (90, 60, 106, 82), (106, 60, 124, 82),
             (150, 30, 170, 50),
             (20, 120, 150, 140),
             (180, 160, 200, 184)]


def _colour(i: int) -> tuple[int, int, int]:
    return 40 + 9 * i, 200 - 7 * i, 60 + 11 * i


def _scene() -> np.ndarray:
    image = np.zeros((200, 200, 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(BUILDINGS):
        image[y0:y1, x0:x1] = _colour(i)
    return image


class Oracle(InstanceSegmentor):
    """Semantic logits and detections read off the colour-coded scene (the module docstring)."""

    def __init__(self, card) -> None:
        net = create_model("mtp_vit_tiny_rvsa_upernet_maskrcnn", img_size=64)
        super().__init__(net.backbone, net.decode_head, None, 32, 128)
        self.mean = torch.tensor(card.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(card.std).view(1, 3, 1, 1)

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        rgb = torch.round(x * self.std + self.mean).clamp(0, 255).long()
        return rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2]

    def forward(self, x, return_aux=False, samples=None):  # noqa: ANN001, ANN201
        building = (self._codes(x) > 0).float()
        return torch.stack([10 * (1 - building), 10 * building], dim=1)

    def predict_with_instances(self, inputs, metas=None):  # noqa: ANN001, ANN201
        codes = self._codes(inputs)
        found = []
        for image in codes:
            boxes, masks = [], []
            for code in image.unique():
                if code == 0:
                    continue
                mask = image == code
                ys, xs = torch.nonzero(mask, as_tuple=True)
                boxes.append(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32))
                masks.append(mask)
            n = len(boxes)
            if not n:
                found.append(SoftInstances(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                                           torch.zeros(0, 28, 28)))
                continue
            bboxes = torch.stack(boxes)
            rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], bboxes], 1)
            probs = roi_align(torch.stack(masks).float()[:, None], rois, 28, 1.0, 0, True)[:, 0]
            found.append(SoftInstances(bboxes, torch.full((n,), 0.9), torch.zeros(n, dtype=torch.long), probs))
        return self.forward(inputs), found


def _card():
    return default_card("mtp_vit_tiny_rvsa_upernet_maskrcnn", img_size=64).replace(tile=64, overlap=24, gsd_m=GSD)


def _write_tif(image: np.ndarray, path: Path) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), image.shape[1], image.shape[0], 3, gdal.GDT_Byte)
    ds.SetGeoTransform((ORIGIN[0], GSD, 0.0, ORIGIN[1], 0.0, -GSD))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(image[:, :, b])
    ds = None
    return path


def _on_map(x0: float, y0: float, x1: float, y1: float) -> shapely.Polygon:
    return box(ORIGIN[0] + x0 * GSD, ORIGIN[1] - y1 * GSD, ORIGIN[0] + x1 * GSD, ORIGIN[1] - y0 * GSD)


@pytest.fixture(scope="module")
def oracle() -> InstancePredictor:
    card = _card()
    return InstancePredictor(Oracle(card), card, device="cpu", batch_size=3)


def test_every_building_is_one_polygon_touching_cut_and_larger_than_a_tile(oracle, tmp_path):
    tif = _write_tif(_scene(), tmp_path / "scene.tif")
    result = extract_buildings(oracle, tif, tmp_path / "out", simplify_m=0.0, min_area_m2=1.0)
    geoms, attrs, _ = read_vector(result.vector_path)
    assert result.buildings == len(geoms) == len(BUILDINGS)
    truth = [_on_map(*b) for b in BUILDINGS]
    for expected in truth:  # each building comes out whole and exact, however the 64 px tiles cut it
        ious = [shapely.area(shapely.intersection(g, expected)) / shapely.area(shapely.union(g, expected))
                for g in geoms]
        assert max(ious) == pytest.approx(1.0)
    assert set(attrs["class"]) == {1} and all(s == pytest.approx(0.9, abs=1 / 255) for s in attrs["score"])
    # the semantic mask is the semantic decoder's alone: the terrace is one region there
    mask = gdal.Open(str(result.mask_path)).ReadAsArray()
    assert np.array_equal(mask == 1, _scene().any(axis=2))


def test_semantic_only_merges_what_instances_separate(oracle, tmp_path):
    tif = _write_tif(_scene(), tmp_path / "scene.tif")
    semantic = Predictor(oracle.model, oracle.card, device="cpu", batch_size=3)
    result = extract_buildings(semantic, tif, tmp_path / "semantic", simplify_m=0.0, min_area_m2=1.0)
    assert result.buildings == len(BUILDINGS) - 3 - 1  # the terrace of four is one polygon, the pair one


def test_instance_rows_do_not_depend_on_batch_or_tiling_order(oracle):
    image = _scene().astype(np.float32)
    *_, values, scores = oracle.predict_instances_array(image)
    other = InstancePredictor(oracle.model, oracle.card, device="cpu", batch_size=7)
    *_, values2, scores2 = other.predict_instances_array(image)
    assert np.array_equal(values, values2) and np.array_equal(scores, scores2)
    ids = {int(v) for v in np.unique(values) if v > 0}
    assert len(ids) == len(BUILDINGS) and set(class_of(np.array(sorted(ids)))) == {1}
    for i, (x0, y0, x1, y1) in enumerate(BUILDINGS):  # one number per building, exactly its pixels
        assert len(np.unique(values[y0:y1, x0:x1])) == 1


def _det(y0: int, x0: int, h: int, w: int, tile: int, window, score: float = 0.9, cut: bool = False) -> Detection:
    return Detection(y0, x0, np.full((h, w), 255, np.uint8), score, 0, tile, window, cut)


def test_window_iou_counts_only_what_both_tiles_see():
    left, right = (0, 0, 64, 64), (0, 40, 64, 104)
    piece = _det(10, 30, 20, 34, 0, left, cut=True)  # cut at the left tile's right edge (x = 64)
    whole = _det(10, 30, 20, 50, 1, right)  # the right tile sees the building whole
    assert window_iou(piece, whole) == pytest.approx(1.0)
    neighbour = _det(10, 80, 20, 20, 1, right)
    assert window_iou(piece, neighbour) == 0.0


def test_resolve_drops_duplicates_and_pieces_and_joins_cut_pieces():
    a, b = (0, 0, 64, 64), (0, 40, 64, 104)
    whole_a, whole_b = _det(5, 45, 10, 10, 0, a, 0.8), _det(5, 45, 10, 10, 1, b, 0.95)
    assert [i.score for i in resolve([whole_a, whole_b], {(0, 1)})] == [0.95]  # NMS by mask IoU across tiles
    piece, whole = _det(20, 50, 10, 14, 0, a, cut=True), _det(20, 50, 10, 30, 1, b)
    kept = resolve([piece, whole], {(0, 1)})
    assert len(kept) == 1 and kept[0].prob.shape == (10, 30)
    left_piece, right_piece = _det(40, 20, 10, 44, 0, a, 0.6, True), _det(40, 40, 10, 60, 1, b, 0.9, True)
    joined = resolve([left_piece, right_piece], {(0, 1)})
    assert len(joined) == 1 and (joined[0].x0, joined[0].prob.shape) == (20, (10, 80))
    assert 0.6 < joined[0].score < 0.9
    same_tile = resolve([_det(0, 0, 5, 5, 0, a), _det(0, 5, 5, 5, 0, a)], set())
    assert len(same_tile) == 2  # one tile's detections are never merged


def test_merger_holds_detections_until_no_later_tile_reaches_them():
    merger = InstanceMerger()
    merger.add([_det(10, 10, 10, 10, 0, (0, 0, 64, 64)), _det(50, 10, 14, 10, 0, (0, 0, 64, 64), cut=True)])
    done = merger.finish(40)
    assert [(i.y0, i.x0) for i in done] == [(10, 10)] and merger.top == 50
    merger.add([_det(50, 10, 20, 10, 1, (40, 0, 104, 64))])  # the whole building the piece was cut from
    assert len(merger.finish(104)) == 1 and merger.top is None


def test_instance_rows_partition_the_semantic_mask():
    rows = InstanceRows(width=12, height=6, grow_px=2)
    classes = np.zeros((6, 12), np.uint8)
    classes[1:5, 1:11] = 1  # one semantic region: two houses wall to wall, a rim no mask covers, a far wing
    probs = np.stack([1.0 - classes, classes.astype(np.float64)]).astype(np.float32) * 0.8
    rows.add_semantic(0, classes, probs)
    from mtp_core.inference.instance_merge import Instance

    rows.paint([Instance(1, 2, np.full((4, 3), 200, np.uint8), 0.9, 0),
                Instance(1, 5, np.full((4, 2), 220, np.uint8), 0.7, 0)])
    (y0, values, scores), = rows.ready(6)
    assert y0 == 0 and values.shape == (6, 12)
    assert np.array_equal(values != 0, classes == 1)  # building pixels are the semantic ones, no more, no less
    left, right = values[2, 2], values[2, 5]
    assert left != right and values[2, 1] == left  # the rim joins its neighbour
    assert values[2, 7] == values[2, 8] == right and values[2, 9] == 1 << 24  # beyond 2 px: a semantic building
    assert scores[2, 2] == round(0.9 * 255) and scores[2, 9] == round(0.8 * 255)


def test_instance_rows_combine_in_column_chunks_as_over_the_whole_width(monkeypatch):
    """Growing (rule 3) reaches ``grow`` pixels sideways: chunks computed with that margin give exactly the
    whole-width result, so the temporaries can stay a chunk wide on a wide raster."""
    from mtp_core.inference import instance_rows
    from mtp_core.inference.instance_merge import Instance

    rng = np.random.default_rng(5)
    classes = (rng.random((40, 90)) < 0.7).astype(np.uint8)
    classes[rng.random((40, 90)) < 0.02] = instance_rows.CLASS_NODATA
    probs = rng.random((2, 40, 90)).astype(np.float32)
    houses = [Instance(int(y), int(x), (rng.random((8, 9)) * 255).astype(np.uint8), float(rng.random()), 0)
              for y, x in zip(rng.integers(0, 32, 25), rng.integers(0, 81, 25))]

    def combined(chunk: int) -> tuple[np.ndarray, np.ndarray]:
        monkeypatch.setattr(instance_rows, "COMBINE_COLUMNS", chunk)
        rows = InstanceRows(width=90, height=40, grow_px=3)
        rows.add_semantic(0, classes, probs)
        rows.paint(houses)
        (_, values, scores), = rows.ready(40)
        return values, scores

    whole = combined(1024)
    assert (whole[0] > 0).any() and len(np.unique(whole[0])) > 10
    for chunk in (1, 7, 30):
        assert all(np.array_equal(a, b) for a, b in zip(combined(chunk), whole))


def test_instances_are_kept_best_first_and_walls_fall_where_the_masks_cross():
    """Panoptic FPN's fusion decides which instances are kept: a detection of a whole row under the better houses'
    masks is dropped (under half of it is left). Where two kept instances overlap, the pixel goes to the surer mask
    (the score decides a tie), also when the better instance is painted by a later call (streaming)."""
    from mtp_core.inference.instance_merge import Instance

    def combined(*calls):
        rows = InstanceRows(width=12, height=4, grow_px=0)
        classes = np.zeros((4, 12), np.uint8)
        classes[:, :] = 1
        rows.add_semantic(0, classes, np.stack([1.0 - classes, classes]).astype(np.float32))
        for call in calls:
            rows.paint(call)
        (_, values, scores), = rows.ready(4)
        return values[1], scores[1]

    def house(x0: int, columns: list[int], score: float) -> Instance:
        return Instance(0, x0, np.tile(np.array(columns, np.uint8), (4, 1)), score, 0)

    left, right = house(0, [230] * 5, 0.9), house(5, [230] * 5, 0.8)
    row = house(0, [250] * 11, 0.6)  # most of it is the two houses
    values, _ = combined([row, right, left])
    assert len(set(values[:5])) == 1 and len(set(values[5:10])) == 1 and values[0] != values[5]
    assert values[10] == values[11] == 1 << 24  # the row's one free column is not enough: semantic leftovers
    fading = house(0, [250, 250, 250, 200, 140], 0.9)  # overlaps the next house by columns 3 and 4
    rising = house(3, [150, 220, 250, 250, 250], 0.7)
    for calls in (([fading, rising],), ([rising], [fading])):  # the better one first, or in a later call
        values, scores = combined(*calls)
        assert len(set(values[:4])) == 1 and len(set(values[4:8])) == 1 and values[3] != values[4]
        assert list(scores[:8]) == [round(0.9 * 255)] * 4 + [round(0.7 * 255)] * 4
    values, scores = combined([house(3, [230] * 5, 0.7)], [left])  # equal masks: the better score
    assert len(set(values[:5])) == 1 and scores[4] == round(0.9 * 255) and values[5] != values[4]


def test_instance_checkpoint_predicts_instances_and_untrained_decoder_is_refused(tmp_path):
    model = create_model("mtp_vit_tiny_rvsa_upernet_maskrcnn", img_size=64)
    card = _card()
    save_checkpoint(tmp_path / "trained.pth", model, card)
    assert isinstance(Predictor.from_checkpoint(tmp_path / "trained.pth", device="cpu"), InstancePredictor)
    plain = Predictor.from_checkpoint(tmp_path / "trained.pth", device="cpu", instances=False)
    assert type(plain) is Predictor
    save_checkpoint(tmp_path / "new.pth", model, card, untrained=["neck.lateral_convs.0.conv.weight"])
    with pytest.raises(UserError, match="no trained instance decoder.*--semantic-only"):
        Predictor.from_checkpoint(tmp_path / "new.pth", device="cpu")
    with pytest.raises(UserError, match="--compile is for the semantic decoder"):
        InstancePredictor(model, card, device="cpu", compile=True)
    assert "8x test-time augmentation" in InstancePredictor(model, card, device="cpu", tta=True).describe()


def test_predict_cli_with_an_instance_checkpoint(tmp_path, capsys):
    model = create_model("mtp_vit_tiny_rvsa_upernet_maskrcnn", img_size=64)
    with torch.no_grad():  # an untrained box classifier finds a hundred random boxes per tile: make it find none
        model.roi_head.bbox_head.fc_cls.bias.copy_(torch.tensor([-10.0, 10.0]))
    save_checkpoint(tmp_path / "model.pth", model, _card())
    tif = _write_tif(_scene()[:96, :120], tmp_path / "scene.tif")
    assert main(["predict", str(tif), "--checkpoint", str(tmp_path / "model.pth"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--regularize", "--min-area", "2", "--tta"]) == 0
    out = capsys.readouterr().out
    assert "8x test-time augmentation; instances (one polygon per building)" in out
    assert (tmp_path / "out" / "scene_buildings.gpkg").is_file()
    assert main(["predict", str(tif), "--checkpoint", str(tmp_path / "model.pth"), "--out", str(tmp_path / "sem"),
                 "--device", "cpu", "--semantic-only"]) == 0
    assert "instances" not in capsys.readouterr().out.split("\n")[0]


def test_click_returns_the_house_under_the_click_not_the_terrace(oracle, tmp_path):
    from mtp_core.click_instances import InstanceClickSegmenter, segmenter_for

    tif = _write_tif(_scene(), tmp_path / "scene.tif")
    segmenter = segmenter_for(oracle, tif, min_area_m2=1.0, simplify_m=0.0)
    assert isinstance(segmenter, InstanceClickSegmenter)
    for index in (1, 2, 5, 7):  # two houses inside the terrace, one of the pair, the building wider than a tile
        x0, y0, x1, y1 = BUILDINGS[index]
        centre = _on_map(x0, y0, x1, y1).centroid
        click = segmenter.segment_at(centre.x, centre.y)
        assert click.found and click.complete
        expected = _on_map(x0, y0, x1, y1)
        assert shapely.equals_exact(shapely.normalize(click.geometry), shapely.normalize(expected), 1e-6)
        assert click.attributes["score"] == pytest.approx(0.9, abs=1 / 255)
    plain = segmenter_for(Predictor(oracle.model, oracle.card, device="cpu"), tif, min_area_m2=1.0, simplify_m=0.0)
    x0, y0, x1, y1 = BUILDINGS[1]
    terrace = plain.segment_at(*_on_map(x0, y0, x1, y1).centroid.coords[0])
    assert terrace.geometry.area == pytest.approx(_on_map(20, 20, 80, 44).area)  # semantic-only: the whole row
