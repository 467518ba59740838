"""MTP's multi-task pretraining framework (``Multi-Task_Pretrain/models.py``, ``MutliTaskPretrnFramework``).

One shared encoder and one decoder per task, with per-dataset predictors at the top level, all under the original
attribute names and in the original registration order, so ``state_dict()`` equals the released
``*_pretrn_model.pth`` key for key (``mtp_multitask_spec.md`` §1, §6.1). Built from a task spec, as the original's
``--datasets`` / ``--tasks`` / ``--background``: a step runs the concatenated batch of all datasets through the
encoder once, splits the features back per dataset and lets every task compute its losses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtp_core.models.multitask.insseg import InstanceSegDecoder
from mtp_core.models.multitask.samrs import SAMRS_CLASSES
from mtp_core.models.multitask.semseg import SemanticSegDecoder
from mtp_core.models.multitask.structures import Batch
from mtp_core.models.multitask.task import Losses, TaskDecoder

TASK_ORDER = ("ss", "is", "rd")  # registration order of the original (and so state_dict order)
TASK_DECODERS: dict[str, type[TaskDecoder]] = {"ss": SemanticSegDecoder, "is": InstanceSegDecoder}
NOT_YET = {"rd": "the rotated-detection decoder (Oriented R-CNN) is not implemented yet"}
# Key prefixes of each task's decoder and per-dataset heads in the released files (also of tasks not built here)
TASK_KEY_PREFIXES = {
    "ss": ("semsegdecoder.", "semseghead_"),
    "is": ("inssegdecoder.", "inssegroi"),
    "rd": ("rotdetdecoder.", "rotdetroi"),
}


def task_of_key(key: str) -> str | None:
    """The task whose decoder or per-dataset head a framework state_dict key belongs to (None: the encoder)."""
    return next((task for task, prefixes in TASK_KEY_PREFIXES.items() if key.startswith(prefixes)), None)


@dataclass(frozen=True)
class DatasetSpec:
    """A pretraining dataset: its name and number of object classes (background not counted)."""

    name: str
    num_classes: int


SAMRS_DATASETS = tuple(DatasetSpec(name, len(classes)) for name, classes in SAMRS_CLASSES.items())


def _datasets(specs: Iterable[DatasetSpec | tuple[str, int]]) -> tuple[DatasetSpec, ...]:
    out = tuple(s if isinstance(s, DatasetSpec) else DatasetSpec(*s) for s in specs)
    if not out:
        raise ValueError("the multi-task framework needs at least one dataset")
    if len({s.name for s in out}) != len(out) or any(s.num_classes < 1 for s in out):
        raise ValueError(f"datasets need distinct names and at least one class each, got {list(out)}")
    return out


def _tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    wanted = set(tasks)
    unknown = wanted - set(TASK_ORDER)
    if unknown or not wanted:
        raise ValueError(f"tasks must be a non-empty subset of {TASK_ORDER}, got {sorted(wanted)}")
    for task in wanted & set(NOT_YET):
        raise ValueError(f"task {task!r}: {NOT_YET[task]}; build with tasks among {tuple(TASK_DECODERS)}")
    return tuple(t for t in TASK_ORDER if t in wanted)


class MultiTaskModel(nn.Module):
    """``encoder`` + the decoders of ``tasks`` (``semsegdecoder``, ``inssegdecoder``) + their per-dataset heads.

    ``background=True`` gives the semantic classifiers C+1 outputs (index 0 = background), MTP's released setting.
    ``decoder_args`` passes constructor arguments per task (``{"is": {"fc_out_channels": 256}}`` for small CPU
    models). In training mode ``forward`` returns the losses, in eval mode the predictions, as the original's.
    """

    def __init__(
        self,
        encoder: nn.Module,
        datasets: Iterable[DatasetSpec | tuple[str, int]] = SAMRS_DATASETS,
        tasks: Iterable[str] = ("ss", "is"),
        background: bool = True,
        decoder_args: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.datasets = _datasets(datasets)
        self.tasks = _tasks(tasks)
        self.background = background
        decoder_args = dict(decoder_args or {})
        if set(decoder_args) - set(self.tasks):
            extra = sorted(set(decoder_args) - set(self.tasks))
            raise ValueError(f"decoder_args for tasks that are not built: {extra}")
        self.encoder = encoder
        in_channels = list(encoder.out_channels)
        for task in self.tasks:
            decoder = TASK_DECODERS[task](in_channels, **decoder_args.get(task, {}))
            setattr(self, decoder.attribute, decoder)
            for kind, template in decoder.head_templates.items():
                for k, spec in enumerate(self.datasets, 1):
                    setattr(self, template.format(k=k), decoder.new_head(kind, spec.num_classes, background))

    def decoder(self, task: str) -> TaskDecoder:
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not built in this model (tasks: {self.tasks})")
        return getattr(self, TASK_DECODERS[task].attribute)

    def dataset_heads(self, task: str, index: int) -> dict[str, nn.Module]:
        """Dataset ``index``'s (0-based) predictors of ``task``, by kind."""
        decoder = self.decoder(task)
        return {kind: getattr(self, t.format(k=index + 1)) for kind, t in decoder.head_templates.items()}

    def encode(self, batches: Sequence[Batch]) -> list[list[Tensor]]:
        """One encoder pass over all datasets' images, split back per dataset."""
        if len(batches) != len(self.datasets):
            raise ValueError(f"{len(batches)} batches for {len(self.datasets)} datasets")
        sizes = [b.inputs.shape[0] for b in batches]
        maps = self.encoder(torch.cat([b.inputs for b in batches]))
        per_map = [m.split(sizes) for m in maps]
        return [[m[k] for m in per_map] for k in range(len(batches))]

    def forward_train(self, batches: Sequence[Batch]) -> dict[str, list[Losses]]:
        """Losses per task (in task order) and dataset; sum them with :func:`sum_losses`."""
        feats = self.encode(batches)
        return {
            task: self.decoder(task).forward_train(feats, batches, self._heads(task)) for task in self.tasks
        }

    @torch.no_grad()
    def predict(self, batches: Sequence[Batch]) -> dict[str, list[list[Any]]]:
        """Per task, dataset and image: semantic logits at ``ori_shape``, or instances (boxes, scores, labels,
        masks)."""
        feats = self.encode(batches)
        return {task: self.decoder(task).predict(feats, batches, self._heads(task)) for task in self.tasks}

    def forward(self, batches: Sequence[Batch]) -> dict[str, list[Any]]:
        return self.forward_train(batches) if self.training else self.predict(batches)

    def _heads(self, task: str) -> list[dict[str, nn.Module]]:
        return [self.dataset_heads(task, k) for k in range(len(self.datasets))]


def sum_losses(
    losses: Mapping[str, Sequence[Losses]], datasets: Sequence[DatasetSpec]
) -> tuple[Tensor, dict[str, Tensor]]:
    """MTP's ``parse_losses`` over every task and dataset: the unweighted sum, over tasks and datasets, of the means
    of the entries whose key contains ``"loss"`` (per-level lists summed), added in the original's order; and every
    entry (detached) for logging as ``"{task}/{dataset}/{key}"``."""
    total: Any = 0
    log: dict[str, Tensor] = {}
    for task, per_dataset in losses.items():
        task_total: Any = 0
        for spec, entries in zip(datasets, per_dataset):
            means = {k: v.mean() if isinstance(v, Tensor) else sum(x.mean() for x in v) for k, v in entries.items()}
            log.update({f"{task}/{spec.name}/{k}": m.detach() for k, m in means.items()})
            task_total = task_total + sum(m for k, m in means.items() if "loss" in k)
        total = total + task_total
    if not isinstance(total, Tensor):
        raise ValueError("no loss entries to sum")
    return total, log
