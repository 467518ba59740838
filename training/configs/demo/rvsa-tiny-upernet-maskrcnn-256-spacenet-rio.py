# The demo instance model fine-tuned on real imagery: the SpaceNet 1 Rio de Janeiro chips of ../shared/realdata
# (0.5 m, EPSG:4326; img1-img7 for training: 36 buildings and three empty chips), to compare semantic-only and
# instance polygons on real buildings that touch, on the held-out img8-img10 (83 buildings):
#   python -m training.train training/configs/demo/rvsa-tiny-upernet-maskrcnn-256-spacenet-rio.py \
#       --work-dir work_dirs/spacenet_rio
#   python bench/instances_spacenet.py --checkpoint work_dirs/spacenet_rio/iter_300.pth
# Not shipped (a figure for the report): four labelled chips teach a model little. These are strip-edge chips, only
# 11-26 % of img1-img7 holds image (the rest is nodata, ignored), so at 0.25 m most 256 px crops hold nothing to learn.
# Measured from the second stage: polygon F1 0.000 for both paths on img8-img10 (it answers background everywhere;
# 0.043 when the model worked at 0.5 m), far below the synthetic-only demo instance model (its second stage:
# semantic-only 0.259, instances 0.305; its third, the shipped one: 0.242, 0.256).
_base_ = ['rvsa-tiny-upernet-maskrcnn-256-synthetic-x2.py']
chips = '../shared/realdata/spacenet1_AOI_0_TEST/AOI_0_TEST'
x2 = (878, 878)  # the 439 x 406 px chips at 0.25 m, as the demo instance model works
train_pipeline = [
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='MTP_RandomResize', scale=x2, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='MTP_RandomCrop', crop_size=(256, 256), recompute_bbox=True, allow_negative_crop=True),
    dict(type='InstancesFromIds'),
    dict(type='INS_FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='MTP_PhotoMetricDistortion'),
    dict(type='MTP_PackInputs'),
]
test_pipeline = [
    dict(type='MTP_LoadImageFromFile'),
    dict(type='LoadGeoJSONInstances', id_map=True),
    dict(type='MTP_Resize', scale=x2, keep_ratio=True),
    dict(type='InstancesFromIds'),
    dict(type='MTP_PackInputs'),
]
train_dataloader = dict(dataset=dict(data_root=chips, split_file='training/configs/demo/spacenet-rio-train.txt',
                                     nodata=0, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=chips, split_file='training/configs/demo/spacenet-rio-test.txt',
                                   nodata=0, pipeline=test_pipeline))
test_dataloader = val_dataloader
model_card = dict(description='demo instance model fine-tuned on four SpaceNet 1 Rio chips (at 0.25 m)')
optim_wrapper = dict(optimizer=dict(lr=3e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=280, begin=20, end=300, by_epoch=False),
]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100, max_keep_ckpts=1))
load_from = 'mtp_core/weights/mtp_demo_instances.pth'
