"""Resizing position tables the way the original ``RVSA_MTP.init_weights`` does: bicubic ``pos_embed`` and
full-attention relative-position tables, so a 224/448 px pretraining encoder serves 384/512 px fine-tuning."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from mtp_core.checkpoint.safe_load import CheckpointError


def resize_pos_embed(pos_embed: Tensor, num_tokens: int, num_extra_tokens: int = 0) -> Tensor:
    """``(1, extra + g*g, C)`` -> ``(1, num_tokens, C)``, as the original loader.

    Leading extra (cls) tokens are dropped: the RVSA backbone has none. The g x g grid is resized with bicubic
    interpolation (``align_corners=False``) when its size differs, so a 224-px (or MAE) checkpoint serves 384-px
    fine-tuning.
    """
    src_tokens = pos_embed.shape[1] - num_extra_tokens
    src_grid, dst_grid = math.isqrt(src_tokens), math.isqrt(num_tokens)
    if src_grid * src_grid != src_tokens or dst_grid * dst_grid != num_tokens:
        raise CheckpointError(
            f"pos_embed {tuple(pos_embed.shape)} (with {num_extra_tokens} extra token(s)) can't be resized to "
            f"{num_tokens} tokens: both must be square grids"
        )
    tokens = pos_embed[:, num_extra_tokens:]
    if src_grid == dst_grid:
        return tokens.clone()
    grid = tokens.reshape(-1, src_grid, src_grid, tokens.shape[-1]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """A full-attention relative-position table ``(2S-1, d)`` -> ``(length, d)``, as the original loader.

    It is bicubic-resized as a ``(1, 1, L, d)`` image to ``(length, d)`` (``align_corners=False``): a 1-D resize
    along L, the identity along d.
    """
    rows, dim = table.shape
    image = table.float().reshape(1, 1, rows, dim)
    out = F.interpolate(image, size=(length, dim), mode="bicubic", align_corners=False)
    return out.reshape(length, dim).to(table.dtype)


