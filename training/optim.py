"""Optimizer and learning-rate schedule, equal to what MTP's MMSeg/MMEngine configs build.

* ``layer_decay_param_groups`` is MTP's ``LayerDecayOptimizerConstructor_ViT`` (mtp_spec §3.2): one group per
  (layer id, decay or not), each with its own ``lr = lr_scale * base_lr``.
* ``build_optimizer`` reads an MMSeg ``optim_wrapper`` dict (the wrapper itself: ``training.optim_wrapper``).
* ``build_scheduler`` reads an MMEngine ``param_scheduler`` list and computes every learning rate in closed form from
  the iteration counter, so a resumed run gets bit-identical rates and 80k steps of multiplicative updates cannot
  drift (mtp_spec §3.3). Epoch-based schedules (Open-CD's change-detection configs) need the epoch length:
  ``convert_to_iter_based=True`` phases become iteration phases, the others change once per epoch, as MMEngine
  steps them after each epoch.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

LAYER_DECAY_CONSTRUCTOR = "LayerDecayOptimizerConstructor_ViT"
_DEFAULT_CONSTRUCTOR = "DefaultOptimWrapperConstructor"
_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}
_LAYER_ZERO_NAMES = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")
# optim_wrapper keys of the wrapper itself (training.optim_wrapper), per wrapper type
WRAPPER_KEYS = {
    "OptimWrapper": {"type", "accumulative_counts", "clip_grad"},
    "AmpOptimWrapper": {"type", "accumulative_counts", "clip_grad", "loss_scale", "dtype"},
}


# ----------------------------------------------------------------------------------------------- layer decay


def vit_layer_id(name: str, num_max_layer: int) -> int:
    """MTP's ``get_num_layer_for_vit``: 0 for the embeddings, ``i + 1`` for block ``i``, the last id for the rest.

    The rest is the fpn1..4 necks and the whole decode head: they train at the full base learning rate.
    """
    if name in _LAYER_ZERO_NAMES or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return num_max_layer - 1


def _skips_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (1-D) and the absolute position embedding are not decayed; 2-D rel-pos tables are."""
    return param.ndim == 1 or name.endswith(".bias") or "pos_embed" in name


def layer_decay_param_groups(
    model: nn.Module, base_lr: float, weight_decay: float, num_layers: int, layer_decay_rate: float,
) -> list[dict[str, Any]]:
    """Parameter groups of ``LayerDecayOptimizerConstructor_ViT``, keyed and ordered as the original builds them.

    ``L = num_layers + 2`` layer ids; a parameter of layer ``id`` trains at ``layer_decay_rate ** (L - id - 1)``
    times ``base_lr``. Groups appear in the order of their first parameter in ``named_parameters()``, so the first
    group (the one MMEngine logs as ``lr``) is layer 0. Frozen parameters are left out, as the original does.
    """
    max_layer = num_layers + 2
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = vit_layer_id(name, max_layer)
        if name.startswith("backbone.blocks.") and layer_id > num_layers:
            raise ValueError(
                f"parameter {name!r} is in block {layer_id - 1}, but num_layers={num_layers}: "
                f"set paramwise_cfg.num_layers to the backbone depth"
            )
        no_decay = _skips_weight_decay(name, param)
        group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if group_name not in groups:
            scale = layer_decay_rate ** (max_layer - layer_id - 1)
            groups[group_name] = {
                "weight_decay": 0.0 if no_decay else weight_decay,
                "params": [],
                "param_names": [],
                "lr_scale": scale,
                "group_name": group_name,
                "lr": scale * base_lr,
            }
        groups[group_name]["params"].append(param)
        groups[group_name]["param_names"].append(name)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------- optimizer


