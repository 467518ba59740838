"""ViT + RVSA backbone of MTP (Wang et al., JSTARS 2024), the same function as the original ``RVSA_MTP``.

Every quirk of the original is kept on purpose, because released weights only give the paper's numbers with them
(see ``mtp_spec.md`` §2 and §8): full attention scales q *before* its decomposed relative-position term while RVSA
windows use the *unscaled* q; RVSA computes qkv before padding and zero-pads it; sampling offsets are divided by
``h // 7`` of the unpadded grid; no final norm in the fine-tuning backbone; LayerNorm eps 1e-6 everywhere.

Two attention implementations compute the same function: ``"reference"`` follows the original op for op (float32
parity with the goldens), ``"sdpa"`` folds the relative-position terms into an additive bias for
``F.scaled_dot_product_attention`` (autocast and ``torch.compile`` friendly). Inference uses ``"sdpa"``.
"""
from __future__ import annotations

import logging
import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

AttnImpl = Literal["reference", "sdpa"]
_logger = logging.getLogger(__name__)

RVSA_WINDOW = 7  # hard-coded (7, 7) in the original


def _rel_pos_terms(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Decomposed relative-position terms of ``calc_rel_pos_spatial`` for square q/k grids of equal size.

    Returns ``rel_h`` (B, nH, h, w, h) and ``rel_w`` (B, nH, h, w, w): the term added for key row / key column.
    """
    h, w = size
    idx_h = torch.arange(h, device=q.device)
    idx_w = torch.arange(w, device=q.device)
    rh = rel_pos_h[idx_h[:, None] - idx_h[None, :] + (h - 1)]  # (h, h, d)
    rw = rel_pos_w[idx_w[:, None] - idx_w[None, :] + (w - 1)]  # (w, w, d)
    b, n_heads, _, dim = q.shape
    r_q = q.reshape(b, n_heads, h, w, dim)
    rel_h = torch.einsum("byhwc,hkc->byhwk", r_q, rh.to(q.dtype))
    rel_w = torch.einsum("byhwc,wkc->byhwk", r_q, rw.to(q.dtype))
    return rel_h, rel_w


def _add_rel_pos(attn: Tensor, rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """``attn`` (B, nH, N, N) plus the decomposed terms, as the original's view/broadcast/view."""
    b, n_heads, qh, qw, kh = rel_h.shape
    kw = rel_w.shape[-1]
    out = attn.view(b, n_heads, qh, qw, kh, kw) + rel_h[..., :, None] + rel_w[..., None, :]
    return out.view(b, n_heads, qh * qw, kh * kw)


def _rel_pos_bias(rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """The decomposed terms as one additive (B, nH, N, N) bias for SDPA."""
    b, n_heads, qh, qw, kh = rel_h.shape
    kw = rel_w.shape[-1]
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n_heads, qh * qw, kh * kw)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv; returns tokens and the token grid size."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        hp, wp = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (hp, wp)


class Mlp(nn.Module):
    """fc1 → exact GELU → fc2 → dropout (the original has no dropout after fc1)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class FullAttention(nn.Module):
    """Global attention over the whole token grid with decomposed relative positions (``Attention`` upstream).

    The rel-pos tables are sized for one grid (``window_size``), so the input must have exactly that many tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.window_size = tuple(window_size)
        self.full_attn_rel_pos_h = nn.Parameter(torch.zeros(2 * window_size[0] - 1, head_dim))
        self.full_attn_rel_pos_w = nn.Parameter(torch.zeros(2 * window_size[1] - 1, head_dim))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.impl: AttnImpl = "sdpa"

    def forward(self, x: Tensor, hp: int, wp: int) -> Tensor:
        if (hp, wp) != self.window_size:
            raise ValueError(
                f"full-attention block built for a {self.window_size[0]}x{self.window_size[1]} token grid got "
                f"{hp}x{wp}: feed crops of the model's img_size (use predict(mode='slide')) or build it with "
                f"img_size={hp * 16}"
            )
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale  # scaled BEFORE the rel-pos term (unlike RVSA)
        rel_h, rel_w = _rel_pos_terms(q, self.full_attn_rel_pos_h, self.full_attn_rel_pos_w, self.window_size)
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=_rel_pos_bias(rel_h, rel_w), dropout_p=self.attn_drop.p if self.training else 0.0,
                scale=1.0,
            )
        else:
            attn = _add_rel_pos(q @ k.transpose(-2, -1), rel_h, rel_w).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def _sampling_head(dim: int, out_channels: int) -> nn.Sequential:
    """One prediction per 7x7 window: average pool, LeakyReLU(0.01), 1x1 conv."""
    return nn.Sequential(
        nn.AvgPool2d(kernel_size=RVSA_WINDOW, stride=RVSA_WINDOW),
        nn.LeakyReLU(),
        nn.Conv2d(dim, out_channels, kernel_size=1),
    )


