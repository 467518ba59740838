# The embedded demo change detector: MTP's LEVIR-CD recipe (Open-CD SiamEncoderDecoder, |A-B| fusion, UNet head,
# MultiImg pipeline) scaled down to train on CPU, on synthetic before/after pairs at 0.5 m (`mtp synth --pair`).
# As MTP starts from a pretrained encoder, the backbone starts from the demo segmentation model's (same tiny RVSA
# ViT: 128-d, 4 blocks), which learnt buildings on other synthetic scenes.
# Reproduce (README, "The demo change detector"):
#   mtp synth data/synthetic_cd/train --pair --layout levir --count 64 --size 512 --seed 2000 --max-shift 2.5 \
#     --name pair
#   mtp synth data/synthetic_cd/val --pair --layout levir --count 6 --size 512 --seed 9100 --max-shift 2.5 --name pair
#   OMP_NUM_THREADS=1 python -m training.train training/configs/demo/rvsa-tiny-unet-256-synthetic-cd.py \
#     --work-dir work_dirs/demo_cd
#   mtp convert-ckpt work_dirs/demo_cd/iter_1500.pth mtp_core/weights/mtp_demo_synthetic_cd.pth
norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (256, 256)
data_preprocessor = dict(
    type='DualInputSegDataPreProcessor', mean=[123.675, 116.28, 103.53] * 2, std=[58.395, 57.12, 57.375] * 2,
    bgr_to_rgb=True, size_divisor=32, pad_val=0, seg_pad_val=255, test_cfg=dict(size_divisor=32))
model = dict(
    type='SiamEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='RVSA_MTP', img_size=256, patch_size=16, drop_path_rate=0.1, out_indices=[0, 1, 2, 3], embed_dim=128,
        depth=4, num_heads=2, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
        use_checkpoint=False, use_abs_pos_emb=True, frozen_stages=-1,
        pretrained='mtp_core/weights/mtp_demo_synthetic.pth'),
    neck=dict(type='FeatureFusionNeck', policy='abs_diff', out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='UNetHead', num_classes=2, ignore_index=255, in_channels=[128, 128, 128, 128], in_index=[0, 1, 2, 3],
        channels=16, dropout_ratio=0.1, encoder_channels=[128, 128, 128, 128], decoder_channels=[128, 64, 32, 16],
        n_blocks=4, use_batchnorm=True, center=False, attention_type=None, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(256, 256), stride=(192, 192)))
model_card = dict(gsd_m=0.5,
                  description='demo change detector: tiny RVSA ViT + UNet trained on synthetic 0.5 m pairs')

dataset_type = 'LEVIR_CD_Dataset'
data_root = 'data/synthetic_cd'
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
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
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
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=1400, begin=100, end=1500, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1500, val_interval=500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=250, max_keep_ckpts=2))
randomness = dict(seed=0)
find_unused_parameters = True  # the CD backbone's fpn and norm get no gradient (for runs on several processes)
load_from = None
resume = False
