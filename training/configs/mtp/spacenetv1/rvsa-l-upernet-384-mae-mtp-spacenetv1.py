# MTP SpaceNetv1 fine-tuning: ViT-L + RVSA backbone initialised from the MAE+MTP pretraining encoder, UperNet head.
# Everything else as rvsa-b-upernet-384-mae-mtp-spacenetv1.py (values of MTP's ViT-L config, commit 13cc2b7).
_base_ = ['rvsa-b-upernet-384-mae-mtp-spacenetv1.py']
model = dict(
    backbone=dict(
        out_indices=[7, 11, 15, 23], embed_dim=1024, depth=24, num_heads=16, interval=6,
        pretrained='pretrained/vit_l_rvsa_448_mae_samrs_mtp_three/last_vit_l_rvsa_ss_is_rd_pretrn_model_encoder.pth'),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24))
