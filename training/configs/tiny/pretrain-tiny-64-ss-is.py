# A tiny multi-task pretraining config (tests, CPU smoke runs): the structure of
# ../pretrain/vit-b-rvsa-224-samrs-ss-is.py with two SAMRS-format building sets (made by mtp_tools.samrs), a tiny
# RVSA encoder and narrow decoders at 64 px. The callers set data.*.data_root.
backbone = 'vit_tiny_rvsa'
datasets = ['synth', 'real']
tasks = ['ss', 'is']
batch_size = 4  # 2 images per dataset and process
batch_mode = 'avg'
background = True
image_size = 64
end_iter = 6
interval = 3
workers = 0
use_ckpt = False
mixed_precision = False
init_backbone = None

data = dict(
    synth=dict(type='SAMRSDataset', data_root='data/samrs_synth', ann_file='instances.json', classes=['building']),
    real=dict(type='SAMRSDataset', data_root='data/samrs_real', ann_file='instances.json', classes=['building']),
)
model = dict(decoder_args=dict(ss=dict(channels=16), **{'is': dict(channels=16, fc_out_channels=64)}))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor_ViT',
    paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9),
    clip_grad=dict(max_norm=5))
randomness = dict(seed=2023, diff_rank_seed=True)
default_hooks = dict(logger=dict(interval=1))
stop_check_interval = 1
