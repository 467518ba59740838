# The embedded demo model: a small RVSA ViT + UperNet trained from scratch on CPU on synthetic 0.5 m scenes
# (mtp_tools.synthetic, `mtp synth`). Same structure as MTP's SpaceNetv1 configs, scaled down to train in under
# 30 minutes on 2 cores.
# Reproduce (README, "The demo model"):
#   mtp synth data/synthetic/train --count 48 --size 512 --seed 1000 --layout spacenet --name synthetic
#   mtp synth data/synthetic/val --count 6 --size 512 --seed 9000 --layout spacenet --name synthetic
#   python -m training.train training/configs/demo/rvsa-tiny-upernet-256-synthetic.py --work-dir work_dirs/demo
norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (256, 256)
data_preprocessor = dict(
    type='SegDataPreProcessor', size=crop_size, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='RVSA_MTP', img_size=256, patch_size=16, drop_path_rate=0.1, out_indices=[0, 1, 2, 3], embed_dim=128,
        depth=4, num_heads=2, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
        use_checkpoint=False, use_abs_pos_emb=True, pretrained=None),
    decode_head=dict(
        type='UPerHead', in_channels=[128, 128, 128, 128], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
        channels=64, dropout_ratio=0.1, num_classes=2, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(256, 256), stride=(192, 192)))
model_card = dict(gsd_m=0.5, description='demo model: tiny RVSA ViT + UperNet trained on synthetic 0.5 m scenes')

dataset_type = 'SpaceNetV1RawDataset'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 512), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root='data/synthetic/train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root='data/synthetic/val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=4, layer_decay_rate=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=1400, begin=100, end=1500, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1500, val_interval=500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2))
randomness = dict(seed=0)
load_from = None
resume = False
