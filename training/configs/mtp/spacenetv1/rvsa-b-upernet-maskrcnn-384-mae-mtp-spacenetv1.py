# SpaceNetv1 buildings and one instance per building: ViT-B + RVSA, UperNet (semantic) and Mask R-CNN (instances) on
# the same encoder, all three initialised from MTP's multi-task pretraining (encoder + both decoders). MTP's
# SpaceNetv1 recipe (rvsa-b-upernet-384-mae-mtp-spacenetv1.py: AdamW 6e-5, layer decay 0.9, 1500 warm-up iterations
# then cosine to 80k, batch 1 on 8 GPUs, SyncBN) with MTP's multi-task data pipeline (flips, resize 0.5-2, crop,
# instance filter, photometric) so boxes, masks and the semantic label move together; the raw SpaceNet layout
# (3band/*.tif + vectorData/geoJson/*.geojson, one instance per polygon). The UperNet is 256 wide, as pretrained.
# Make the initial checkpoint once from the released pretraining file:
#   mtp convert-ckpt pretrained/vit_b_rvsa_224_mae_samrs_mtp_three/last_vit_b_rvsa_ss_is_rd_pretrn_model.pth \
#       pretrained/vitb_mtp_upernet_maskrcnn.pth --reuse-decoder semseg+insseg
# (a fine-tuned SpaceNet segmentor works too: load_from=ITS_FILE; the instance decoder then starts new). Run:
#   srun -N 1 --ntasks-per-node=8 --gres=gpu:8 python -m training.train THIS_FILE --work-dir W --launcher slurm
norm_cfg = dict(type='SyncBN', requires_grad=True)
crop_size = (384, 384)
data_preprocessor = dict(
    type='SegDataPreProcessor', size=crop_size, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='RVSA_MTP', img_size=384, patch_size=16, drop_path_rate=0.3, out_indices=[3, 5, 7, 11], embed_dim=768,
        depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
        use_checkpoint=False, use_abs_pos_emb=True, pretrained=None),
    decode_head=dict(
        type='UPerHead', in_channels=[768, 768, 768, 768], in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
        channels=256, dropout_ratio=0.1, num_classes=2, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    instance_decoder=dict(type='MaskRCNN', channels=256, fc_out_channels=1024),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(384, 384), stride=(256, 256)))

dataset_type = 'SpaceNetInstanceDataset'
train_pipeline = [
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='MTP_RandomResize', scale=(384, 384), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='MTP_RandomCrop', crop_size=crop_size, recompute_bbox=True, allow_negative_crop=True),
    dict(type='InstancesFromIds'),
    dict(type='INS_FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='MTP_PhotoMetricDistortion'),
    dict(type='MTP_PackInputs'),
]
test_pipeline = [dict(type='MTP_LoadImageFromFile'), dict(type='LoadGeoJSONInstances'), dict(type='MTP_PackInputs')]
train_dataloader = dict(
    batch_size=1, num_workers=8, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root='data/spacenet/train', nodata=0, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root='data/spacenet/val', nodata=0, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='InstanceMetric', metrics=['mIoU', 'polygon_f1', 'segm_mAP'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=78500, begin=1500, end=80000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=20000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000))
find_unused_parameters = True  # a crop without buildings leaves the mask head without positives
log_level = 'INFO'
load_from = 'pretrained/vitb_mtp_upernet_maskrcnn.pth'
resume = False
