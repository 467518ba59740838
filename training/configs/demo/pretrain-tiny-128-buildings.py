# Multi-task pretraining shown working on CPU: the tiny framework (RVSA ViT 192-d x 4 blocks, 64-channel UperNet,
# 32-channel Mask R-CNN) trained from scratch with semantic and instance segmentation on two SAMRS-format building
# sets, synthetic suburbs (mtp synth --layout samrs) and the real SpaceNet 4 chip in tiles (mtp_tools.samrs), for
# a few hundred iterations. MTP's recipe otherwise (zipped loaders, loss sum, AdamW, cosine, clip 5,
# the original's RoI box target); the learning rate is higher than MTP's 6e-5, which starts from MAE weights.
# scripts/pretrain_demo.py makes the data, runs this config and measures held-out scenes.
backbone = 'vit_tiny_rvsa'
datasets = ['synth', 'spacenet']
tasks = ['ss', 'is']
batch_size = 4  # 2 images per dataset
batch_mode = 'avg'
background = True
image_size = 128
end_iter = 600
interval = 200
workers = 0
use_ckpt = False
mixed_precision = False
init_backbone = None

data = dict(
    synth=dict(type='SAMRSDataset', data_root='data/pretrain_demo/synth', ann_file='instances.json',
               classes=['building']),
    spacenet=dict(type='SAMRSDataset', data_root='data/pretrain_demo/spacenet', ann_file='instances.json',
                  classes=['building']),
)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9),
    clip_grad=dict(max_norm=5))
randomness = dict(seed=2023, diff_rank_seed=True)
default_hooks = dict(logger=dict(interval=10))
