# MTP LEVIR-CD fine-tuning, ViT-L MAE baseline: as rvsa-l-unet-256-mae-mtp_levir.py with the MAE checkpoint.
_base_ = ['rvsa-l-unet-256-mae-mtp_levir.py']
model = dict(backbone=dict(pretrained='pretrained/vit-l-mae-checkpoint-1599.pth'))
