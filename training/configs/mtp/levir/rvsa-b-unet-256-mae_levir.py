# MTP LEVIR-CD fine-tuning, MAE baseline: as rvsa-b-unet-256-mae-mtp_levir.py with the backbone from the MillionAID
# MAE checkpoint (no multi-task pretraining); the two original configs differ only in this path.
_base_ = ['rvsa-b-unet-256-mae-mtp_levir.py']
model = dict(backbone=dict(pretrained='pretrained/vit-b-checkpoint-1599.pth'))