def _plain_param_group(model: nn.Module) -> list[dict[str, Any]]:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for _, p in named], "param_names": [name for name, _ in named]}]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer an MMSeg ``optim_wrapper`` dict describes (its wrapper keys are for ``build_optim_wrapper``).

    Supported: ``optimizer.type`` AdamW or SGD (every other key goes to the torch constructor), with no
    constructor, MMEngine's default one without ``paramwise_cfg``, or ``LayerDecayOptimizerConstructor_ViT`` with
    ``paramwise_cfg=dict(num_layers, layer_decay_rate)``. AdamW runs fused when every parameter is on CUDA
    (same maths, one kernel); set ``fused`` in the config to override.
    """
    wrapper_keys = set().union(*WRAPPER_KEYS.values())
    cfg = {k: v for k, v in cfg.items() if k not in wrapper_keys}
    if "optimizer" not in cfg:
        raise ValueError("optim_wrapper needs an 'optimizer' dict, e.g. dict(type='AdamW', lr=6e-5)")
    opt_cfg = dict(cfg.pop("optimizer"))
    constructor = cfg.pop("constructor", None)
    paramwise_cfg = cfg.pop("paramwise_cfg", None)
    if cfg:
        hint = "; MMSeg 0.x's grad_clip is clip_grad here" if "grad_clip" in cfg else ""
        raise ValueError(f"unsupported optim_wrapper keys {sorted(cfg)}; valid: "
                         f"{sorted(wrapper_keys | {'optimizer', 'constructor', 'paramwise_cfg'})}{hint}")

    opt_type = opt_cfg.pop("type", None)
    if opt_type not in _OPTIMIZERS:
        raise ValueError(f"optimizer type {opt_type!r} is not supported; valid: {sorted(_OPTIMIZERS)}")
    if "lr" not in opt_cfg:
        raise ValueError(f"optimizer {opt_type} needs 'lr'")

    if constructor == LAYER_DECAY_CONSTRUCTOR:
        groups = _layer_decay_groups_from_cfg(model, opt_cfg, paramwise_cfg)
    elif constructor in (None, _DEFAULT_CONSTRUCTOR):
        if paramwise_cfg:
            raise ValueError(f"paramwise_cfg is only supported with constructor={LAYER_DECAY_CONSTRUCTOR!r}")
        groups = _plain_param_group(model)
    else:
        valid = [_DEFAULT_CONSTRUCTOR, LAYER_DECAY_CONSTRUCTOR]
        raise ValueError(f"optimizer constructor {constructor!r} is not supported; valid: {valid} (or none)")

    params = [p for group in groups for p in group["params"]]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if opt_type == "AdamW" and "fused" not in opt_cfg and all(p.is_cuda for p in params):
        opt_cfg["fused"] = True
    return _OPTIMIZERS[opt_type](groups, **opt_cfg)


def _layer_decay_groups_from_cfg(
    model: nn.Module, opt_cfg: Mapping[str, Any], paramwise_cfg: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    paramwise_cfg = dict(paramwise_cfg or {})
    required = ("num_layers", "layer_decay_rate")
    missing = [key for key in required if key not in paramwise_cfg]
    extra = sorted(set(paramwise_cfg) - set(required))
    if missing or extra:
        raise ValueError(
            f"{LAYER_DECAY_CONSTRUCTOR} needs exactly paramwise_cfg keys {list(required)}; "
            f"missing {missing}, unsupported {extra}"
        )
    if "weight_decay" not in opt_cfg:
        raise ValueError(f"{LAYER_DECAY_CONSTRUCTOR} needs optimizer.weight_decay (the decay of the 'decay' groups)")
    return layer_decay_param_groups(
        model, base_lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"],
        num_layers=int(paramwise_cfg["num_layers"]), layer_decay_rate=float(paramwise_cfg["layer_decay_rate"]),
    )


# ----------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class _Phase(ABC):
    """One MMEngine scheduler, active for steps ``begin <= t < end``; ``k = t - begin`` is its own step.

    MMEngine's schedulers are chainable: each one rescales the rate it finds at its ``begin`` (the value the
    previous phase left). ``value(start, k)`` is the closed form of that recursion.
    """

    begin: int
    end: int

    @property
    def total_iters(self) -> int:
        """MMEngine's ``end - begin - 1`` (LinearLR, ConstantLR and PolyLR reach their target one step early)."""
        return self.end - self.begin - 1

    @abstractmethod
    def value(self, start: float, k: int) -> float:
        """The rate at own step ``k`` when the rate at ``begin`` (before this phase acts) was ``start``."""


