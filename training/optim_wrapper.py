"""MMEngine's ``OptimWrapper`` and ``AmpOptimWrapper``: gradient accumulation, clipping and mixed precision.

The semantics are MMEngine's, so an MMSeg config trains the same here:

* ``accumulative_counts=k``: every training iteration is one micro-batch; the loss is divided by ``k`` and the
  optimizer steps every ``k`` iterations (and at ``max_iters``, where the last, shorter group is divided by its own
  size); DDP synchronises gradients only on the iteration that steps.
* ``clip_grad=dict(max_norm=35, norm_type=2)`` clips by total norm (``torch.nn.utils.clip_grad_norm_``), and
  ``clip_grad=dict(type='value', clip_value=1.0)`` clips each gradient (``clip_grad_value_``), after unscaling.
* ``AmpOptimWrapper(dtype=..., loss_scale=...)``: autocast around forward and loss; ``float16`` scales the loss with
  a ``GradScaler`` (``'dynamic'``, a float for a static scale, or a dict of ``GradScaler`` arguments). ``bfloat16``
  has float32's exponent range and needs no scaling. ``dtype=None`` picks bfloat16 where the device supports it,
  else float16 (MMEngine's CUDA default is float16: set ``dtype='float16'`` for it).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.optim import WRAPPER_KEYS, build_optimizer

log = logging.getLogger("mtp.train")

_CLIP_FUNCTIONS = {"norm": torch.nn.utils.clip_grad_norm_, "value": torch.nn.utils.clip_grad_value_}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class OptimWrapper:
    """An optimizer plus MMEngine's accumulation and clipping; ``update_params(loss)`` is one training iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, accumulative_counts: int = 1,
                 clip_grad: Mapping[str, Any] | None = None) -> None:
        if not isinstance(accumulative_counts, int) or accumulative_counts < 1:
            raise ValueError(f"optim_wrapper.accumulative_counts must be an integer >= 1, got {accumulative_counts!r}")
        self.optimizer = optimizer
        self.accumulative_counts = accumulative_counts
        self.clip_func, self.clip_kwargs = _parse_clip_grad(clip_grad)
        self.grad_norm: torch.Tensor | None = None  # total norm before clipping, at the last step (type='norm')
        self._inner_count = 0
        self._max_counts = -1
        self._remainder = 0

    # ------------------------------------------------------------------------------------------- counting
    def initialize_count_status(self, model: nn.Module, init_counts: int, max_counts: int) -> None:
        """Start counting iterations at ``init_counts`` (a resumed run) of ``max_counts``."""
        self._inner_count, self._max_counts = init_counts, max_counts
        self._remainder = max_counts % self.accumulative_counts
        if self.accumulative_counts > 1:
            if init_counts % self.accumulative_counts:
                log.warning("resumed at iteration %d, not a multiple of accumulative_counts=%d: the gradients "
                            "accumulated since the last update are lost (as in MMEngine)", init_counts,
                            self.accumulative_counts)
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                log.info("gradient accumulation with BatchNorm: statistics are still per micro-batch")

    def should_update(self) -> bool:
        """True after the backward pass of an iteration that steps the optimizer."""
        return self._inner_count % self.accumulative_counts == 0 or self._inner_count == self._max_counts

    def should_sync(self) -> bool:
        """True before the backward pass of an iteration whose gradients must be all-reduced (it steps)."""
        upcoming = self._inner_count + 1
        return upcoming % self.accumulative_counts == 0 or upcoming == self._max_counts

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self.accumulative_counts == 1:
            return loss
        if self._max_counts == -1 or self._inner_count < self._max_counts - self._remainder:
            return loss / self.accumulative_counts
        return loss / self._remainder

    # ------------------------------------------------------------------------------------------- one iteration
    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        """Around forward and loss: DDP skips the gradient all-reduce on iterations that only accumulate."""
        if self.accumulative_counts > 1 and isinstance(model, DistributedDataParallel) and not self.should_sync():
            with model.no_sync():
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        self._inner_count += 1

    def update_params(self, loss: torch.Tensor) -> bool:
        """Backward of ``loss`` and, when this iteration ends an accumulation group, step + zero_grad."""
        self.backward(self.scale_loss(loss))
        if not self.should_update():
            return False
        self.step()
        self.zero_grad()
        return True

    def step(self) -> None:
        self._clip_grad()
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _clip_grad(self) -> None:
        if self.clip_func is None:
            return
        params = [p for group in self.optimizer.param_groups for p in group["params"]
                  if p.requires_grad and p.grad is not None]
        if params:
            norm = self.clip_func(params, **self.clip_kwargs)
            self.grad_norm = norm.detach() if norm is not None else None

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict({k: v for k, v in state.items() if k != "loss_scaler"})

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def __repr__(self) -> str:
        clip = {"type": "value" if self.clip_func is torch.nn.utils.clip_grad_value_ else "norm", **self.clip_kwargs}
        return (f"{type(self).__name__}({type(self.optimizer).__name__}, accumulative_counts="
                f"{self.accumulative_counts}, clip_grad={clip if self.clip_func else None}{self._amp_repr()})")

    def _amp_repr(self) -> str:
        return ""


