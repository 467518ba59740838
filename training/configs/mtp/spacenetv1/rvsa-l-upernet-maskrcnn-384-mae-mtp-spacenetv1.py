# SpaceNetv1 buildings and one instance per building with ViT-L + RVSA: everything else as
# rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py (MTP's ViT-L values: 24 blocks, full attention every 6th).
#   mtp convert-ckpt pretrained/vit_l_rvsa_448_mae_samrs_mtp_three/last_vit_l_rvsa_ss_is_rd_pretrn_model.pth \
#       pretrained/vitl_mtp_upernet_maskrcnn.pth --reuse-decoder semseg+insseg
_base_ = ['rvsa-b-upernet-maskrcnn-384-mae-mtp-spacenetv1.py']
model = dict(
    backbone=dict(out_indices=[7, 11, 15, 23], embed_dim=1024, depth=24, num_heads=16, interval=6),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24))
load_from = 'pretrained/vitl_mtp_upernet_maskrcnn.pth'
