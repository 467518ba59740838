# MTP CDD (SVCD) fine-tuning: the LEVIR-CD config ../levir/rvsa-b-unet-256-mae-mtp_levir.py with the original's
# differences (dataset, 200 epochs: cosine T_max 195, validation every 40 epochs, checkpoints every 20).
_base_ = ['../levir/rvsa-b-unet-256-mae-mtp_levir.py']
dataset_type = 'SVCD_Dataset'
data_root = 'data/cdd_dataset'
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=195, by_epoch=True, begin=5, end=200),
]
train_cfg = dict(max_epochs=200, val_interval=40)
default_hooks = dict(checkpoint=dict(interval=20))
