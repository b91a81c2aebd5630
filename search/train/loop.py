"""Training loops shared by the baseline and by recovery fine-tuning."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from search.common.interrupt import raise_if_interrupted

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# called after each epoch with (epoch from 0, mean loss); returning True stops the training
EpochCallback = Callable[[int, float], bool | None]


@dataclass(frozen=True)
class Distillation:
    """Soft targets from a teacher during fine-tuning (Hinton et al., 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * hard_loss(student, targets)
    The T^2 keeps the soft term's gradients on the scale of the hard term's. On the digits
    model pruned by 40%, five epochs with T=4, alpha=0.9 recovered 0.983-0.989 validation
    accuracy over four seeds, against 0.972-0.983 with the hard loss alone.
    """

    teacher: nn.Module | None  # None: the student's own moving average (``ema_decay``)
    temperature: float = 4.0
    alpha: float = 0.9
    # Feature distillation (FitNets, Romero et al., 2015): the student's outputs at these
    # named layers (the ends of stages) are pulled towards the teacher's, through 1x1
    # adapters where pruning left fewer channels; 0 leaves it off.
    feature_weight: float = 0.0
    feature_layers: tuple[str, ...] = ()
    # Self-distillation (mean teacher): the teacher is a copy of the student taken when
    # fine-tuning starts, moved towards it after every step: t = d * t + (1 - d) * s.
    # That copy starts as bad as the student, so its weight ramps up as in Tarvainen and
    # Valpola (2017): alpha * exp(-5 (1 - p)^2) over the first ``EMA_RAMP_UP`` of the steps.
    # Without the ramp, the pruned digits model (alpha 0.9) collapsed to 0.13 accuracy.
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if (self.teacher is None) == (self.ema_decay is None):
            raise ValueError("Distillation takes a teacher or an ema_decay, exactly one")

    def loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        hard: torch.Tensor,
        *,
        progress: float = 1.0,
    ) -> torch.Tensor:
        """The blended loss; ``progress`` (share of the steps done) ramps an EMA teacher in."""
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean"
        )
        alpha = self.alpha * (ramp_up(progress) if self.ema_decay is not None else 1.0)
        return alpha * t * t * soft + (1 - alpha) * hard


EMA_RAMP_UP = 0.3  # share of the fine-tuning steps over which an EMA teacher's weight grows

# The recovery fine-tune's peak learning rate by the task's optimizer (``task.optimizer``):
# SGD at half the digits baseline's training peak; AdamW at the digits transformer's training
# peak (pruned by 60%, ten epochs recovered 0.922 validation accuracy at 2e-3 against 0.911
# at 5e-4; unpruned 0.925). The ``ft`` lever may search gentler ones (techniques/finetune_lr.py).
RECOVERY_LR = {"sgd": 0.05, "adamw": 2e-3}


def recovery_lr(optimizer: str) -> float:
    """The task's recovery fine-tuning rate for its optimizer (SGD's for any other name)."""
    return RECOVERY_LR.get(optimizer, RECOVERY_LR["sgd"])


def ramp_up(progress: float) -> float:
    """Mean teacher's sigmoid-shaped ramp: exp(-5 (1 - p / EMA_RAMP_UP)^2), 1 after it."""
    share = min(max(progress / EMA_RAMP_UP, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - share) ** 2)


