# The demo instance model fine-tuned on real imagery: the SpaceNet 1 Rio de Janeiro chips of ../shared/realdata
# (0.5 m, EPSG:4326; img1-img7 for training: 36 buildings and three empty chips), to compare semantic-only and
# instance polygons on real buildings that touch, on the held-out img8-img10 (83 buildings):
#   python -m training.train training/configs/demo/rvsa-tiny-upernet-maskrcnn-256-spacenet-rio.py \
#       --work-dir work_dirs/spacenet_rio
#   python bench/instances_spacenet.py --checkpoint work_dirs/spacenet_rio/iter_300.pth
# Not shipped (a figure for the report): four labelled chips teach a model little. Measured: polygon F1 0.043 for
# both paths on img8-img10, below the synthetic-only demo instance model (semantic-only 0.230, instances 0.236).
_base_ = ['rvsa-tiny-upernet-maskrcnn-256-synthetic.py']
chips = '../shared/realdata/spacenet1_AOI_0_TEST/AOI_0_TEST'
train_dataloader = dict(dataset=dict(data_root=chips, split_file='training/configs/demo/spacenet-rio-train.txt',
                                     nodata=0))
val_dataloader = dict(dataset=dict(data_root=chips, split_file='training/configs/demo/spacenet-rio-test.txt',
                                   nodata=0))
test_dataloader = val_dataloader
model_card = dict(description='demo instance model fine-tuned on four SpaceNet 1 Rio chips')
optim_wrapper = dict(optimizer=dict(lr=3e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=0.0, T_max=280, begin=20, end=300, by_epoch=False),
]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=100, max_keep_ckpts=1))
load_from = 'mtp_core/weights/mtp_demo_instances.pth'
