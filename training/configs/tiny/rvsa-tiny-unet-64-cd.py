# A tiny change-detection config with MTP's LEVIR-CD recipe scaled down (tests, CPU smoke runs): the same structure
# as ../mtp/levir/rvsa-b-unet-256-mae-mtp_levir.py, epoch-based as Open-CD's; data_root is set by the caller.
crop_size = (64, 64)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='DualInputSegDataPreProcessor', mean=[123.675, 116.28, 103.53] * 2, std=[58.395, 57.12, 57.375] * 2,
    bgr_to_rgb=True, size_divisor=32, pad_val=0, seg_pad_val=255, test_cfg=dict(size_divisor=32))
model = dict(
    type='SiamEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='RVSA_MTP', img_size=64, patch_size=16, drop_path_rate=0.1, out_indices=[0, 1, 2, 3], embed_dim=64,
        depth=4, num_heads=2, mlp_ratio=2, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
        use_checkpoint=False, use_abs_pos_emb=True, frozen_stages=-1, pretrained=None),
    neck=dict(type='FeatureFusionNeck', policy='abs_diff', out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='UNetHead', num_classes=2, ignore_index=255, in_channels=[64, 64, 64, 64], in_index=[0, 1, 2, 3],
        channels=8, dropout_ratio=0.1, encoder_channels=[64, 64, 64, 64], decoder_channels=[32, 16, 8, 8],
        n_blocks=4, use_batchnorm=True, center=False, attention_type=None, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='mmseg.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(48, 48)))

dataset_type = 'LEVIR_CD_Dataset'
data_root = 'data/tiny_cd'
train_pipeline = [
    dict(type='MultiImgLoadImageFromFile'),
    dict(type='MultiImgLoadAnnotations'),
    dict(type='MultiImgRandomRotFlip', rotate_prob=0.5, flip_prob=0.5, degree=(-20, 20)),
    dict(type='MultiImgRandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='MultiImgExchangeTime', prob=0.5),
    dict(type='MultiImgPhotoMetricDistortion', brightness_delta=10, contrast_range=(0.8, 1.2),
         saturation_range=(0.8, 1.2), hue_delta=10),
    dict(type='MultiImgPackSegInputs'),
]
test_pipeline = [
    dict(type='MultiImgLoadImageFromFile'),
    dict(type='MultiImgLoadAnnotations'),
    dict(type='MultiImgPackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path_from='train/A', img_path_to='train/B', seg_map_path='train/label'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path_from='val/A', img_path_to='val/B', seg_map_path='val/label'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mFscore', 'mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=3, by_epoch=True, begin=1, end=4),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=4, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=2, log_metric_by_epoch=True),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=2, save_best='mIoU'))
randomness = dict(seed=0)
# The CD backbone's fpn1..4 and norm are in the checkpoints but get no gradient: distributed training needs this, as
# MTP's README command sets it (--cfg-options find_unused_parameters=True).
find_unused_parameters = True
stop_check_interval = 1
load_from = None
resume = False
