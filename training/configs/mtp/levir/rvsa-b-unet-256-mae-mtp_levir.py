# MTP LEVIR-CD fine-tuning (Open-CD 1.1.0): ViT-B + RVSA change-detection backbone (no fpn, 4 maps at stride 16)
# initialised from the MAE+MTP pretraining encoder, |A-B| feature fusion, MTP's UNet head.
# Values as ViTAE-Transformer/MTP RS_Tasks_Finetune/Change_Detection/configs/mtp/levir (commit 13cc2b7): AdamW 6e-5,
# layer decay 0.9, 5 warm-up epochs (iteration-based) then cosine to 150 epochs, batch 4 per GPU.
#   python -m training.train THIS_FILE --work-dir W            (one GPU; srun ... --launcher slurm for several)
# Data: LEVIR-CD cut into 256 px patches, {train,val,test}/{A,B,label}/*.png (labels 0/255).
norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (256, 256)
data_preprocessor = dict(
    type='DualInputSegDataPreProcessor', mean=[123.675, 116.28, 103.53] * 2, std=[58.395, 57.12, 57.375] * 2,
    bgr_to_rgb=True, size_divisor=32, pad_val=0, seg_pad_val=255, test_cfg=dict(size_divisor=32))
model = dict(
    type='SiamEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='RVSA_MTP', img_size=256, patch_size=16, drop_path_rate=0.3, out_indices=[3, 5, 7, 11], embed_dim=768,
        depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
        use_checkpoint=False, use_abs_pos_emb=True, frozen_stages=-1,
        pretrained='pretrained/vit_b_rvsa_224_mae_samrs_mtp_three/last_vit_b_rvsa_ss_is_rd_pretrn_model_encoder.pth'),
    neck=dict(type='FeatureFusionNeck', policy='abs_diff', out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='UNetHead', num_classes=2, ignore_index=255, in_channels=[768, 768, 768, 768], in_index=[0, 1, 2, 3],
        channels=64, dropout_ratio=0.1, encoder_channels=[768, 768, 768, 768], decoder_channels=[512, 256, 128, 64],
        n_blocks=4, use_batchnorm=True, center=False, attention_type=None, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='mmseg.CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

dataset_type = 'LEVIR_CD_Dataset'
data_root = 'data/levir_patch_dataset'
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
val_pipeline = [
    dict(type='MultiImgLoadImageFromFile'),
    dict(type='MultiImgResize', scale=crop_size, keep_ratio=True),
    dict(type='MultiImgLoadAnnotations'),
    dict(type='MultiImgPackSegInputs'),
]
test_pipeline = [
    dict(type='MultiImgLoadImageFromFile'),
    dict(type='MultiImgLoadAnnotations'),
    dict(type='MultiImgPackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path_from='train/A', img_path_to='train/B', seg_map_path='train/label'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path_from='val/A', img_path_to='val/B', seg_map_path='val/label'),
                 pipeline=val_pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path_from='test/A', img_path_to='test/B', seg_map_path='test/label'),
                 pipeline=test_pipeline))
val_evaluator = dict(type='mmseg.IoUMetric', iou_metrics=['mFscore', 'mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=145, by_epoch=True, begin=5, end=150),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=150, val_interval=30)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=30, save_best='mIoU'))
log_level = 'INFO'
# The CD backbone's fpn1..4 and norm are in the checkpoints but get no gradient: distributed training needs this, as
# MTP's README command sets it (--cfg-options find_unused_parameters=True).
find_unused_parameters = True
load_from = None
resume = False
