# MTP SpaceNetv1 fine-tuning, MAE baseline for ViT-L: the MillionAID MAE checkpoint instead of the MTP encoder.
_base_ = ['rvsa-l-upernet-384-mae-mtp-spacenetv1.py']
model = dict(backbone=dict(pretrained='pretrained/vit-l-mae-checkpoint-1599.pth'))