@dataclass(frozen=True)
class LinearLR(_Phase):
    """``start * factor``, factor linear from ``start_factor`` at k = 0 to ``end_factor`` at k = end-begin-1."""

    start_factor: float = 1.0 / 3
    end_factor: float = 1.0

    def __post_init__(self) -> None:
        for key in ("start_factor", "end_factor"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"LinearLR {key} must be in [0, 1], got {getattr(self, key)}")

    def value(self, start: float, k: int) -> float:
        if k == 0:
            return start * self.start_factor
        return start * (self.start_factor + (self.end_factor - self.start_factor) * k / self.total_iters)


@dataclass(frozen=True)
class CosineAnnealingLR(_Phase):
    """``eta_min + (start - eta_min) * (1 + cos(pi * k / T_max)) / 2``; ``eta_min`` is an absolute rate."""

    T_max: int | None = None
    eta_min: float = 0.0

    def value(self, start: float, k: int) -> float:
        t_max = self.end - self.begin if self.T_max is None else self.T_max
        return self.eta_min + (start - self.eta_min) * (0.5 * (1.0 + math.cos(math.pi * k / t_max)))


@dataclass(frozen=True)
class ConstantLR(_Phase):
    """``start * factor`` until k = end-begin-1, where MMEngine restores ``start`` (one step before ``end``)."""

    factor: float = 1.0 / 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.factor <= 1.0:
            raise ValueError(f"ConstantLR factor must be in [0, 1], got {self.factor}")

    def value(self, start: float, k: int) -> float:
        return start * self.factor if k < self.total_iters else start


@dataclass(frozen=True)
class PolyLR(_Phase):
    """``(start - eta_min) * (1 - k / (end-begin-1)) ** power + eta_min`` (MMSeg's usual 'poly' decay)."""

    eta_min: float = 0.0
    power: float = 1.0

    def value(self, start: float, k: int) -> float:
        if k == 0:
            return start
        return (start - self.eta_min) * (1.0 - k / self.total_iters) ** self.power + self.eta_min


