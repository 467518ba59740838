"""Training and testing of MTP models: configs named as MTP's, data, optimization, distributed launch.

Run as ``python -m training.train CONFIG`` / ``python -m training.test CONFIG CKPT`` (drop-in for MMSeg's tools).
"""
