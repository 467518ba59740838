# The embedded demo instance model: the demo segmentor (rvsa-tiny-upernet-256-synthetic.py: a small RVSA ViT +
# UperNet trained on synthetic 0.5 m scenes) with a narrow Mask R-CNN decoder on the same encoder, fine-tuned on CPU
# on synthetic scenes where about half the buildings share a wall (mtp synth --touching), so touching buildings come
# out as separate polygons. Initialised from the demo segmentor: encoder and UperNet trained, the instance decoder
# new. Same structure as ../mtp/spacenetv1/rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py, scaled down.
# Reproduce (README, "The demo instance model"):
#   mtp synth data/instances/train --count 40 --size 512 --seed 2000 --touching 0.6 --layout spacenet --name touching
#   mtp synth data/instances/train --count 16 --size 512 --seed 3000 --layout spacenet --name suburb
#   mtp synth data/instances/val --count 4 --size 512 --seed 9100 --touching 0.5 --layout spacenet --name touching
#   python -m training.train training/configs/demo/rvsa-tiny-upernet-maskrcnn-256-synthetic.py \
#       --work-dir work_dirs/demo_instances
#   mtp convert-ckpt work_dirs/demo_instances/iter_2400.pth mtp_core/weights/mtp_demo_instances.pth
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
    # houses are 10-40 px at 0.5 m: anchors of 4 strides (16 px at the finest level) instead of mmdet's 8
    instance_decoder=dict(type='MaskRCNN', channels=32, fc_out_channels=128, anchor_scale=4),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(256, 256), stride=(160, 160)))
model_card = dict(gsd_m=0.5, description='demo instance model: tiny RVSA ViT + UperNet + Mask R-CNN trained on '
                                         'synthetic 0.5 m scenes with touching buildings')

dataset_type = 'SpaceNetInstanceDataset'
train_pipeline = [  # MTP's multi-task steps; the instances ride through flip, resize and crop as one id map
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='MTP_RandomResize', scale=(512, 512), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='MTP_RandomCrop', crop_size=crop_size, recompute_bbox=True, allow_negative_crop=True),
    dict(type='InstancesFromIds'),
    dict(type='INS_FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='MTP_PhotoMetricDistortion'),
    dict(type='MTP_PackInputs'),
]
test_pipeline = [dict(type='MTP_LoadImageFromFile'), dict(type='LoadGeoJSONInstances'), dict(type='MTP_PackInputs')]
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root='data/instances/train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root='data/instances/val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='InstanceMetric', metrics=['mIoU', 'polygon_f1', 'segm_mAP'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=4, layer_decay_rate=1.0),
    clip_grad=dict(max_norm=10))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=2350, begin=50, end=2400, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2400, val_interval=800)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2))
randomness = dict(seed=0)
load_from = 'mtp_core/weights/mtp_demo_synthetic.pth'
resume = False
