"""The plug-in interface every task of the multi-task framework implements (spec §6.1)."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

from torch import Tensor, nn

from mtp_core.models.multitask.structures import Batch

Losses = dict[str, Any]  # loss name -> Tensor, or a list of Tensors (one per level); "acc*" entries are logged only


class TaskDecoder(nn.Module):
    """One task: a decoder shared by all datasets, and the per-dataset predictors it is given at each call.

    The framework registers the decoder as ``attribute`` and, for each ``kind`` of ``head_templates`` in order, one
    predictor per dataset named ``template.format(k=k)`` (k = 1..n in dataset order) at its top level, as MTP's
    ``MutliTaskPretrnFramework`` names them; state_dict names and order then equal the released file's.
    ``forward_train`` and ``predict`` take every dataset's encoder features at once, so a task can run its stages
    across datasets in the original's order (which fixes where the random samplers draw).
    """

    task: ClassVar[str]
    attribute: ClassVar[str]
    head_templates: ClassVar[dict[str, str]]

    def new_head(self, kind: str, num_classes: int, background: bool) -> nn.Module:
        """A fresh predictor of ``kind`` for a dataset of ``num_classes`` object classes."""
        raise NotImplementedError

    def forward_train(
        self, feats: Sequence[Sequence[Tensor]], batches: Sequence[Batch], heads: Sequence[Mapping[str, nn.Module]]
    ) -> list[Losses]:
        """One loss dict per dataset; ``feats[k]`` are dataset k's encoder maps, ``heads[k]`` its predictors."""
        raise NotImplementedError

    def predict(
        self, feats: Sequence[Sequence[Tensor]], batches: Sequence[Batch], heads: Sequence[Mapping[str, nn.Module]]
    ) -> list[list[Any]]:
        """Per dataset, one result per image."""
        raise NotImplementedError
