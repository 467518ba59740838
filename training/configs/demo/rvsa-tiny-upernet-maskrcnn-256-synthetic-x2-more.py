# The embedded demo instance model, third stage: the second stage (rvsa-tiny-upernet-maskrcnn-256-synthetic-x2.py,
# 0.25 m) trained on 2.5x the scenes (the 56 of the first two stages and 84 new ones), with the learning rate
# restarted: the second stage's validation F1 rose 0.728 -> 0.807 -> 0.811 at 800 / 1600 / 2400 iterations as its
# cosine schedule ran out, and 56 scenes seen ten times each are few to learn where walls fall between similar roofs.
# This stage: validation F1 0.835 / 0.866 / 0.863 and mask AP 0.508 / AP50 0.858 at the end (about 55 minutes on two
# cores); bench/instances.py 0.860 -> 0.926.
# Reproduce (README, "The demo instance model"): the first two stages, then
#   mtp synth data/instances/train_more --count 100 --size 512 --seed 2000 --touching 0.6 --layout spacenet \
#       --name touching
#   mtp synth data/instances/train_more --count 40 --size 512 --seed 3000 --layout spacenet --name suburb
#   mtp convert-ckpt work_dirs/demo_instances_x2/iter_2400.pth work_dirs/demo_instances_x2.pth
#   python -m training.train training/configs/demo/rvsa-tiny-upernet-maskrcnn-256-synthetic-x2-more.py \
#       --work-dir work_dirs/demo_instances_x2_more
#   mtp convert-ckpt work_dirs/demo_instances_x2_more/iter_2400.pth mtp_core/weights/mtp_demo_instances.pth
# (the same seeds give the same scenes: train_more's first 40 touching and 16 suburb scenes are train's)
_base_ = ['./rvsa-tiny-upernet-maskrcnn-256-synthetic-x2.py']

train_dataloader = dict(dataset=dict(data_root='data/instances/train_more'))
optim_wrapper = dict(optimizer=dict(lr=4e-4))
load_from = 'work_dirs/demo_instances_x2.pth'
