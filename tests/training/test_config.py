"""Config files and --cfg-options as MMEngine users know them; typos are errors that name the closest key."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.builder import BuildError, LossTerm, build_segmentor, segmentation_loss
from training.config import ConfigError, apply_overrides, load_config, merge
from training.loop import DEFAULTS

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
MTP = sorted(p for p in (CONFIGS / "mtp" / "spacenetv1").glob("*.py") if "maskrcnn" not in p.name)
INSTANCE = sorted((CONFIGS / "mtp" / "spacenetv1").glob("*-maskrcnn-*.py"))


def test_the_four_mtp_spacenet_configs_exist() -> None:
    assert [p.name for p in MTP] == [
        "rvsa-b-upernet-384-mae-mtp-spacenetv1.py",
        "rvsa-b-upernet-384-mae-spacenetv1.py",
        "rvsa-l-upernet-384-mae-mtp-spacenetv1.py",
        "rvsa-l-upernet-384-mae-spacenetv1.py",
    ]


@pytest.mark.parametrize("path", INSTANCE, ids=lambda p: p.stem)
def test_instance_configs_are_the_spacenet_recipe_with_the_pretrained_decoders(path: Path) -> None:
    """rvsa-{b,l}-upernet-maskrcnn: MTP's SpaceNetv1 recipe, with UperNet and Mask R-CNN as wide as pretrained, so
    that a ``convert-ckpt --reuse-decoder semseg+insseg`` file fills the whole model."""
    from mtp_core.models import create_model
    from training.instances import build_instance_segmentor

    assert [p.name for p in INSTANCE] == ["rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py",
                                          "rvsa-l-upernet-maskrcnn-384-mae-mtp-spacenetv1.py"]
    cfg = load_config(path)
    large = "rvsa-l" in path.name
    with torch.device("meta"):
        spec = build_instance_segmentor(cfg["model"])
        named = create_model(f"mtp_vit_{'l' if large else 'b'}_rvsa_upernet_maskrcnn", img_size=384)
    assert (spec.model.backbone.embed_dim, len(spec.model.backbone.blocks)) == ((1024, 24) if large else (768, 12))
    assert spec.model.decode_head.channels == 256 and spec.arch_args["instance_decoder"] == dict(
        channels=256, fc_out_channels=1024)
    shapes = {k: tuple(v.shape) for k, v in spec.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in named.state_dict().items()}
    assert cfg["optim_wrapper"]["optimizer"]["lr"] == 6e-5 and cfg["train_cfg"]["max_iters"] == 80000
    assert cfg["optim_wrapper"]["paramwise_cfg"] == dict(num_layers=24 if large else 12, layer_decay_rate=0.9)


@pytest.mark.parametrize("path", MTP, ids=lambda p: p.stem)
def test_mtp_configs_have_the_original_values(path: Path) -> None:
    cfg = load_config(path)
    large = "rvsa-l" in path.name
    with torch.device("meta"):
        spec = build_segmentor(cfg["model"])
    backbone = spec.model.backbone
    assert (backbone.embed_dim, len(backbone.blocks), backbone.interval) == ((1024, 24, 6) if large else (768, 12, 3))
    assert backbone.out_indices == ((7, 11, 15, 23) if large else (3, 5, 7, 11))
    assert backbone.blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert sum(p.numel() for p in spec.model.parameters()) == (352_380_290 if large else 125_848_898)
    assert spec.model.decode_head.channels == 512 and spec.model.num_classes == 2
    assert spec.sync_bn and spec.losses == (LossTerm("decode", 1.0, False, None),)
    assert (spec.test_mode, spec.crop_size, spec.stride) == ("slide", (384, 384), (256, 256))
    assert ("mae-mtp" in path.name) == ("pretrn_model_encoder" in spec.pretrained)
    assert cfg["optim_wrapper"]["optimizer"] == dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg["optim_wrapper"]["paramwise_cfg"] == dict(num_layers=24 if large else 12, layer_decay_rate=0.9)
    assert cfg["train_cfg"]["max_iters"] == 80000 and cfg["train_dataloader"]["batch_size"] == 1
    assert cfg["param_scheduler"][1]["T_max"] == 78500


def test_the_seed_overrides_work() -> None:
    cfg = merge(DEFAULTS, load_config(MTP[0]))
    out = apply_overrides(cfg, ["find_unused_parameters=True", "load_from=/ckpt/x.pth", "val_cfg=None",
                                "val_dataloader=None", "val_evaluator=None", "train_cfg.max_iters=100",
                                "model.decode_head.num_classes=3", "optim_wrapper.optimizer.betas=(0.8,0.99)"])
    assert out["find_unused_parameters"] is True and out["load_from"] == "/ckpt/x.pth"
    assert out["val_dataloader"] is None and out["val_evaluator"] is None and out["val_cfg"] is None
    assert out["train_cfg"]["max_iters"] == 100 and out["model"]["decode_head"]["num_classes"] == 3
    assert out["optim_wrapper"]["optimizer"]["betas"] == (0.8, 0.99)
    assert cfg["train_cfg"]["max_iters"] == 80000  # the input is not modified


@pytest.mark.parametrize(
    ("option", "suggestion"),
    [
        ("train_cfg.max_iter=10", "train_cfg.max_iters"),
        ("model.decode_head.num_clases=3", "model.decode_head.num_classes"),
        ("find_unused_parameter=True", "find_unused_parameters"),
        ("optim_wraper.optimizer.lr=1", "optim_wrapper"),
    ],
)
def test_a_typo_names_the_closest_key(option: str, suggestion: str) -> None:
    cfg = merge(DEFAULTS, load_config(MTP[0]))
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        apply_overrides(cfg, [option])


def test_base_inheritance_and_delete(tmp_path: Path) -> None:
    (tmp_path / "base.py").write_text("a = dict(x=1, y=dict(z=2))\nb = [1, 2]\n")
    (tmp_path / "child.py").write_text("_base_ = ['base.py']\na = dict(y=dict(w=3))\nc = dict(_delete_=True, k=1)\n")
    (tmp_path / "grand.py").write_text("_base_ = 'child.py'\na = dict(_delete_=True, only=0)\n")
    assert load_config(tmp_path / "child.py") == {"a": {"x": 1, "y": {"z": 2, "w": 3}}, "b": [1, 2], "c": {"k": 1}}
    assert load_config(tmp_path / "grand.py")["a"] == {"only": 0}


def test_a_broken_config_says_where(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("model = dict(\n")
    with pytest.raises(ConfigError, match="bad.py failed to run: SyntaxError"):
        load_config(tmp_path / "bad.py")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.py")


def test_unsupported_model_arguments_are_explained() -> None:
    cfg = load_config(MTP[0])
    bad = merge(cfg["model"], {"backbone": {"embed_dims": 768}})
    with pytest.raises(BuildError, match="did you mean 'embed_dim'"):
        build_segmentor(bad)
    with pytest.raises(BuildError, match="use_abs_pos_emb"):
        build_segmentor(merge(cfg["model"], {"backbone": {"use_abs_pos_emb": False}}))
    with pytest.raises(BuildError, match="CrossEntropyLoss"):
        build_segmentor(merge(cfg["model"], {"decode_head": {"loss_decode": {"type": "DiceLoss"}}}))


def test_loss_is_mmseg_cross_entropy_over_all_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 4, 4))
    target[0, 0] = 255
    total, parts = segmentation_loss(logits, None, target, (LossTerm("decode"),))
    per_pixel = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(total, per_pixel.sum() / target.numel())  # ignored pixels count in the mean (MMSeg)
    non_ignore, _ = segmentation_loss(logits, None, target, (LossTerm("decode", avg_non_ignore=True),))
    assert torch.allclose(non_ignore, per_pixel.sum() / (target != 255).sum())
    valid = target != 255
    expected_acc = 100.0 * ((logits.argmax(1) == target) & valid).sum() / valid.sum()
    assert torch.allclose(parts["decode.acc_seg"], expected_acc)


def test_an_option_below_a_replaced_dict_says_what_happened() -> None:
    cfg = merge(DEFAULTS, load_config(MTP[0]))
    with pytest.raises(ConfigError, match=r"val_dataloader.num_workers=0: val_dataloader is None here \(set by the "
                                          r"config or an earlier option\), not a dict"):
        apply_overrides(cfg, ["val_dataloader=None", "val_dataloader.num_workers=0"])


@pytest.mark.parametrize(
    ("option", "where"),
    [
        ("lr_config.warmup_iters=1500", "param_scheduler: the 'end' of a LinearLR warm-up"),
        ("data.samples_per_gpu=2", "train_dataloader.batch_size"),
        ("runner.max_iters=10", "train_cfg.max_iters"),
        ("optimizer_config.grad_clip.max_norm=35", "optim_wrapper.clip_grad"),
        ("checkpoint_config.interval=100", "default_hooks.checkpoint.interval"),
    ],
)
def test_mmseg0_keys_name_their_mmseg1_place(option: str, where: str) -> None:
    cfg = merge(DEFAULTS, load_config(MTP[0]))
    with pytest.raises(ConfigError, match=rf"{option.split('=')[0]!r} is an MMSeg 0.x key; MMSeg 1.x configs \(and "
                                          rf"this project\) use {where}"):
        apply_overrides(cfg, [option])


def test_a_config_file_with_mmseg0_keys_is_refused(tmp_path: Path) -> None:
    from training.train import build_parser, resolve_config

    (tmp_path / "old.py").write_text(f"_base_ = {str(MTP[0])!r}\nrunner = dict(type='IterBasedRunner', "
                                     "max_iters=80000)\nlr_config = dict(policy='poly', warmup_iters=1500)\n")
    with pytest.raises(ConfigError, match="MMSeg 0.x keys.*runner -> train_cfg.*lr_config -> param_scheduler"):
        resolve_config(build_parser().parse_args([str(tmp_path / "old.py")]))


def test_amp_flag_sets_the_wrapper_as_mmseg_train_py(tmp_path: Path) -> None:
    from training.train import build_parser, resolve_config

    cfg = resolve_config(build_parser().parse_args([str(MTP[0]), "--amp"]))
    assert cfg["optim_wrapper"]["type"] == "AmpOptimWrapper" and cfg["optim_wrapper"]["loss_scale"] == "dynamic"
    assert cfg["optim_wrapper"]["optimizer"]["lr"] == 6e-5  # the rest kept
    (tmp_path / "clip.py").write_text(f"_base_ = {str(MTP[0])!r}\noptim_wrapper = dict(clip_grad=dict(max_norm=35))\n")
    clipped = resolve_config(build_parser().parse_args([str(tmp_path / "clip.py"), "--amp"]))
    assert clipped["optim_wrapper"]["clip_grad"] == {"max_norm": 35}
    with pytest.raises(ConfigError, match="--amp needs optim_wrapper type 'OptimWrapper'"):
        resolve_config(build_parser().parse_args([str(MTP[0]), "--amp", "--cfg-options",
                                                  "optim_wrapper.type=ApexOptimWrapper"]))


def test_wrapper_settings_configs_leave_out_can_be_set_from_the_command_line() -> None:
    from training.loop import OPTIONAL_KEYS

    cfg = merge(DEFAULTS, load_config(MTP[0]))
    cfg["optim_wrapper"]["clip_grad"] = None  # as MMSeg 1.x's schedule files write it
    out = apply_overrides(cfg, ["optim_wrapper.clip_grad.max_norm=35", "optim_wrapper.dtype=bfloat16",
                                "optim_wrapper.accumulative_counts=2"], OPTIONAL_KEYS)
    assert out["optim_wrapper"]["clip_grad"] == {"max_norm": 35} and out["optim_wrapper"]["dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match="did you mean 'optim_wrapper.dtype'"):
        apply_overrides(cfg, ["optim_wrapper.dtpye=bfloat16"], OPTIONAL_KEYS)
