"""Named MTP models, timm style: each builder only sets hyperparameters.

Every builder is registered here and with timm, so ``import mtp_core.models; timm.create_model("mtp_vit_b_rvsa")``
builds exactly the backbone of the original SpaceNetv1 fine-tuning config, and
``create_model("mtp_vit_b_rvsa_upernet")`` the whole segmentor. Segmentors also have a default model card (the
config's data conventions).

Backbones are built through timm's ``build_model_with_cfg``, so timm's options work on them: ``features_only=True``
(the four maps through ``forward_intermediates``), a ``pretrained_cfg`` (MTP's mean/std, 384 px input), released
weights with ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` (``custom_load``: the safe loader of
:mod:`mtp_core.checkpoint`, any MTP / MAE / MMSeg layout) and ``checkpoint_path=PATH`` (timm's weights-only loader,
then the same key remapping and resizing). ``create_model("mtp_vit_b_rvsa_multitask")`` builds the multi-task
pretraining framework in the released layout, ``create_model("mtp_vit_b_rvsa_maskrcnn")`` the Mask R-CNN that its
instance decoder initialises, ``create_model("mtp_vit_b_rvsa_upernet_maskrcnn")`` the segmentor with instances that
both its decoders initialise (buildings that touch come out one by one), ``create_model("mtp_vit_b_rvsa_unet_cd")``
MTP's change detector.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, Union

from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as timm_register_model
from torch import nn

from mtp_core.models.card import ModelCard
from mtp_core.models.change import FeatureFusionNeck, SiamEncoderDecoder, UNetHead
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.models.maskrcnn import MaskRCNN
from mtp_core.models.multitask import SAMRS_DATASETS, DatasetSpec, MultiTaskModel
from mtp_core.models.rvsa import RVSAViT
from mtp_core.models.segmentor import EncoderDecoder
from mtp_core.models.upernet import FCNHead, UPerHead

ModelKind = Literal["backbone", "segmentor", "multitask", "instance", "change"]
_TIMM_ONLY_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_MEAN = tuple(v / 255.0 for v in (123.675, 116.28, 103.53))  # MTP's (MMSeg's) normalization, on timm's 0-1 scale
_STD = tuple(v / 255.0 for v in (58.395, 57.12, 57.375))


def _cfg(size: int, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained config: no download URL (released files are loaded from disk: ``file=``), custom loader."""
    return dict(url="", custom_load=True, num_classes=-1, input_size=(3, size, size), mean=_MEAN, std=_STD,
                first_conv="patch_embed.proj", classifier=None, paper_ids="arXiv:2403.13430",
                paper_name="MTP: Advancing Remote Sensing Foundation Model via Multi-Task Pretraining", **kwargs)


#: read by timm's register_model, so timm.create_model knows each backbone's defaults
default_cfgs = generate_default_cfgs({
    "mtp_vit_b_rvsa": _cfg(384), "mtp_vit_l_rvsa": _cfg(384), "mtp_vit_b_rvsa_pretrain": _cfg(224),
    "mtp_vit_l_rvsa_pretrain": _cfg(448), "mtp_vit_tiny_rvsa": _cfg(384),
})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    kind: ModelKind
    description: str


_MODELS: dict[str, ModelEntry] = {}


