# A tiny segmentor with instances (tests, CPU smoke runs): the structure of
# ../mtp/spacenetv1/rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py with the encoder and decoder widths of the tiny
# multi-task pretraining config (pretrain-tiny-64-ss-is.py), so its checkpoints, converted with
# mtp convert-ckpt --reuse-decoder semseg+insseg, initialise it. The callers set the data roots and load_from.
_base_ = ['../mtp/spacenetv1/rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py']
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (64, 64)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=64, drop_path_rate=0.1, out_indices=[0, 1, 2, 3], embed_dim=192, depth=4, num_heads=3,
                  interval=3),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=16, norm_cfg=norm_cfg),
    instance_decoder=dict(channels=16, fc_out_channels=64, anchor_scale=4),
    test_cfg=dict(crop_size=crop_size, stride=(48, 48)))
train_pipeline = [
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='MTP_RandomResize', scale=crop_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='MTP_RandomCrop', crop_size=crop_size, recompute_bbox=True, allow_negative_crop=True),
    dict(type='InstancesFromIds'),
    dict(type='INS_FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='MTP_PhotoMetricDistortion'),
    dict(type='MTP_PackInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='data/tiny/train', nodata=None, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='data/tiny/val', nodata=None))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3), paramwise_cfg=dict(num_layers=4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=4, begin=2, end=6, by_epoch=False),
]
train_cfg = dict(max_iters=6, val_interval=6)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=3))
find_unused_parameters = False
randomness = dict(seed=0)
stop_check_interval = 1
load_from = None
