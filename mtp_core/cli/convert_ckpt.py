"""``mtp convert-ckpt``: a released MTP/MAE/MMSeg checkpoint -> a complete fine-tuning checkpoint (or MMRotate's)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert-ckpt",
        help="turn a released MTP/MAE/MMSeg checkpoint into a complete fine-tuning checkpoint (with model card)",
        description="Reads any MTP, MAE or MMSeg checkpoint layout safely (weights_only) and writes it atomically. "
        "none: backbone weights, resized to the fine-tuning size; semseg: also the pretrained UperNet decoder "
        "(256 channels); insseg: a Mask R-CNN checkpoint (mmdet names: backbone., neck., rpn_head., roi_head.) from "
        "the pretrained instance decoder; semseg+insseg: a segmentor with instances (UperNet + Mask R-CNN: one polygon "
        "per building) from both pretrained decoders; rotdet: the key renaming of MTP's scripts/change_ckpt.py, for "
        "MMRotate.",
    )
    parser.add_argument("src", help="input checkpoint (.pth)")
    parser.add_argument("dst", help="output checkpoint (.pth); written atomically")
    parser.add_argument("--reuse-decoder", choices=("none", "semseg", "insseg", "semseg+insseg", "rotdet"),
                        default="none")
    parser.add_argument("--arch", default=None, help="target segmentor name (default: inferred from the weights)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the target head (default: the file's class count, else 2; insseg: object "
                             "classes, default 1)")
    parser.add_argument("--dataset", default=None,
                        help="insseg: also take this pretraining dataset's predictors as fc_cls/fc_reg/conv_logits "
                             "(sota, sior, fast for the released files, or the 1-based index of the dataset heads); "
                             "semseg+insseg: also its semantic classifier (its classes must be the model's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtp_core.checkpoint import convert_checkpoint

    report = convert_checkpoint(
        args.src, args.dst, reuse_decoder=args.reuse_decoder, architecture=args.arch, num_classes=args.num_classes,
        dataset=args.dataset,
    )
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0