def _register(kind: ModelKind, description: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = ModelEntry(fn.__name__, fn, kind, description)
        return timm_register_model(fn)

    return wrap


def list_models(kind: ModelKind | None = None) -> list[str]:
    """Registered model names, optionally only those of one kind (backbones, segmentors, multi-task frameworks)."""
    return sorted(n for n, e in _MODELS.items() if kind is None or e.kind == kind)


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; keyword arguments override the builder's defaults."""
    return model_entry(name).builder(**kwargs)


def _check_pretrained(pretrained: bool, kwargs: dict[str, Any]) -> None:
    for key in _TIMM_ONLY_ARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise ValueError(
            "MTP weights are not downloaded automatically: get the released checkpoint file and load it with "
            "mtp_core.checkpoint.load_weights(model, path) (every MTP, MAE and MMSeg layout is understood)"
        )


def _backbone(variant: str, pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> RVSAViT:
    """A backbone through timm's builder (pretrained config, ``features_only``, custom weight loading)."""
    overlay, cfg = kwargs.get("pretrained_cfg_overlay") or {}, kwargs.get("pretrained_cfg")
    if pretrained and not (overlay.get("file") or (isinstance(cfg, dict) and cfg.get("file"))):
        raise ValueError(
            "MTP weights are not downloaded automatically: get the released checkpoint file and pass it, "
            "timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH)), or load it with "
            "mtp_core.checkpoint.load_weights(model, path) (every MTP, MAE and MMSeg layout is understood)"
        )
    if overlay.get("file"):  # timm resets custom_load for a new file: ours reads every layout, native ones too
        kwargs["pretrained_cfg_overlay"] = {"custom_load": True, **overlay}
    params = {**defaults, **kwargs}
    if params.get("features_only"):  # timm's out_indices: which of the four maps (MTP's: which blocks feed them)
        blocks = defaults["out_indices"]
        params.setdefault("out_indices", (0, 1, 2, 3)) if "out_indices" in kwargs else params.pop("out_indices")
    else:
        blocks = params.pop("out_indices")
    return build_model_with_cfg(functools.partial(RVSAViT, out_indices=blocks), variant, pretrained,
                                feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)),
                                kwargs_filter=("num_classes", "global_pool"), **params)


def _segmentor_backbone(pretrained: bool, defaults: dict[str, Any], kwargs: dict[str, Any]) -> RVSAViT:
    """The backbone of a segmentor or multi-task model: their weights are whole-model files (mtp_core.checkpoint)."""
    _check_pretrained(pretrained, kwargs)
    return RVSAViT(**{**defaults, **kwargs})


_VIT_B = dict(embed_dim=768, depth=12, num_heads=12, out_indices=(3, 5, 7, 11), interval=3)
_VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, out_indices=(7, 11, 15, 23), interval=6)
_VIT_TINY = dict(embed_dim=192, depth=4, num_heads=3, out_indices=(0, 1, 2, 3), interval=3)
_FINETUNE = dict(img_size=384, drop_path_rate=0.3)
_PRETRAIN = dict(drop_path_rate=0.1, with_norm=True)  # the multi-task pretraining encoder (ViT_Win_RVSA_V3_WSZ7)


@_register("backbone", "ViT-B + RVSA, SpaceNetv1 fine-tuning backbone (384 px, full attention every 3rd block)")
def mtp_vit_b_rvsa(pretrained: bool = False, **kwargs: Any) -> RVSAViT:
    return _backbone("mtp_vit_b_rvsa", pretrained, {**_VIT_B, **_FINETUNE}, kwargs)


@_register("backbone", "ViT-L + RVSA, SpaceNetv1 fine-tuning backbone (384 px, full attention every 6th block)")
def mtp_vit_l_rvsa(pretrained: bool = False, **kwargs: Any) -> RVSAViT:
    return _backbone("mtp_vit_l_rvsa", pretrained, {**_VIT_L, **_FINETUNE}, kwargs)


@_register("backbone", "ViT-B + RVSA multi-task pretraining encoder (224 px, with the unused final norm)")
def mtp_vit_b_rvsa_pretrain(pretrained: bool = False, **kwargs: Any) -> RVSAViT:
    return _backbone("mtp_vit_b_rvsa_pretrain", pretrained, {**_VIT_B, **_PRETRAIN, "img_size": 224}, kwargs)


@_register("backbone", "ViT-L + RVSA multi-task pretraining encoder (448 px, with the unused final norm)")
def mtp_vit_l_rvsa_pretrain(pretrained: bool = False, **kwargs: Any) -> RVSAViT:
    return _backbone("mtp_vit_l_rvsa_pretrain", pretrained, {**_VIT_L, **_PRETRAIN, "img_size": 448}, kwargs)


@_register("backbone", "tiny RVSA ViT (192-d, 4 blocks, 3 heads) for tests and CPU demos")
def mtp_vit_tiny_rvsa(pretrained: bool = False, **kwargs: Any) -> RVSAViT:
    return _backbone("mtp_vit_tiny_rvsa", pretrained, {**_VIT_TINY, **_FINETUNE}, kwargs)