class FeatureMatch:
    """Forward hooks on the same-named layers of student and teacher, and the loss between.

    loss = mean over layers of ||adapter(student) - teacher||^2 / ||teacher||^2 (per
    element), a relative error, so one weight suits layers of any scale. Adapters are 1x1
    convolutions (student channels -> teacher channels; none where they already match),
    trained with the student and dropped after fine-tuning: the deployed model never has them.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, layers: tuple[str, ...], sample: torch.Tensor
    ) -> None:
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, torch.Tensor] = {}
        self._hooks = [
            model.get_submodule(name).register_forward_hook(self._keep(store, name))
            for model, store in ((student, self.student_out), (teacher, self.teacher_out))
            for name in layers
        ]
        was_training = student.training
        with torch.no_grad():  # one batch through both, to learn the channel counts
            student.eval()
            student(sample)
            teacher(sample)
        student.train(was_training)
        self.adapters = nn.ModuleDict()
        for index, name in enumerate(layers):
            s_channels = self.student_out[name].shape[1]
            t_channels = self.teacher_out[name].shape[1]
            adapter: nn.Module = nn.Identity()
            if s_channels != t_channels and self.student_out[name].dim() == 4:
                adapter = nn.Conv2d(s_channels, t_channels, 1, bias=False)
            elif s_channels != t_channels:
                adapter = nn.Linear(s_channels, t_channels, bias=False)
            self.adapters[str(index)] = adapter
        self.layers = layers

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
        def hook(
            _module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            store[name] = output

        return hook

    def loss(self) -> torch.Tensor:
        terms = []
        for index, name in enumerate(self.layers):
            student = self.adapters[str(index)](self.student_out[name])
            teacher = self.teacher_out[name].detach()
            if teacher.dim() == 4 and teacher.shape[-2:] != student.shape[-2:]:
                # a student that runs on a smaller input (techniques.resolution) is
                # compared with the teacher's map averaged down to its grid
                teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
            terms.append(F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-8))
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


ModelStep = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class Recipe:
    """How a compressed model is fine-tuned; training-stage techniques refine it.

    ``prepare`` steps run on the model before training (e.g. add LoRA adapters), ``finish``
    steps after it (e.g. merge them), so what is exported is a plain model again.
    """

    epochs: int
    lr: float
    distillation: Distillation | None = None
    optimizer: str = "sgd"  # "adamw" for a task whose model trains with it (transformers)
    prepare: tuple[ModelStep, ...] = ()
    finish: tuple[ModelStep, ...] = ()


def fit(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    loss_fn: LossFn,
    distillation: Distillation | None = None,
    on_epoch: EpochCallback | None = None,
    optimizer: str = "sgd",
    device: str = "cpu",
) -> nn.Module:
    """Train ``model`` in place with SGD + Nesterov momentum and a cosine schedule.

    Args:
        epochs: full passes over ``loader``; 0 leaves the model unchanged.
        lr: peak learning rate.
        optimizer: ``sgd`` (CNNs) or ``adamw`` (weight decay 0.05, for transformers, which
            SGD trains poorly from scratch).
        distillation: when given, the hard ``loss_fn`` is blended with soft targets.
        on_epoch: called with ``(epoch, mean_loss)`` after each epoch, for curves; when
            it returns True the training stops there (the learning rate having followed
            the schedule planned for all ``epochs``), as successive halving stops a
            hopeless candidate (``search.core.rungs``).
        device: where to train; on ``cuda`` the forward passes run in bf16 autocast
            (mixed precision; weights and optimizer state stay float32) and the model
            comes back to the CPU, where it is exported.

    Raises:
        FloatingPointError: the loss became NaN or infinite (the trial should fail).
    """
    if epochs == 0:
        return model.eval()
    model.to(device)
    teacher = None
    if distillation is not None:
        teacher = distillation.teacher
        if teacher is None:  # self-distillation: the student's moving average teaches
            teacher = _frozen_copy(model)
        elif device != "cpu":  # the caller's teacher (the base model) stays where it is
            teacher = copy.deepcopy(teacher).to(device)
    features = None
    if distillation is not None and teacher is not None and distillation.feature_weight > 0:
        sample = next(iter(loader))[0]
        features = FeatureMatch(model, teacher, distillation.feature_layers, sample.to(device))
        features.adapters.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if features is not None:
        trainable += list(features.adapters.parameters())
    steps = epochs * len(loader)
    opt = _optimizer(optimizer, trainable, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    model.train()
    step = 0
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for batch_inputs, batch_targets in loader:
                raise_if_interrupted()  # a Ctrl-C swallowed by a destructor stops here
                inputs, targets = batch_inputs.to(device), batch_targets.to(device)
                opt.zero_grad(set_to_none=True)
                with _mixed_precision(device):
                    outputs = model(inputs)
                    loss = loss_fn(outputs, targets)
                    if distillation is not None and teacher is not None:
                        with torch.no_grad():
                            teacher_outputs = teacher(inputs)
                        loss = distillation.loss(
                            outputs, teacher_outputs, loss, progress=step / steps
                        )
                        if features is not None:
                            loss = loss + distillation.feature_weight * features.loss()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch}")
                loss.backward()
                opt.step()
                scheduler.step()
                step += 1
                if distillation is not None and distillation.ema_decay is not None:
                    assert teacher is not None
                    _move_average(teacher, model, distillation.ema_decay, step)
                total += loss.item() * len(targets)
                count += len(targets)
            if on_epoch is not None and on_epoch(epoch, total / max(count, 1)):
                break
    finally:
        if features is not None:
            features.remove()
        model.to("cpu")
    return model.eval()


def _mixed_precision(device: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA (no loss scaling needed: bf16 keeps float32's range)."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


OPTIMIZERS = ("sgd", "adamw")


def _optimizer(name: str, parameters: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.05)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    raise ValueError(f"optimizer {name!r} is unknown: use one of {OPTIMIZERS}")


def _frozen_copy(model: nn.Module) -> nn.Module:
    """The EMA teacher's start: the student as it is, in eval mode, without gradients."""
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def _move_average(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> None:
    """teacher = d * teacher + (1 - d) * student, for weights and batch-norm statistics.

    As timm's ModelEmaV2: the statistics are averaged with the weights they belong to
    (copying the student's current ones into a teacher whose weights lag made its
    outputs meaningless: the pruned digits model collapsed to 0.11 accuracy), and ``d``
    warms up as (1 + step) / (10 + step), so the early teacher follows the student.
    """
    d = min(decay, (1 + step) / (10 + step))
    for mine, theirs in zip(teacher.parameters(), student.parameters(), strict=True):
        mine.mul_(d).add_(theirs.detach(), alpha=1 - d)
    for kept, current in zip(teacher.buffers(), student.buffers(), strict=True):
        if kept.is_floating_point():
            kept.mul_(d).add_(current, alpha=1 - d)
        else:
            kept.copy_(current)  # counters


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager outputs and targets over a loader; for references, not for reported numbers."""
    model.eval()
    device = next(model.parameters()).device
    outputs, targets = [], []
    for inputs, batch_targets in loader:
        outputs.append(model(inputs.to(device)).float().cpu())
        targets.append(batch_targets)
    return torch.cat(outputs), torch.cat(targets)