@dataclass(frozen=True)
class EpochStepped(_Phase):
    """A phase MMEngine steps once per epoch (``by_epoch=True`` without ``convert_to_iter_based``): ``begin``/``end``
    in iterations, ``inner`` in epochs; the rate holds for a whole epoch."""

    inner: _Phase
    iters_per_epoch: int

    def value(self, start: float, k: int) -> float:
        return self.inner.value(start, k // self.iters_per_epoch)


_SCHEDULERS: dict[str, type[_Phase]] = {
    cls.__name__: cls for cls in (LinearLR, CosineAnnealingLR, ConstantLR, PolyLR)
}


def _parse_phase(cfg: Mapping[str, Any], max_iters: int, iters_per_epoch: int | None = None) -> _Phase:
    """One ``param_scheduler`` entry; a missing ``end`` is the end of training, as MMEngine's runner fills it in."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in _SCHEDULERS:
        raise ValueError(f"param_scheduler type {kind!r} is not supported; valid: {sorted(_SCHEDULERS)}")
    by_epoch = cfg.pop("by_epoch", True)
    convert = cfg.pop("convert_to_iter_based", False)
    if by_epoch and iters_per_epoch is None:
        raise ValueError(
            f"{kind}: by_epoch=True (MMEngine's default) needs an epoch-based loop (train_cfg type "
            f"EpochBasedTrainLoop); with IterBasedTrainLoop set by_epoch=False and give begin/end in iterations"
        )
    scale = iters_per_epoch if by_epoch else 1
    cfg.setdefault("begin", 0)
    cfg.setdefault("end", max_iters // scale)
    cls = _SCHEDULERS[kind]
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"{kind}: unsupported keys {unknown}; valid: "
                         f"{sorted(valid | {'type', 'by_epoch', 'convert_to_iter_based'})}")
    if by_epoch and convert:  # MMEngine's build_iter_from_epoch: begin, end and T_max times the epoch length
        cfg["begin"], cfg["end"] = cfg["begin"] * scale, cfg["end"] * scale
        if cfg.get("T_max") is not None:
            cfg["T_max"] = cfg["T_max"] * scale
    phase = cls(**cfg)
    if phase.end <= phase.begin:
        raise ValueError(f"{kind}: end ({phase.end}) must be larger than begin ({phase.begin})")
    if by_epoch and not convert:
        phase = EpochStepped(phase.begin * scale, phase.end * scale, phase, scale)
    return phase  # a phase beyond max_iters (a shortened run) is simply never reached, as in MMEngine


class ParamScheduler:
    """Learning rates of a chain of MMEngine schedulers, set on the optimizer for the current step.

    ``last_step`` is the 0-based training iteration whose rates are set now: construction sets step 0, and each
    ``step()`` (after every iteration, also one that only accumulates gradients, as MMEngine's ParamSchedulerHook)
    moves to the next one. Rates are computed from
    ``last_step`` and each group's ``initial_lr`` only, so a scheduler restored with ``load_state_dict`` continues
    exactly as an uninterrupted one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, phases: Sequence[_Phase]) -> None:
        self.optimizer = optimizer
        self.phases = tuple(sorted(phases, key=lambda p: p.begin))
        for previous, current in zip(self.phases, self.phases[1:]):
            if current.begin < previous.end:
                raise ValueError(
                    f"schedulers overlap: {type(previous).__name__} [{previous.begin}, {previous.end}) and "
                    f"{type(current).__name__} [{current.begin}, {current.end}); chain them by begin/end"
                )
        self.initial_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, step: int, initial_lr: float) -> float:
        """The rate at optimizer step ``step`` for a group whose unscheduled rate is ``initial_lr``.

        With ``initial_lr`` = the config's base lr this is what MMEngine logs as ``base_lr``.
        """
        value = initial_lr
        for phase in self.phases:
            if step < phase.begin:
                break
            value = phase.value(value, min(step, phase.end - 1) - phase.begin)
            if step < phase.end:
                break
        return value

    def base_lr(self) -> float:
        """MMEngine's logged ``base_lr``: the rate now of the optimizer's configured ``lr``, before any layer scale."""
        return self.lr_at(self.last_step, self.optimizer.defaults["lr"])

    def step(self) -> None:
        """Move to the next optimizer step and set its rates."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The rate of every parameter group at ``last_step``."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "initial_lrs": list(self.initial_lrs)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step counter and initial rates, and set the optimizer's rates for that step."""
        initial_lrs = list(state["initial_lrs"])
        if len(initial_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(initial_lrs)} parameter groups, the optimizer has "
                f"{len(self.optimizer.param_groups)}"
            )
        self.initial_lrs = initial_lrs
        for group, lr in zip(self.optimizer.param_groups, initial_lrs):
            group["initial_lr"] = lr
        self.last_step = int(state["last_step"])
        self._apply()

    def _apply(self) -> None:
        for group, initial_lr in zip(self.optimizer.param_groups, self.initial_lrs):
            group["lr"] = self.lr_at(self.last_step, initial_lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, param_scheduler: Iterable[Mapping[str, Any]] | Mapping[str, Any], max_iters: int,
    iters_per_epoch: int | None = None,
) -> ParamScheduler:
    """A ``ParamScheduler`` from an MMEngine ``param_scheduler`` config (one dict or a list).

    Supported types: LinearLR, CosineAnnealingLR, ConstantLR, PolyLR with MMEngine's arguments and semantics;
    entries must not overlap in ``[begin, end)``; a missing ``end`` defaults to the end of training. ``by_epoch``
    entries need ``iters_per_epoch`` (epoch-based training; see the module docstring).
    """
    entries = [param_scheduler] if isinstance(param_scheduler, Mapping) else list(param_scheduler)
    return ParamScheduler(optimizer, [_parse_phase(entry, max_iters, iters_per_epoch) for entry in entries])