def _upernet(
    pretrained: bool,
    backbone_defaults: dict[str, Any],
    num_classes: int,
    decode_channels: int,
    aux_head: bool,
    aux_channels: int,
    kwargs: dict[str, Any],
) -> EncoderDecoder:
    """UperNet on the four backbone maps (+ optional FCN auxiliary head on the stride-16 map, as MMSeg configs)."""
    backbone = _segmentor_backbone(pretrained, backbone_defaults, kwargs)
    head = UPerHead(backbone.out_channels, decode_channels, num_classes)
    aux = FCNHead(backbone.out_channels[2], aux_channels, num_classes, in_index=2) if aux_head else None
    return EncoderDecoder(backbone, head, aux)


@_register("segmentor", "ViT-B + RVSA + UperNet (512 ch), the MTP SpaceNetv1 model")
def mtp_vit_b_rvsa_upernet(
    pretrained: bool = False,
    num_classes: int = 2,
    decode_channels: int = 512,
    aux_head: bool = False,
    aux_channels: int = 256,
    **kwargs: Any,
) -> EncoderDecoder:
    return _upernet(pretrained, {**_VIT_B, **_FINETUNE}, num_classes, decode_channels, aux_head, aux_channels, kwargs)


@_register("segmentor", "ViT-L + RVSA + UperNet (512 ch), the MTP SpaceNetv1 model")
def mtp_vit_l_rvsa_upernet(
    pretrained: bool = False,
    num_classes: int = 2,
    decode_channels: int = 512,
    aux_head: bool = False,
    aux_channels: int = 256,
    **kwargs: Any,
) -> EncoderDecoder:
    return _upernet(pretrained, {**_VIT_L, **_FINETUNE}, num_classes, decode_channels, aux_head, aux_channels, kwargs)


@_register("segmentor", "tiny RVSA ViT + UperNet (64 ch) for tests and CPU demos")
def mtp_vit_tiny_rvsa_upernet(
    pretrained: bool = False,
    num_classes: int = 2,
    decode_channels: int = 64,
    aux_head: bool = False,
    aux_channels: int = 32,
    **kwargs: Any,
) -> EncoderDecoder:
    backbone = {**_VIT_TINY, **_FINETUNE}
    return _upernet(pretrained, backbone, num_classes, decode_channels, aux_head, aux_channels, kwargs)


def default_card(name: str, **arch_args: Any) -> ModelCard:
    """The model card of a named segmentor with MTP's SpaceNetv1 data conventions, of a named change detector with
    its LEVIR-CD conventions (256 px tiles at 0.5 m, classes unchanged/changed), or of a Mask R-CNN (background
    first, then its ``num_classes`` object classes); released files carry none."""
    entry = model_entry(name)
    if entry.kind == "instance":
        objects = arch_args.get("num_classes", 1)
        classes = ("building",) if objects == 1 else tuple(f"class_{i}" for i in range(objects))
        return ModelCard(architecture=name, arch_args=dict(arch_args), classes=("background", *classes),
                         description=entry.description)
    if entry.kind not in ("segmentor", "change"):
        models = ", ".join(list_models("segmentor") + list_models("change"))
        raise ValueError(f"{name!r} is a {entry.kind}; a model card describes a segmentor or change detector "
                         f"({models})")
    num_classes = arch_args.get("num_classes", 2)
    if entry.kind == "change":
        classes = ("unchanged", "changed") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes))
        size = int(arch_args.get("img_size", _CD["img_size"]))
        return ModelCard(architecture=name, arch_args=dict(arch_args), classes=classes, tile=size, overlap=size // 4,
                         description=entry.description)
    classes = ("background", "building") if num_classes == 2 else tuple(f"class_{i}" for i in range(num_classes))
    return ModelCard(architecture=name, arch_args=dict(arch_args), classes=classes, description=entry.description)


