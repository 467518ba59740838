"""MMEngine-style Python config files, without MMEngine.

A config is a Python file whose public top-level names are the settings (``model = dict(...)``,
``train_dataloader = dict(...)``, ...), optionally inheriting from ``_base_`` files. ``--cfg-options k.v=x``
overrides nested keys; a key that does not exist is an error naming the closest valid key, so a typo can't silently
train the wrong model.
"""
from __future__ import annotations

import ast
import copy
import difflib
import runpy
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

_DELETE = "_delete_"
# MMSeg 0.x config keys and where MMSeg 1.x (and this project) keeps the same setting
MMSEG0_KEYS = {
    "lr_config": "param_scheduler (a list of MMEngine schedulers, e.g. LinearLR warm-up + PolyLR, by_epoch=False)",
    "lr_config.warmup_iters": "param_scheduler: the 'end' of a LinearLR warm-up (begin=0, by_epoch=False)",
    "lr_config.warmup_ratio": "param_scheduler: the 'start_factor' of a LinearLR warm-up",
    "lr_config.power": "param_scheduler: PolyLR(power=...)",
    "lr_config.min_lr": "param_scheduler: 'eta_min' of the PolyLR or CosineAnnealingLR",
    "optimizer": "optim_wrapper.optimizer",
    "optimizer_config": "optim_wrapper",
    "optimizer_config.grad_clip": "optim_wrapper.clip_grad",
    "runner": "train_cfg (IterBasedTrainLoop)",
    "runner.max_iters": "train_cfg.max_iters",
    "checkpoint_config": "default_hooks.checkpoint",
    "checkpoint_config.interval": "default_hooks.checkpoint.interval",
    "checkpoint_config.max_keep_ckpts": "default_hooks.checkpoint.max_keep_ckpts",
    "log_config": "default_hooks.logger",
    "log_config.interval": "default_hooks.logger.interval",
    "evaluation": "train_cfg.val_interval and val_evaluator",
    "evaluation.interval": "train_cfg.val_interval",
    "data": "train_dataloader, val_dataloader and test_dataloader",
    "data.samples_per_gpu": "train_dataloader.batch_size",
    "data.workers_per_gpu": "train_dataloader.num_workers",
    "data.train": "train_dataloader.dataset",
    "data.val": "val_dataloader.dataset",
    "data.test": "test_dataloader.dataset",
    "fp16": "optim_wrapper.type='AmpOptimWrapper' (or --amp)",
    "resume_from": "resume=True load_from=CKPT (or --resume CKPT)",
    "workflow": "train_cfg (IterBasedTrainLoop)",
    "dist_params": "--launcher and --port",
    "gpu_ids": "the number of processes the launcher starts",
}


class ConfigError(ValueError):
    """A config file or override that can't be used as written."""


def merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge as MMEngine: child wins, ``_delete_=True`` replaces instead of merging."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and not value.get(_DELETE, False):
            out[key] = merge(out[key], value)
        else:
            out[key] = {k: v for k, v in value.items() if k != _DELETE} if isinstance(value, Mapping) else value
    return out


def mmseg0_hint(key: str) -> str | None:
    """Where MMSeg 1.x keeps the setting of an MMSeg 0.x dotted key (its most specific known prefix)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in MMSEG0_KEYS:
            return MMSEG0_KEYS[prefix]
    return None


def check_mmseg1(cfg: Mapping[str, Any]) -> None:
    """Refuse MMSeg 0.x settings, which would otherwise be ignored without a word."""
    found = [k for k in cfg if "." not in k and k in MMSEG0_KEYS and not (k == "optimizer" and "optim_wrapper" in cfg)]
    if found:
        where = "; ".join(f"{k} -> {MMSEG0_KEYS[k]}" for k in found)
        raise ConfigError(f"the config has MMSeg 0.x keys, which MMSeg 1.x configs write differently: {where}")


def load_config(path: str | Path) -> dict[str, Any]:
    """Settings of a config file, its ``_base_`` files merged first (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:  # a config is user code: report where it broke
        raise ConfigError(f"config {path} failed to run: {type(exc).__name__}: {exc}") from exc
    settings = {
        k: v
        for k, v in namespace.items()
        if not k.startswith("__") and k != "_base_" and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }
    bases = namespace.get("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge(merged, load_config(path.parent / base))
    return merge(merged, settings)


def _parse_value(text: str) -> Any:
    """``--cfg-options`` values: Python literals (``None``, ``1e-4``, ``[1,2]``, ``(384,384)``), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered == "none":
            return None
        return text


def _all_keys(cfg: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        yield dotted
        if isinstance(value, Mapping):
            yield from _all_keys(value, dotted + ".")


def apply_overrides(cfg: dict[str, Any], options: Iterable[str], extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; unknown keys fail with the closest valid one.

    ``extra_keys`` are dotted keys that are valid even when the config does not set them (settings the loop reads
    but configs usually leave out, e.g. ``optim_wrapper.clip_grad.max_norm``): their missing (or None) parents are
    created. Replacing a whole dict (``val_dataloader=None``) is allowed; a key the config doesn't have is not.
    """
    cfg = copy.deepcopy(cfg)
    extra = set(extra_keys)
    valid = set(_all_keys(cfg)) | extra
    for option in options:
        if "=" not in option:
            raise ConfigError(f"--cfg-options takes key=value pairs, got {option!r}")
        key, text = option.split("=", 1)
        parts = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts[:-1]):
            parent = ".".join(parts[: depth + 1])
            if parent in extra and node.get(part) is None:
                node[part] = {}
            if part not in node:
                raise _unknown_key(key, parent, valid)
            if not isinstance(node[part], dict):
                raise ConfigError(f"--cfg-options {option}: {parent} is {node[part]!r} here (set by the config or an "
                                  f"earlier option), not a dict, so it has no key {parts[depth + 1]!r}")
            node = node[part]
        last = parts[-1]
        if last not in node and key not in valid:
            raise _unknown_key(key, key, valid)
        node[last] = _parse_value(text)
    return cfg


def _unknown_key(key: str, missing: str, valid: set[str]) -> ConfigError:
    """``missing`` is the first part of ``key`` that does not exist."""
    old = mmseg0_hint(key)
    if old:
        return ConfigError(f"--cfg-options: {key!r} is an MMSeg 0.x key; MMSeg 1.x configs (and this project) "
                           f"use {old}")
    close = difflib.get_close_matches(missing, sorted(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"--cfg-options: the config has no key {missing!r}{hint}")


def config_text(cfg: Mapping[str, Any]) -> str:
    """The merged config as a Python file, written into work dirs and checkpoints so runs are reproducible."""
    return "".join(f"{key} = {value!r}\n" for key, value in cfg.items())
