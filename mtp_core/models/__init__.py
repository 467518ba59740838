"""MTP models: the RVSA ViT backbone, UperNet/FCN heads, the segmentor, the Siamese change detector (UNet head), the
multi-task framework, the Mask R-CNN fine-tuning model, the segmentor with instances and the named-model registry."""
from mtp_core.models.card import ModelCard
from mtp_core.models.change import FeatureFusionNeck, SiamEncoderDecoder, UNetHead
from mtp_core.models.instance_segmentor import InstanceSegmentor
from mtp_core.models.maskrcnn import MaskRCNN
from mtp_core.models.multitask import MultiTaskModel
from mtp_core.models.registry import create_model, default_card, list_models, model_entry
from mtp_core.models.rvsa import RVSAViT
from mtp_core.models.segmentor import EncoderDecoder
from mtp_core.models.upernet import FCNHead, UPerHead

__all__ = [
    "EncoderDecoder",
    "FCNHead",
    "FeatureFusionNeck",
    "InstanceSegmentor",
    "MaskRCNN",
    "ModelCard",
    "MultiTaskModel",
    "RVSAViT",
    "SiamEncoderDecoder",
    "UPerHead",
    "UNetHead",
    "create_model",
    "default_card",
    "list_models",
    "model_entry",
]
