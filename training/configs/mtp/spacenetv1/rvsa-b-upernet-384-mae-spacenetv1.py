# MTP SpaceNetv1 fine-tuning, MAE baseline: as rvsa-b-upernet-384-mae-mtp-spacenetv1.py, but the backbone starts from
# the MillionAID MAE checkpoint (no multi-task pretraining); the two original configs differ only in this path.
_base_ = ['rvsa-b-upernet-384-mae-mtp-spacenetv1.py']
model = dict(backbone=dict(pretrained='pretrained/vit-b-checkpoint-1599.pth'))