class AmpOptimWrapper(OptimWrapper):
    """Mixed precision: autocast in :meth:`optim_context`; float16 also scales the loss (``GradScaler``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, dtype: str | None = None,
                 loss_scale: str | float | Mapping[str, Any] = "dynamic", **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.device_type = device.type
        self.cast_dtype = _amp_dtype(dtype, device)
        self.loss_scaler = _loss_scaler(loss_scale, device) if self.cast_dtype is torch.float16 else None
        self._static_scale = float(loss_scale) if isinstance(loss_scale, (int, float)) else None

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast(self.device_type, dtype=self.cast_dtype):
            yield

    def _amp_repr(self) -> str:
        scale = "none" if self.loss_scaler is None else self._static_scale or "dynamic"
        return f", dtype={str(self.cast_dtype).removeprefix('torch.')}, loss_scale={scale}"

    def backward(self, loss: torch.Tensor) -> None:
        (self.loss_scaler.scale(loss) if self.loss_scaler else loss).backward()
        self._inner_count += 1

    def step(self) -> None:
        if self.loss_scaler is None:
            super().step()
            return
        if self.clip_func is not None:
            self.loss_scaler.unscale_(self.optimizer)
            self._clip_grad()
        self.loss_scaler.step(self.optimizer)  # skipped when a gradient is inf/NaN
        self.loss_scaler.update(self._static_scale)

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        if self.loss_scaler is not None:
            state["loss_scaler"] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.loss_scaler is not None and "loss_scaler" in state:
            self.loss_scaler.load_state_dict(state["loss_scaler"])
        super().load_state_dict(state)


def _parse_clip_grad(cfg: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    if not cfg:
        return None, {}
    cfg = dict(cfg)
    kind = cfg.pop("type", "norm")
    if kind not in _CLIP_FUNCTIONS:
        raise ValueError(f"optim_wrapper.clip_grad type {kind!r} is not supported; valid: 'norm', 'value'")
    func = _CLIP_FUNCTIONS[kind]
    accepted = [name for name in inspect.signature(func).parameters if name != "parameters"]
    required = "max_norm" if kind == "norm" else "clip_value"
    unknown = sorted(set(cfg) - set(accepted))
    if unknown or required not in cfg:
        raise ValueError(f"optim_wrapper.clip_grad (type={kind!r}) takes {accepted} with {required!r} required; "
                         f"got {sorted(cfg)}, e.g. clip_grad=dict(max_norm=35, norm_type=2)")
    return func, cfg


def _amp_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float16
    if name not in _DTYPES:
        raise ValueError(f"optim_wrapper.dtype {name!r} is not supported; valid: 'float16', 'bfloat16' or None")
    return _DTYPES[name]


def _loss_scaler(loss_scale: str | float | Mapping[str, Any], device: torch.device) -> torch.amp.GradScaler:
    if loss_scale == "dynamic":
        return torch.amp.GradScaler(device.type)
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool) and loss_scale > 0:
        return torch.amp.GradScaler(device.type, init_scale=float(loss_scale))
    if isinstance(loss_scale, Mapping):
        try:
            return torch.amp.GradScaler(device.type, **loss_scale)
        except TypeError as exc:
            raise ValueError(f"optim_wrapper.loss_scale {dict(loss_scale)}: {exc}") from None
    raise ValueError(f"optim_wrapper.loss_scale must be 'dynamic', a positive number or a dict of GradScaler "
                     f"arguments, got {loss_scale!r}")


def build_optim_wrapper(model: nn.Module, cfg: Mapping[str, Any], device: torch.device) -> OptimWrapper:
    """The wrapper an MMSeg ``optim_wrapper`` dict describes, around ``training.optim.build_optimizer``'s optimizer."""
    kind = cfg.get("type", "OptimWrapper")
    if kind not in WRAPPER_KEYS:
        raise ValueError(f"optim_wrapper type {kind!r} is not supported; valid: {list(WRAPPER_KEYS)}")
    wrong = sorted((set(WRAPPER_KEYS["AmpOptimWrapper"]) - WRAPPER_KEYS[kind]) & set(cfg))
    if wrong:
        raise ValueError(f"optim_wrapper {wrong} only apply to type='AmpOptimWrapper' (or pass --amp)")
    optimizer = build_optimizer(model, cfg)
    common = {"accumulative_counts": cfg.get("accumulative_counts", 1), "clip_grad": cfg.get("clip_grad")}
    if kind == "OptimWrapper":
        return OptimWrapper(optimizer, **common)
    return AmpOptimWrapper(optimizer, device, dtype=cfg.get("dtype"), loss_scale=cfg.get("loss_scale", "dynamic"),
                           **common)