@_register("segmentor", "RVSA ViT + UperNet (+ FCN auxiliary head) with every argument given: what configs build")
def mtp_rvsa_upernet(
    pretrained: bool = False,
    backbone: dict[str, Any] | None = None,
    decode_head: dict[str, Any] | None = None,
    auxiliary_head: dict[str, Any] | None = None,
    **kwargs: Any,
) -> EncoderDecoder:
    """Fully specified segmentor: ``RVSAViT(**backbone)``, ``UPerHead(**decode_head)``, ``FCNHead(**auxiliary_head)``.

    Training configs build this, and its model card records the three dicts, so a trained checkpoint rebuilds its
    exact network without the config file. Defaults are the ViT-B SpaceNetv1 model.
    """
    net = _segmentor_backbone(pretrained, {**_VIT_B, **_FINETUNE, **(backbone or {})}, kwargs)
    head = UPerHead(**{"in_channels": net.out_channels, "channels": 512, "num_classes": 2, **(decode_head or {})})
    aux = FCNHead(**auxiliary_head) if auxiliary_head else None
    return EncoderDecoder(net, head, aux)


_CD = dict(img_size=256, drop_path_rate=0.3, with_norm=True, apply_fpn=False)  # Open-CD's copy of RVSA_MTP
_UNET = dict(decoder_channels=(512, 256, 128, 64), channels=64)


def _unet_cd(pretrained: bool, backbone_defaults: dict[str, Any], num_classes: int, decoder_channels: Sequence[int],
             channels: int, kwargs: dict[str, Any]) -> SiamEncoderDecoder:
    """MTP's change detector: the CD backbone on both dates, ``|f_A - f_B|``, MTP's UNet head."""
    backbone = _segmentor_backbone(pretrained, backbone_defaults, kwargs)
    head = UNetHead(backbone.out_channels, tuple(decoder_channels), channels, num_classes)
    return SiamEncoderDecoder(backbone, FeatureFusionNeck("abs_diff"), head)


@_register("change", "ViT-B + RVSA + UNet change detector (256 px, |A-B| fusion), MTP's LEVIR/WHU/CDD model")
def mtp_vit_b_rvsa_unet_cd(
    pretrained: bool = False,
    num_classes: int = 2,
    decoder_channels: Sequence[int] = _UNET["decoder_channels"],
    channels: int = _UNET["channels"],
    **kwargs: Any,
) -> SiamEncoderDecoder:
    return _unet_cd(pretrained, {**_VIT_B, **_CD}, num_classes, decoder_channels, channels, kwargs)


@_register("change", "ViT-L + RVSA + UNet change detector (256 px, |A-B| fusion), MTP's LEVIR/WHU/CDD model")
def mtp_vit_l_rvsa_unet_cd(
    pretrained: bool = False,
    num_classes: int = 2,
    decoder_channels: Sequence[int] = _UNET["decoder_channels"],
    channels: int = _UNET["channels"],
    **kwargs: Any,
) -> SiamEncoderDecoder:
    return _unet_cd(pretrained, {**_VIT_L, **_CD}, num_classes, decoder_channels, channels, kwargs)


@_register("change", "tiny RVSA ViT + UNet (64-16 ch) change detector for tests and CPU demos")
def mtp_vit_tiny_rvsa_unet_cd(
    pretrained: bool = False,
    num_classes: int = 2,
    decoder_channels: Sequence[int] = (64, 32, 16, 16),
    channels: int = 16,
    **kwargs: Any,
) -> SiamEncoderDecoder:
    return _unet_cd(pretrained, {**_VIT_TINY, **_CD}, num_classes, decoder_channels, channels, kwargs)


@_register("change", "RVSA ViT + UNet change detector with every argument given: what configs build")
def mtp_rvsa_unet_cd(
    pretrained: bool = False,
    backbone: dict[str, Any] | None = None,
    neck: dict[str, Any] | None = None,
    decode_head: dict[str, Any] | None = None,
    **kwargs: Any,
) -> SiamEncoderDecoder:
    """Fully specified change detector: ``RVSAViT(**backbone)`` (the CD copy unless overridden),
    ``FeatureFusionNeck(**neck)`` (``abs_diff`` by default) and ``UNetHead(**decode_head)``; training configs build
    this and its model card records the dicts. Defaults are the ViT-B LEVIR-CD model."""
    net = _segmentor_backbone(pretrained, {**_VIT_B, **_CD, **(backbone or {})}, kwargs)
    head = UNetHead(**{"encoder_channels": net.out_channels, **_UNET, "num_classes": 2, **(decode_head or {})})
    return SiamEncoderDecoder(net, FeatureFusionNeck(**{"policy": "abs_diff", **(neck or {})}), head)


