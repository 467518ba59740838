# MTP LEVIR-CD fine-tuning with ViT-L + RVSA (full attention every 6th block), MAE+MTP encoder: the ViT-B config
# with the original's ViT-L values (1024-d, 24 blocks, out_indices 7/11/15/23, layer decay over 24 layers).
_base_ = ['rvsa-b-unet-256-mae-mtp_levir.py']
model = dict(
    backbone=dict(
        out_indices=[7, 11, 15, 23], embed_dim=1024, depth=24, num_heads=16, interval=6,
        pretrained='pretrained/vit_l_rvsa_448_mae_samrs_mtp_three/last_vit_l_rvsa_ss_is_rd_pretrn_model_encoder.pth'),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024], encoder_channels=[1024, 1024, 1024, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24))