def _relative_position_index(ws: int) -> Tensor:
    """Swin-style (dy + ws-1) * (2ws-1) + (dx + ws-1) for every pair of tokens in a ws x ws window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def _window_geometry(h: int, w: int, device: torch.device) -> tuple[tuple[int, int, int, int], Tensor, Tensor]:
    """Padding (top, bottom, left, right), window centres (1,2,nh,1,nw,1) and in-window coords (1,2,nh,7,nw,7).

    Coordinates are in grid_sample's normalized [-1, 1] frame of the padded grid; channel 0 is x, channel 1 is y.
    """
    ws = RVSA_WINDOW
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    top, left = pad_h // 2, pad_w // 2
    hh, ww = h + pad_h, w + pad_w
    nh, nw = hh // ws, ww // ws
    ref_y = torch.linspace(-1, 1, hh, device=device)
    ref_x = torch.linspace(-1, 1, ww, device=device)
    image_ref = torch.stack(torch.meshgrid(ref_x, ref_y, indexing="ij"), 0).permute(0, 2, 1).unsqueeze(0)
    window_ref = F.avg_pool2d(image_ref, kernel_size=ws).reshape(1, 2, nh, 1, nw, 1)
    base_y = torch.arange(ws, device=device) * 2 * ws / ws / (hh - 1)
    base_x = torch.arange(ws, device=device) * 2 * ws / ws / (ww - 1)
    base_y = (base_y - base_y.mean()).repeat(nh)
    base_x = (base_x - base_x.mean()).repeat(nw)
    window_coords = torch.stack(torch.meshgrid(base_x, base_y, indexing="ij"), 0).permute(0, 2, 1)
    return (top, pad_h - top, left, pad_w - left), window_ref, window_coords.reshape(1, 2, nh, ws, nw, ws)


class RotatedVariedSizeWindowAttention(nn.Module):
    """RVSA: 7x7 query windows whose key/value windows are scaled, rotated and shifted per head.

    Keys/values are bilinearly sampled (``grid_sample``) at the transformed window positions, so the attention
    adapts to objects of any size and orientation at window-attention cost.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        ws = RVSA_WINDOW
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * ws - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * ws - 1, head_dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(ws))
        self.sampling_offsets = _sampling_head(dim, num_heads * 2)
        self.sampling_scales = _sampling_head(dim, num_heads * 2)
        self.sampling_angles = _sampling_head(dim, num_heads)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)  # created but never applied, as in the original
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.impl: AttnImpl = "sdpa"

    def _sample_grid(self, x_pad: Tensor, h: int, w: int, window_ref: Tensor, window_coords: Tensor) -> Tensor:
        """grid_sample positions (B*nH, 7*nh, 7*nw, 2) of every key/value, from the per-window predictions."""
        b = x_pad.shape[0]
        nh, nw = window_ref.shape[2], window_ref.shape[4]
        n = b * self.num_heads
        # The original divides by the *unpadded* h // 7 and w // 7 (x channel by the h value); for inputs under
        # 7 tokens it divides by zero, which we clamp to 1 instead of producing NaN.
        divisor = x_pad.new_tensor([max(h // RVSA_WINDOW, 1), max(w // RVSA_WINDOW, 1)]).view(1, 2, 1, 1)
        offsets = self.sampling_offsets(x_pad).reshape(n, 2, nh, nw) / divisor
        scales = self.sampling_scales(x_pad).reshape(n, 2, nh, nw)
        angles = self.sampling_angles(x_pad).reshape(n, 1, nh, nw)
        coords = window_coords * (scales[:, :, :, None, :, None] + 1)
        cx, cy = coords[:, 0], coords[:, 1]
        sin = torch.sin(angles[:, 0, :, None, :, None])
        cos = torch.cos(angles[:, 0, :, None, :, None])
        rotated = torch.stack((-cy * sin + cx * cos, cy * cos + cx * sin), dim=1)
        coords = window_ref + rotated + offsets[:, :, :, None, :, None]
        return coords.permute(0, 2, 3, 4, 5, 1).reshape(n, RVSA_WINDOW * nh, RVSA_WINDOW * nw, 2)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        ws, n_heads = RVSA_WINDOW, self.num_heads
        d = c // n_heads
        (top, bottom, left, right), window_ref, window_coords = _window_geometry(h, w, x.device)
        window_ref, window_coords = window_ref.to(x.dtype), window_coords.to(x.dtype)
        hh, ww = h + top + bottom, w + left + right
        nh, nw = hh // ws, ww // ws

        x_pad = F.pad(x.transpose(1, 2).reshape(b, c, h, w), (left, right, top, bottom))
        grid = self._sample_grid(x_pad, h, w, window_ref, window_coords)

        # qkv from the unpadded tokens, zero-padded afterwards: padded positions have q = k = v = 0 (not the bias).
        qkv = self.qkv(x).transpose(1, 2).reshape(b, 3, n_heads, d, h, w).transpose(0, 1)
        qkv = F.pad(qkv.reshape(3 * b * n_heads, d, h, w), (left, right, top, bottom))
        q, k, v = qkv.reshape(3, b * n_heads, d, hh, ww).unbind(0)
        grid = grid.to(k.dtype)
        k = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        v = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

        def to_windows(t: Tensor) -> Tensor:
            t = t.reshape(b, n_heads, d, nh, ws, nw, ws).permute(0, 3, 5, 1, 4, 6, 2)
            return t.reshape(b * nh * nw, n_heads, ws * ws, d)

        q, k, v = to_windows(q), to_windows(k), to_windows(v)
        rel_h, rel_w = _rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (ws, ws))  # unscaled q, unlike full attn
        table_bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        table_bias = table_bias.view(ws * ws, ws * ws, n_heads).permute(2, 0, 1).unsqueeze(0)
        if self.impl == "sdpa":
            bias = _rel_pos_bias(rel_h, rel_w) + table_bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            dots = _add_rel_pos((q @ k.transpose(-2, -1)) * self.scale, rel_h, rel_w) + table_bias
            out = dots.softmax(dim=-1) @ v
        # '(b hh ww) h (ws1 ws2) d -> b (h d) (hh ws1) (ww ws2)', then crop the padding away
        out = out.view(b, nh, nw, n_heads, ws, ws, d).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hh, ww)
        out = out[:, :, top : top + h, left : left + w]
        return self.proj_drop(self.proj(out.permute(0, 2, 3, 1).reshape(b, h * w, c)))


class Block(nn.Module):
    """Pre-norm transformer block with either full or RVSA attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
        full_attn_window: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if full_attn_window is None:
            self.attn: nn.Module = RotatedVariedSizeWindowAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        else:
            self.attn = FullAttention(dim, num_heads, full_attn_window, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, hp: int, wp: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hp, wp))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Norm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (parameter names ``ln.*`` as the original)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RVSAViT(nn.Module):
    """ViT with RVSA window attention and full attention every ``interval``-th block, plus the fpn1–4 neck.

    ``forward`` returns four NCHW maps at strides 4, 8, 16, 32 taken from the blocks in ``out_indices``.
    ``with_norm=True`` builds the multi-task pretraining encoder (``ViT_Win_RVSA_V3_WSZ7``), whose ``norm`` exists
    (and is saved) but is unused in forward. ``apply_fpn=False`` is the change-detection and classification copy
    (``mtp_spec.md`` §2.7): the fpn1–4 modules exist (their keys are in the checkpoints) but are not applied, so all
    four maps are at stride 16.
    """

    def __init__(
        self,
        img_size: int = 384,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        interval: int = 3,
        use_checkpoint: bool = False,
        with_norm: bool = False,
        attn_impl: AttnImpl = "sdpa",
        apply_fpn: bool = True,
    ) -> None:
        super().__init__()
        if patch_size != 16:
            raise ValueError(f"patch_size {patch_size} is not supported: MTP models use 16")
        increasing = len(set(out_indices)) == 4 and list(out_indices) == sorted(out_indices)
        if not increasing or not 0 <= out_indices[0] <= out_indices[-1] < depth:
            raise ValueError(f"out_indices must be 4 increasing block indices in [0, {depth}), got {list(out_indices)}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.out_indices = tuple(out_indices)
        self.interval = interval
        self.use_checkpoint = use_checkpoint
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_features = embed_dim
        self.out_channels = [embed_dim] * 4
        self.apply_fpn = apply_fpn

        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                full_attn_window=self.grid_size if (i + 1) % interval == 0 else None,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if with_norm else None
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
            Norm2d(embed_dim),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=r if apply_fpn else 16, module=f"fpn{i + 1}")
            for i, r in enumerate((4, 8, 16, 32))
        ]

        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)
        self._fix_init_weight()
        self.set_attn_impl(attn_impl)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _fix_init_weight(self) -> None:
        """Depth-scaled init of the residual projections (BEiT/MAE style), as the original."""
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    def set_attn_impl(self, impl: AttnImpl) -> None:
        """Switch every block between the op-for-op reference path and the SDPA path (same function)."""
        if impl not in ("reference", "sdpa"):
            raise ValueError(f"attn_impl must be 'reference' or 'sdpa', got {impl!r}")
        for blk in self.blocks:
            blk.attn.impl = impl

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm-style switch for activation checkpointing of the blocks (saves memory in training)."""
        self.use_checkpoint = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward_tokens(self, x: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        """Token outputs (B, N, C) of the blocks in ``out_indices`` and the token grid size."""
        tokens, (hp, wp) = self.patch_embed(x)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(
                f"input of {x.shape[-2]}x{x.shape[-1]} px gives {hp}x{wp} tokens but this backbone was built for "
                f"img_size={self.img_size} ({self.grid_size[0]}x{self.grid_size[1]} tokens): tile the image into "
                f"{self.img_size} px crops (predict(mode='slide')) or build the model with img_size={x.shape[-2]}"
            )
        tokens = self.pos_drop(tokens + self.pos_embed)
        features = []
        for i, blk in enumerate(self.blocks):
            if self.use_checkpoint and self.training:
                tokens = checkpoint(blk, tokens, hp, wp, use_reentrant=False)
            else:
                tokens = blk(tokens, hp, wp)
            if i in self.out_indices:
                features.append(tokens)
        return features, (hp, wp)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features, (hp, wp) = self.forward_tokens(x)
        b = x.shape[0]
        maps = [f.permute(0, 2, 1).reshape(b, -1, hp, wp) for f in features]
        if not self.apply_fpn:
            return tuple(maps)  # type: ignore[return-value]
        return tuple(op(m) for op, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps))  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ timm integration
    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature API (``features_only=True`` models call it): the maps at strides 4, 8, 16, 32; ``indices``
        picks among those four (an int: the last n; all at stride 16 with ``apply_fpn=False``). There is no final norm
        or head to apply."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r} is not supported: the RVSA maps are NCHW")
        take = _feature_indices(indices)
        maps = self.forward(x)
        selected = [maps[i] for i in take]
        return selected if intermediates_only else (maps[-1], selected)

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's hook for custom checkpoint formats (``pretrained=True, pretrained_cfg_overlay=dict(file=...)``):
        every MTP / MAE / MMSeg layout, read safely, remapped and resized (:func:`mtp_core.checkpoint.load_weights`)."""
        from mtp_core.checkpoint import load_weights

        report = load_weights(self, checkpoint_path)
        for line in report.summary().splitlines():
            _logger.info(line)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also takes a state dict in a released layout (an MTP encoder or pretraining file, MAE, an MMSeg segmentor's
        ``backbone.*``), remapped and resized as :func:`mtp_core.checkpoint.load_weights` does: so
        ``timm.create_model(name, checkpoint_path=MTP_FILE)`` loads the released weights. ``strict`` then means
        that every tensor of this backbone was in the file."""
        if set(state_dict) <= set(self.state_dict()):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        from mtp_core.checkpoint.load import load_into

        report = load_into(self, dict(state_dict), "the state dict", "none", False)
        if strict and report.missing:
            raise RuntimeError(f"the state dict has no weights for {len(report.missing)} tensors of this backbone "
                               f"(e.g. {report.missing[0]}); load it with strict=False to keep them as initialized")
        return torch.nn.modules.module._IncompatibleKeys(report.missing, report.dropped)


def _feature_indices(indices: int | Sequence[int] | None) -> list[int]:
    if indices is None:
        return [0, 1, 2, 3]
    if isinstance(indices, int):
        if not 1 <= indices <= 4:
            raise ValueError(f"the backbone has 4 feature maps; cannot take the last {indices}")
        return list(range(4 - indices, 4))
    take = [i % 4 for i in indices]
    if any(not -4 <= i < 4 for i in indices):
        raise ValueError(f"feature indices must be in 0..3 (strides 4, 8, 16, 32), got {list(indices)}")
    return take