TaskSpecDatasets = Sequence[Union[DatasetSpec, tuple[str, int]]]


def _multitask(
    pretrained: bool,
    encoder_defaults: dict[str, Any],
    datasets: TaskSpecDatasets,
    tasks: Sequence[str],
    background: bool,
    decoder_args: dict[str, dict[str, Any]] | None,
    kwargs: dict[str, Any],
) -> MultiTaskModel:
    encoder = _segmentor_backbone(pretrained, encoder_defaults, kwargs)  # whole-model weights, as segmentors
    return MultiTaskModel(encoder, datasets, tasks, background, decoder_args)


@_register("multitask", "ViT-B + RVSA multi-task pretraining framework (224 px; SAMRS SOTA/SIOR/FAST heads)")
def mtp_vit_b_rvsa_multitask(
    pretrained: bool = False,
    datasets: TaskSpecDatasets = SAMRS_DATASETS,
    tasks: Sequence[str] = ("ss", "is"),
    background: bool = True,
    decoder_args: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> MultiTaskModel:
    """MTP's released ViT-B framework; ``datasets``/``tasks``/``background`` as the original's arguments."""
    encoder = {**_VIT_B, **_PRETRAIN, "img_size": 224}
    return _multitask(pretrained, encoder, datasets, tasks, background, decoder_args, kwargs)


@_register("multitask", "ViT-L + RVSA multi-task pretraining framework (448 px; SAMRS SOTA/SIOR/FAST heads)")
def mtp_vit_l_rvsa_multitask(
    pretrained: bool = False,
    datasets: TaskSpecDatasets = SAMRS_DATASETS,
    tasks: Sequence[str] = ("ss", "is"),
    background: bool = True,
    decoder_args: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> MultiTaskModel:
    """MTP's released ViT-L framework; ``datasets``/``tasks``/``background`` as the original's arguments."""
    encoder = {**_VIT_L, **_PRETRAIN, "img_size": 448}
    return _multitask(pretrained, encoder, datasets, tasks, background, decoder_args, kwargs)


_TINY_DECODERS = {"ss": {"channels": 64}, "is": {"channels": 32, "fc_out_channels": 128}}


@_register("multitask", "tiny RVSA ViT multi-task framework (128 px, narrow decoders) for tests and CPU demos")
def mtp_vit_tiny_rvsa_multitask(
    pretrained: bool = False,
    datasets: TaskSpecDatasets = SAMRS_DATASETS,
    tasks: Sequence[str] = ("ss", "is"),
    background: bool = True,
    decoder_args: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> MultiTaskModel:
    """Same structure as the released framework with a tiny encoder, a 64-channel UperNet and a 32-channel Mask R-CNN
    with 128-wide box FCs."""
    if decoder_args is None:
        decoder_args = {t: a for t, a in _TINY_DECODERS.items() if t in tasks}
    encoder = {**_VIT_TINY, **_PRETRAIN, "img_size": 128}
    return _multitask(pretrained, encoder, datasets, tasks, background, decoder_args, kwargs)


def _maskrcnn(pretrained: bool, backbone_defaults: dict[str, Any], num_classes: int, channels: int,
              fc_out_channels: int, kwargs: dict[str, Any]) -> MaskRCNN:
    backbone = _segmentor_backbone(pretrained, backbone_defaults, kwargs)  # whole-model weights, as segmentors
    return MaskRCNN(backbone, num_classes, channels, fc_out_channels)


@_register("instance", "ViT-B + RVSA + Mask R-CNN (mmdet names), fine-tuned from MTP's instance decoder")
def mtp_vit_b_rvsa_maskrcnn(pretrained: bool = False, num_classes: int = 1, channels: int = 256,
                            fc_out_channels: int = 1024, **kwargs: Any) -> MaskRCNN:
    return _maskrcnn(pretrained, {**_VIT_B, **_FINETUNE}, num_classes, channels, fc_out_channels, kwargs)


@_register("instance", "ViT-L + RVSA + Mask R-CNN (mmdet names), fine-tuned from MTP's instance decoder")
def mtp_vit_l_rvsa_maskrcnn(pretrained: bool = False, num_classes: int = 1, channels: int = 256,
                            fc_out_channels: int = 1024, **kwargs: Any) -> MaskRCNN:
    return _maskrcnn(pretrained, {**_VIT_L, **_FINETUNE}, num_classes, channels, fc_out_channels, kwargs)


@_register("instance", "tiny RVSA ViT + narrow Mask R-CNN (32 ch, 128-wide box FCs) for tests and CPU demos")
def mtp_vit_tiny_rvsa_maskrcnn(pretrained: bool = False, num_classes: int = 1, channels: int = 32,
                               fc_out_channels: int = 128, **kwargs: Any) -> MaskRCNN:
    return _maskrcnn(pretrained, {**_VIT_TINY, **_FINETUNE}, num_classes, channels, fc_out_channels, kwargs)


def _upernet_maskrcnn(pretrained: bool, backbone_defaults: dict[str, Any], num_classes: int, decode_channels: int,
                      channels: int, fc_out_channels: int, kwargs: dict[str, Any]) -> InstanceSegmentor:
    backbone = _segmentor_backbone(pretrained, backbone_defaults, kwargs)
    head = UPerHead(backbone.out_channels, decode_channels, num_classes)
    return InstanceSegmentor(backbone, head, None, channels, fc_out_channels)


@_register("segmentor", "ViT-B + RVSA + UperNet (256 ch) + Mask R-CNN: buildings and one instance per building")
def mtp_vit_b_rvsa_upernet_maskrcnn(pretrained: bool = False, num_classes: int = 2, decode_channels: int = 256,
                                    channels: int = 256, fc_out_channels: int = 1024,
                                    **kwargs: Any) -> InstanceSegmentor:
    """MTP's pretrained decoders' widths (UperNet 256, FPN 256, box FCs 1024); ``num_classes`` semantic classes,
    background included (the instances are the other classes)."""
    return _upernet_maskrcnn(pretrained, {**_VIT_B, **_FINETUNE}, num_classes, decode_channels, channels,
                             fc_out_channels, kwargs)


@_register("segmentor", "ViT-L + RVSA + UperNet (256 ch) + Mask R-CNN: buildings and one instance per building")
def mtp_vit_l_rvsa_upernet_maskrcnn(pretrained: bool = False, num_classes: int = 2, decode_channels: int = 256,
                                    channels: int = 256, fc_out_channels: int = 1024,
                                    **kwargs: Any) -> InstanceSegmentor:
    return _upernet_maskrcnn(pretrained, {**_VIT_L, **_FINETUNE}, num_classes, decode_channels, channels,
                             fc_out_channels, kwargs)


@_register("segmentor", "tiny RVSA ViT + UperNet (64 ch) + Mask R-CNN (32 ch) for tests and CPU demos")
def mtp_vit_tiny_rvsa_upernet_maskrcnn(pretrained: bool = False, num_classes: int = 2, decode_channels: int = 64,
                                       channels: int = 32, fc_out_channels: int = 128,
                                       **kwargs: Any) -> InstanceSegmentor:
    """The tiny multi-task framework's decoder widths, so its pretraining files convert into it."""
    return _upernet_maskrcnn(pretrained, {**_VIT_TINY, **_FINETUNE}, num_classes, decode_channels, channels,
                             fc_out_channels, kwargs)


@_register("segmentor", "RVSA ViT + UperNet + Mask R-CNN with every argument given: what instance configs build")
def mtp_rvsa_upernet_maskrcnn(
    pretrained: bool = False,
    backbone: dict[str, Any] | None = None,
    decode_head: dict[str, Any] | None = None,
    auxiliary_head: dict[str, Any] | None = None,
    instance_decoder: dict[str, Any] | None = None,
    **kwargs: Any,
) -> InstanceSegmentor:
    """Fully specified segmentor with instances: :func:`mtp_rvsa_upernet`'s three dicts plus ``instance_decoder``
    (``channels``, ``fc_out_channels``, ``anchor_scale``); its model card records them all. Defaults are the ViT-B
    model."""
    seg = mtp_rvsa_upernet(pretrained, backbone, {"channels": 256, **(decode_head or {})}, auxiliary_head, **kwargs)
    return InstanceSegmentor(seg.backbone, seg.decode_head, seg.auxiliary_head, **(instance_decoder or {}))
