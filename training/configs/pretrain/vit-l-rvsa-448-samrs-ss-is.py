# MTP's multi-task pretraining of ViT-L + RVSA on SAMRS (SOTA, SIOR, FAST) with the semantic and instance decoders,
# as MTP's Readme runs it on Slurm (srun --ntasks=32 --ntasks-per-node=4 --kill-on-bad-exit=1 ...):
# main_pretrain.py --backbone vit_l_rvsa --tasks ss is rd --datasets sota sior fast --batch_size 3 --workers 8
# --end_iter 80000 --image_size 448 --init_backbone mae --batch_mode avg --background True --use_ckpt True
# --interval 5000, here without the rotated-detection task (rd), which comes with its decoder. batch_size is per
# process: 1 image per dataset, 96 per iteration on 32 GPUs (SyncBN across them).
# Paths follow the SAMRS layout of MTP's scripts below data/samrs; point data_root to your copy.
backbone = 'vit_l_rvsa'
datasets = ['sota', 'sior', 'fast']
tasks = ['ss', 'is']
batch_size = 3
batch_mode = 'avg'
background = True
image_size = 448
end_iter = 80000
interval = 5000
workers = 8
use_ckpt = True
mixed_precision = False
init_backbone = None  # MTP: the MAE ViT-L file (vit-l-mae-checkpoint-1599.pth); set its path here

data = dict(
    sota=dict(type='SAMRSDataset', data_root='data/samrs/dotav2_1024_rbb',
              ann_file='trainval/sota_rbb_train_ins_segmentation.json', img_prefix='trainval/images',
              seg_prefix='trainval/rhbox_segs_init/gray'),
    sior=dict(type='SAMRSDataset', data_root='data/samrs/dior', ann_file='sior_train_ins_segmentation.json',
              img_prefix='JPEGImages-trainval', seg_prefix='hbox_segs_trainvaltest_init/gray'),
    fast=dict(type='SAMRSDataset', data_root='data/samrs/fair1m_1024',
              ann_file='trainval/fast_train_ins_segmentation.json', img_prefix='trainval/images',
              seg_prefix='trainval/rhbox_segs_init/gray'),
)
val_data = dict(
    sota=dict(type='SAMRSDataset', data_root='data/samrs/dotav2_1024_rbb',
              ann_file='trainval/sota_rbb_valid_ins_segmentation.json', img_prefix='trainval/images',
              seg_prefix='trainval/rhbox_segs_init/gray'),
    sior=dict(type='SAMRSDataset', data_root='data/samrs/dior', ann_file='sior_valid_ins_segmentation.json',
              img_prefix='JPEGImages-trainval', seg_prefix='hbox_segs_trainvaltest_init/gray'),
    fast=dict(type='SAMRSDataset', data_root='data/samrs/fair1m_1024',
              ann_file='trainval/fast_valid_ins_segmentation.json', img_prefix='trainval/images',
              seg_prefix='trainval/rhbox_segs_init/gray'),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.9),
    clip_grad=dict(max_norm=5))
randomness = dict(seed=2023, diff_rank_seed=True)
default_hooks = dict(logger=dict(interval=50))
