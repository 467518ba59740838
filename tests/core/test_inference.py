"""Tiled, streamed inference: grid geometry, seam-free blending, bounded memory, nodata, progress and cancel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtp_core import inference
from mtp_core.inference import CLASS_NODATA, Predictor
from mtp_core.inference import predictor as predictor_module
from mtp_core.models import EncoderDecoder, ModelCard
from mtp_core.progress import Cancelled
from mtp_core.tiling import MIN_WEIGHT, TileGrid, blend_weights


class LocalHead(nn.Module):
    """A fully convolutional check model (receptive field 7 px): tiling must not change its predictions."""

    num_classes = 2
    align_corners = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 2, 3, padding=1))

    def forward(self, feats):
        return self.net(feats[0])


class TupleIdentity(nn.Module):
    def forward(self, x):
        return (x,)


def predictor(tile: int = 64, overlap: int = 16, batch: int = 4, **kwargs) -> Predictor:
    card = ModelCard("check", tile=tile, overlap=overlap, mean=(128.0,) * 3, std=(64.0,) * 3)
    model = EncoderDecoder(TupleIdentity(), LocalHead())
    return Predictor(model, card, device="cpu", batch_size=batch, **kwargs)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(h // 16 + 2, w // 16 + 2, 3))
    ys, xs = np.linspace(0, low.shape[0] - 1, h), np.linspace(0, low.shape[1] - 1, w)
    img = low[np.round(ys).astype(int)][:, np.round(xs).astype(int)]
    return (img + rng.normal(0, 8, img.shape)).astype(np.float32)


def test_grid_covers_the_raster_with_full_tiles_shifted_inside() -> None:
    grid = TileGrid(height=200, width=150, tile=64, overlap=16)
    assert grid.row_origins == [0, 48, 96, 136] and grid.col_origins == [0, 48, 86]
    covered = np.zeros((200, 150), int)
    for t in grid:
        assert t.y + t.size <= 200 and t.x + t.size <= 150
        covered[t.y : t.y + 64, t.x : t.x + 64] += 1
    assert covered.min() >= 1 and len(grid) == 12
    assert [grid.final_row(r) for r in range(4)] == [48, 96, 136, 200]
    small = TileGrid(height=30, width=40, tile=64, overlap=16)
    assert len(small) == 1 and next(iter(small)).x == 0


@pytest.mark.parametrize(("kwargs", "message"), [(dict(tile=64, overlap=64), "overlap < tile"),
                                                 (dict(tile=0, overlap=0), "tile > 0")])
def test_bad_grids_are_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TileGrid(height=10, width=10, **kwargs)


def test_blend_weights_fall_smoothly_to_the_border_and_never_reach_zero() -> None:
    w = blend_weights(64, 16)
    assert w.shape == (64, 64) and w.min() >= MIN_WEIGHT and w[16:48, 16:48].min() == 1.0
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert np.all(np.diff(w[32, :17]) > 0)  # rising ramp


@pytest.mark.parametrize("overlap", [0, 1, 16, 31, 32, 33, 48, 63])
def test_blend_weights_for_any_overlap_below_the_tile(overlap: int) -> None:
    """Symmetric, never zero, and never falling towards the tile's centre: a tile's own border always counts least,
    also when the ramps of an overlap above half the tile would cross."""
    w = blend_weights(64, overlap)
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1]) and w.min() >= MIN_WEIGHT
    centre_row = w[32]
    assert np.all(np.diff(centre_row[:32]) >= 0) and np.all(np.diff(centre_row[32:]) <= 0)
    if overlap:
        assert centre_row[0] < centre_row[32]


@pytest.mark.parametrize("overlap", [16, 40, 56])
def test_tiling_with_any_overlap_equals_a_whole_image_pass(overlap: int) -> None:
    image = smooth_image(300, 250)
    p = predictor(overlap=overlap)
    classes, _ = p.predict_array(image)
    x = torch.from_numpy(p.normalize(np.moveaxis(image, -1, 0), np.ones(image.shape[:2], bool)))[None]
    with torch.no_grad():
        whole = torch.softmax(p.model(x), 1)[0].numpy()
    assert (classes == whole.argmax(0)).mean() >= 0.995


def test_test_time_augmentation_averages_the_eight_symmetries() -> None:
    """With TTA a prediction turns with the image (the 8 flips and rotations are averaged); without it, this check
    model (not symmetric) does not."""
    image = smooth_image(64, 64, seed=3)
    turned = np.ascontiguousarray(np.rot90(image, 1, axes=(0, 1)))
    for tta in (True, False):
        p = predictor(tta=tta)
        probs = p.predict_array(image)[1]
        probs_turned = p.predict_array(turned)[1]
        same = np.allclose(probs_turned, np.rot90(probs, 1, axes=(1, 2)), atol=1e-5)
        assert same is tta
    assert "8x test-time augmentation" in predictor(tta=True).describe()


def test_cpu_threads_are_set_for_a_run_and_restored_after() -> None:
    seen = []
    p = predictor(threads=1)
    forward = p._forward
    p._forward = lambda x: (seen.append(torch.get_num_threads()), forward(x))[1]
    before = torch.get_num_threads()
    p.predict_array(smooth_image(64, 64))
    assert seen and set(seen) == {1} and torch.get_num_threads() == before


def test_tiled_prediction_equals_a_whole_image_pass_away_from_artefacts() -> None:
    image = smooth_image(300, 250)
    p = predictor()
    classes, probs = p.predict_array(image)
    x = torch.from_numpy(p.normalize(np.moveaxis(image, -1, 0), np.ones(image.shape[:2], bool)))[None]
    with torch.no_grad():
        whole = torch.softmax(p.model(x), 1)[0].numpy()
    agreement = (classes == whole.argmax(0)).mean()
    assert agreement >= 0.995
    assert np.abs(probs - whole).max() < 0.05  # only tile-border pixels see zero padding, and they weigh little


def test_batching_and_prefetch_do_not_change_the_result() -> None:
    image = smooth_image(180, 130, seed=1)
    ref = predictor(batch=1).predict_array(image)
    for batch in (3, 16):
        classes, probs = predictor(batch=batch).predict_array(image)
        assert np.array_equal(classes, ref[0])
        np.testing.assert_allclose(probs, ref[1], atol=1e-6)


def test_memory_follows_width_not_height(monkeypatch) -> None:
    held = []
    original = predictor_module._RowAccumulator._ensure

    def spy(self, bottom):
        original(self, bottom)
        held.append((self.rows, self.weight.shape[0]))

    monkeypatch.setattr(predictor_module._RowAccumulator, "_ensure", spy)
    predictor(batch=4).predict_array(smooth_image(1200, 100))
    # 2 tiles per row, batch 4 (two tile rows per batch): rows are written before the next tile row is added, so one
    # tile's height (64 rows) is all that is ever held, in buffers allocated once
    assert max(rows for rows, _ in held) == 64 and {capacity for _, capacity in held} == {64}


def test_nodata_tiles_are_skipped_and_stay_nodata() -> None:
    image = smooth_image(200, 150)
    valid = np.ones((200, 150), bool)
    valid[:100, :] = False
    valid[150:160, 20:30] = False
    p = predictor()
    sink = inference.ArraySink(200, 150, 2)
    stats = p.run(inference.ArraySource(image, valid), sink, want_probs=True, prefetch=False)
    assert stats.tiles_skipped == 3 and stats.tiles_run + stats.tiles_skipped == stats.tiles_total
    assert (sink.classes[~valid] == CLASS_NODATA).all() and (sink.classes[valid] != CLASS_NODATA).all()


def test_progress_and_cancel_within_one_batch() -> None:
    seen = []
    p = predictor(batch=2)
    p.predict_array(smooth_image(200, 150))  # warm
    with pytest.raises(Cancelled):
        p.run(inference.ArraySource(smooth_image(200, 150)), inference.ArraySink(200, 150, 2),
              progress=seen.append, cancel=lambda: len(seen) >= 2)
    assert [s.done for s in seen] == [2, 4]
    full = []
    p.run(inference.ArraySource(smooth_image(200, 150)), inference.ArraySink(200, 150, 2), progress=full.append)
    assert full[-1].done == full[-1].total == 12 and full[-1].fraction == 1.0


def test_out_of_memory_halves_the_batch_and_goes_on(monkeypatch) -> None:
    p = predictor(batch=8)
    run_model = p._run_model

    def limited(batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run_model(batch)

    image = smooth_image(200, 150)
    ref = predictor(batch=1).predict_array(image)
    monkeypatch.setattr(p, "_run_model", limited)
    classes, _ = p.predict_array(image)
    assert p.batch_size == 2 and np.array_equal(classes, ref[0])


def test_threshold_on_the_building_probability() -> None:
    image = smooth_image(120, 120)
    _, probs = predictor().predict_array(image)
    classes, _ = predictor(threshold=0.7).predict_array(image)
    assert np.array_equal(classes, (probs[1] >= 0.7).astype(np.uint8))
