"""TrainConfig: the one typed description of a training run.

Field names are kohya sd-scripts' flag names, so `--network_dim 32` on the command line, `network_dim = 32`
in a kohya TOML and the web UI's form all land here. Each setting is declared once (`fields.flag`): its
description feeds `--help`, the UI tooltip and the docs; its `ss_key` the LoRA file's metadata.

Settings are declared by concept, one class per file, and TrainConfig is all of them. Two are scopes
as well: `SubsetOptions` (captions and augmentation) may be set per image folder and `DatasetOptions`
(resolution, batch size, buckets) per dataset in a dataset TOML; as flags they apply to every folder.
The others are run-wide: model, data sources and caches, network, optimizer, schedule, training,
several processes, output. The rules between settings of different classes live here.
"""

from __future__ import annotations

from pydantic import ConfigDict, model_validator

from loracraft.config.data_options import DataOptions
from loracraft.config.dataset_options import DatasetOptions
from loracraft.config.distributed_options import DistributedOptions
from loracraft.config.logging_options import LoggingOptions
from loracraft.config.loss_options import LossOptions
from loracraft.config.model_options import ModelOptions
from loracraft.config.network_options import NetworkOptions
from loracraft.config.optimizer_options import OptimizerOptions
from loracraft.config.output_options import OutputOptions
from loracraft.config.rules import RuleViolation, run_conflict_with_subset
from loracraft.config.sample_options import SampleOptions
from loracraft.config.schedule_options import ScheduleOptions, optimizer_schedule_conflict
from loracraft.config.subset_options import SubsetOptions
from loracraft.config.training_options import TrainingOptions
from loracraft.config.validation_options import ValidationOptions


class TrainConfig(
    ValidationOptions,
    SampleOptions,
    LoggingOptions,
    OutputOptions,
    DistributedOptions,
    TrainingOptions,
    LossOptions,
    ScheduleOptions,
    OptimizerOptions,
    NetworkOptions,
    DataOptions,
    ModelOptions,
    SubsetOptions,
    DatasetOptions,
):
    """Every setting of one LoRA training run, in kohya's names and units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _run_rules(self) -> TrainConfig:
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise RuleViolation(
                "`network_train_unet_only` and `network_train_text_encoder_only` exclude each other; pick one"
            )
        # As flags, the subset options apply to every folder: the same rules as for a TOML subset.
        conflict = run_conflict_with_subset(self, self) or optimizer_schedule_conflict(self)
        if conflict is not None:
            raise conflict
        if self.network_module == "networks.oft" and self.network_train_text_encoder_only:
            raise RuleViolation(
                "`network_train_text_encoder_only` with `network_module` networks.oft leaves nothing to train: "
                "kohya's OFT adapts the U-Net only"
            )
        if self.cache_text_encoder_outputs and self.train_text_encoder:
            raise RuleViolation(
                "`cache_text_encoder_outputs` needs a frozen text encoder: add `network_train_unet_only`"
            )
        return self

    @property
    def train_unet(self) -> bool:
        return not self.network_train_text_encoder_only

    @property
    def train_text_encoder(self) -> bool:
        # SDXL trains its text encoders when either rate is above 0 (`--text_encoder_lr 0 1e-5`: TE2 only).
        # kohya's OFT (networks.oft) has no text-encoder modules at all.
        return (
            not self.network_train_unet_only
            and max(self.effective_text_encoder_lrs) > 0
            and self.network_module != "networks.oft"
        )
