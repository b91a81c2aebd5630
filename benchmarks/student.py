"""The distillation-alone reference: a width-0.5 student trained from scratch by the baseline.

Half the baseline's width multiplier (channel counts rounded as the architecture rounds
them), the baseline's own training recipe (epochs, learning rate, seed), and the soft
targets of the trained baseline at the distillation lever's reference setting (T=4,
alpha=0.9). No weights are inherited: this is distillation as the textbooks use it, the
reference the search's inherited-weight levers are compared with.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from search.core.objective import count_macs_and_params, deploy_baseline
from search.core.profile import Target
from search.tasks.digits import DigitsTask
from search.tasks.mobilenetv2 import MobileNetV2
from search.train.loop import Distillation, fit
from techniques.distillation import REFERENCE

WIDTH_FACTOR = 0.5


def distilled_student(task: DigitsTask, teacher: nn.Module, folder: Path, runtime: str) -> Target:
    """Train the student, export it as a trial would be, and count its MACs."""
    config = task.config
    torch.manual_seed(config.seed)
    student = MobileNetV2(replace(config.model, width_mult=config.model.width_mult * WIDTH_FACTOR))
    distillation = Distillation(
        teacher.eval(),
        temperature=float(REFERENCE["distill.temperature"]),
        alpha=float(REFERENCE["distill.alpha"]),
    )
    fit(
        student,
        task.data("train"),
        epochs=config.epochs,
        lr=config.lr,
        loss_fn=task.loss,
        distillation=distillation,
    )
    student.eval()
    macs, params = count_macs_and_params(student, task.example_inputs(1))
    artifact = deploy_baseline(student, task, folder / "student", runtime)
    return Target(f"distilled width-{WIDTH_FACTOR:g} student", artifact, params=params, macs=macs)
