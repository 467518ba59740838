# MTP OSCD (RGB) fine-tuning: the LEVIR-CD config ../levir/rvsa-l-unet-256-mae-mtp_levir.py with the original's
# differences: the 96 px patches resized to 224 (MultiImgResize; the backbone is built for 224 px, labels keep their
# size), val and test on the test split, 100 epochs (cosine T_max 95), validation and checkpoints every 20 epochs.
_base_ = ['../levir/rvsa-l-unet-256-mae-mtp_levir.py']
crop_size = (224, 224)
model = dict(backbone=dict(img_size=224))
dataset_type = 'OSCD_RGB_CD_Dataset'
data_root = 'data/oscd_rgb_patch_dataset'
train_pipeline = [
    dict(type='MultiImgLoadImageFromFile'),
    dict(type='MultiImgResize', scale=crop_size, keep_ratio=True),
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
test_prefix = dict(img_path_from='test/A', img_path_to='test/B', seg_map_path='test/label')
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, data_prefix=test_prefix,
                                   pipeline=val_pipeline))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, data_prefix=test_prefix,
                                    pipeline=val_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=95, by_epoch=True, begin=5, end=100),
]
train_cfg = dict(max_epochs=100, val_interval=20)
default_hooks = dict(logger=dict(log_metric_by_epoch=False), checkpoint=dict(interval=20))
