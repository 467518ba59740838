# The embedded demo instance model, second stage: rvsa-tiny-upernet-maskrcnn-256-synthetic.py (trained at 0.5 m)
# fine-tuned on the same scenes resampled 2x, so it works at 0.25 m per pixel. Terrace houses are 10-12 px wide at
# 0.5 m, less than one 16 px ViT patch; at 0.25 m they are 20-24 px, and the walls between them fall inside the
# tokens' reach. The card says 0.25 m, so the main job resamples 0.5 m rasters 2x before the network (4x the pixels).
# Reproduce (README, "The demo instance model"): the first stage, then
#   mtp convert-ckpt work_dirs/demo_instances/iter_2400.pth work_dirs/demo_instances_0.5m.pth
#   python -m training.train training/configs/demo/rvsa-tiny-upernet-maskrcnn-256-synthetic-x2.py \
#       --work-dir work_dirs/demo_instances_x2
# and the third stage (rvsa-tiny-upernet-maskrcnn-256-synthetic-x2-more.py) from it.
_base_ = ['./rvsa-tiny-upernet-maskrcnn-256-synthetic.py']

crop_size = (256, 256)
model_card = dict(gsd_m=0.25, description='demo instance model: tiny RVSA ViT + UperNet + Mask R-CNN trained on '
                                          'synthetic 0.5 m scenes with touching buildings, resampled to 0.25 m')
train_pipeline = [
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='MTP_RandomResize', scale=(1024, 1024), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='MTP_RandomCrop', crop_size=crop_size, recompute_bbox=True, allow_negative_crop=True),
    dict(type='InstancesFromIds'),
    dict(type='INS_FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='MTP_PhotoMetricDistortion'),
    dict(type='MTP_PackInputs'),
]
test_pipeline = [  # 512 px scenes at 0.5 m, scored at 0.25 m: the labels resampled with the image (nearest)
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_Resize', scale=(1024, 1024), keep_ratio=True),
    dict(type='InstancesFromIds'),
    dict(type='MTP_PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=2350, begin=50, end=2400, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2400, val_interval=800)
load_from = 'work_dirs/demo_instances_0.5m.pth'
