import pytest
import torch
from torch import nn

from search.train.loop import Distillation, fit


def test_distillation_loss_is_zero_when_student_matches_teacher_and_alpha_is_one() -> None:
    logits = torch.randn(8, 10)
    kd = Distillation(nn.Identity(), temperature=4.0, alpha=1.0)
    assert kd.loss(logits, logits, torch.tensor(5.0)).item() < 1e-6


def test_distillation_loss_matches_a_hand_computed_value() -> None:
    import math

    student, teacher, temperature, alpha, hard = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0, 0.5, 1.0

    def softmax(logits: list[float]) -> list[float]:
        exps = [math.exp(v / temperature) for v in logits]
        return [e / sum(exps) for e in exps]

    p_teacher, p_student = softmax(teacher), softmax(student)
    kl = sum(t * (math.log(t) - math.log(s)) for t, s in zip(p_teacher, p_student, strict=True))
    expected = alpha * temperature**2 * kl + (1 - alpha) * hard
    kd = Distillation(nn.Identity(), temperature=temperature, alpha=alpha)
    value = kd.loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor(hard))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_blends_soft_and_hard_terms() -> None:
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    hard = torch.tensor(2.0)
    soft_only = Distillation(nn.Identity(), temperature=2.0, alpha=1.0).loss(
        student, teacher, hard
    )
    blended = Distillation(nn.Identity(), temperature=2.0, alpha=0.5).loss(student, teacher, hard)
    torch.testing.assert_close(blended, 0.5 * soft_only + 0.5 * hard)


def test_fit_with_a_teacher_pulls_the_student_towards_it() -> None:
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    inputs = torch.randn(64, 4)
    targets = teacher(inputs).argmax(1).detach()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), 16)

    def gap() -> float:
        probs = student(inputs).softmax(1) - teacher(inputs).softmax(1)
        return probs.abs().mean().item()

    gap_before = gap()
    fit(
        student, loader, epochs=30, lr=0.1, loss_fn=nn.functional.cross_entropy,
        distillation=Distillation(teacher, temperature=1.0, alpha=1.0),
    )  # fmt: skip
    assert gap() < 0.5 * gap_before


def test_fit_refuses_a_nan_loss() -> None:
    model = nn.Linear(2, 2)
    loader = [(torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(model, loader, epochs=1, lr=0.1, loss_fn=nn.functional.cross_entropy)  # type: ignore[arg-type]


def test_self_distillation_learns_from_the_students_moving_average() -> None:
    from search.train.loop import _move_average

    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = (teacher.weight + student.weight).detach() / 2
    _move_average(teacher, student, 0.5, step=100)
    assert torch.allclose(teacher.weight, expected)
    # early steps: the decay warms up, (1 + 1) / (10 + 1), the teacher follows closely
    follow = ((2 / 11) * teacher.weight + (9 / 11) * student.weight).detach()
    _move_average(teacher, student, 0.99, step=1)
    assert torch.allclose(teacher.weight, follow)
    # batch-norm statistics are averaged with the weights, not copied
    bn_teacher, bn_student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    bn_student.running_mean.fill_(4.0)
    _move_average(bn_teacher, bn_student, 0.5, step=100)
    assert torch.allclose(bn_teacher.running_mean, torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="exactly one"):
        Distillation(None, temperature=2.0, alpha=0.5)

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    inputs = torch.randn(64, 4)
    targets = (inputs[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), 16)
    fit(
        model, loader, epochs=3, lr=0.1, loss_fn=nn.functional.cross_entropy,
        distillation=Distillation(None, temperature=2.0, alpha=0.5, ema_decay=0.9),
    )  # fmt: skip
    assert not torch.equal(model.weight, before)


@pytest.mark.gpu
def test_fine_tuning_on_cuda_runs_in_mixed_precision_and_returns_to_the_cpu(tiny_task) -> None:
    from techniques.pruning import prune_channels

    teacher = tiny_task.build_model()
    student = prune_channels(teacher, tiny_task.example_inputs(1), ratio=0.25)
    before = [p.detach().clone() for p in student.parameters()]
    fit(student, tiny_task.data("train"), epochs=1, lr=0.01, loss_fn=tiny_task.loss,
        distillation=Distillation(teacher, temperature=4.0, alpha=0.5), device="cuda")  # fmt: skip
    assert all(p.device.type == "cpu" for p in student.parameters())
    assert all(p.device.type == "cpu" for p in teacher.parameters())  # the caller's, untouched
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
