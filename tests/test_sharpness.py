"""Sharpness measures against closed forms, restoration of weights and modes, and the evaluation callback."""

from __future__ import annotations

import pytest
import torch
from helpers import DictDataset, TinyClassifier, params_of, tiny_args
from torch import nn

from amp_hf import AMPTrainer
from amp_hf.sharpness import (
    SharpnessCallback,
    filter_normalised_direction,
    hessian_top_eigenvalue,
    loss_along_direction,
    worst_case_loss_increase,
)


class Quadratic(nn.Module):
    """L(θ) = ½ (θ − c)ᵀ A (θ − c) + wᵀθ over two parameter tensors; the batch carries a scale s (mean over batches)."""

    def __init__(self, a: torch.Tensor, w: torch.Tensor | None = None) -> None:
        super().__init__()
        n = a.shape[0]
        self.a = a
        self.w = torch.zeros(n, dtype=a.dtype) if w is None else w
        self.c = torch.linspace(-1, 1, n, dtype=a.dtype)
        self.first = nn.Parameter(torch.ones(n // 2, dtype=a.dtype))
        self.second = nn.Parameter(torch.full((n - n // 2,), 0.5, dtype=a.dtype))

    def theta(self) -> torch.Tensor:
        return torch.cat([self.first, self.second])

    def forward(self, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.theta() - self.c
        return {"loss": scale.mean() * (0.5 * x @ self.a @ x + self.w @ self.theta())}


def spd(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=torch.Generator().manual_seed(seed))
    )
    return (q @ torch.diag(torch.tensor(eigenvalues)) @ q.T).double()


BATCHES = [{"scale": torch.tensor([1.0], dtype=torch.float64)}, {"scale": torch.tensor([3.0], dtype=torch.float64)}]


def test_hessian_top_eigenvalue_of_a_quadratic():
    a = spd([7.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    value = hessian_top_eigenvalue(Quadratic(a), BATCHES, iters=100, tol=1e-6)
    assert value == pytest.approx(2.0 * 7.0, rel=0.01)  # the batches' mean scale is 2


@pytest.mark.parametrize("norm", ["tensor", "global"])
@pytest.mark.parametrize("epsilon", [0.05, 10.0])  # the ball binds / does not bind
def test_worst_case_increase_of_a_linear_loss(norm, epsilon):
    w = torch.tensor([3.0, 4.0, 1.0, 2.0], dtype=torch.float64)
    model = Quadratic(torch.zeros(4, 4, dtype=torch.float64), w)
    g = 2.0 * w  # ∇ of the mean loss: the mean scale is 2
    parts = [g[:2], g[2:]] if norm == "tensor" else [g]
    # one ascent step: Δ = ζg clipped to ε per ball; the loss rises by gᵀΔ = ‖g_b‖·min(ζ‖g_b‖, ε) per ball b
    expected = sum(float(p.norm()) * min(0.5 * float(p.norm()), epsilon) for p in parts)
    got = worst_case_loss_increase(model, BATCHES, epsilon=epsilon, inner_lr=0.5, norm=norm)
    assert got == pytest.approx(expected, rel=1e-9)


def test_worst_case_increase_of_a_linear_loss_relative_ball():
    w = torch.tensor([3.0, 4.0, 1.0, 2.0], dtype=torch.float64)
    model = Quadratic(torch.zeros(4, 4, dtype=torch.float64), w)  # θ = (1, 1 | 0.5, 0.5)
    g = 2.0 * w
    radii = [0.1 * 2**0.5, 0.1 * 0.5**0.5]  # ε·‖θ_p‖
    expected = sum(float(p.norm()) * min(0.5 * float(p.norm()), r) for p, r in zip([g[:2], g[2:]], radii))
    got = worst_case_loss_increase(model, BATCHES, epsilon=0.1, inner_lr=0.5, norm="relative")
    assert got == pytest.approx(expected, rel=1e-9)


def test_worst_case_increase_of_a_quadratic():
    a = spd([4.0, 2.0, 1.0, 0.5])
    model = Quadratic(a)
    x = model.theta().detach() - model.c
    g = 2.0 * a @ x
    delta = 0.1 * g
    delta = delta * min(1.0, 0.3 / float(delta.norm()))  # global ball, ε = 0.3
    expected = float(g @ delta + delta @ a @ delta)  # 2·[½(x+Δ)ᵀA(x+Δ) − ½xᵀAx]
    got = worst_case_loss_increase(model, BATCHES, epsilon=0.3, inner_lr=0.1, norm="global")
    assert got == pytest.approx(expected, rel=1e-9)


def test_loss_along_a_given_direction_is_the_parabola():
    a = spd([2.0, 1.0, 0.5, 0.25])
    model = Quadratic(a)
    d = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)]
    x, dv = model.theta().detach() - model.c, torch.cat(d)
    alphas = [-1.0, 0.0, 0.5]
    expected = [2.0 * 0.5 * float((x + t * dv) @ a @ (x + t * dv)) for t in alphas]
    assert loss_along_direction(model, BATCHES, alphas=alphas, direction=d) == pytest.approx(expected, rel=1e-12)


def test_filter_normalised_direction():
    model = TinyClassifier()
    d1, d2 = filter_normalised_direction(model, seed=3), filter_normalised_direction(model, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(d1, d2))  # seeded
    for p, d in zip(model.parameters(), d1):
        if p.dim() == 1:
            assert torch.count_nonzero(d) == 0
        else:
            torch.testing.assert_close(d.norm(dim=1), p.detach().norm(dim=1))


def classifier_batches():
    data = DictDataset(n=16)
    return [{"x": data.x[i : i + 8], "labels": data.y[i : i + 8]} for i in (0, 8)]


@pytest.mark.parametrize(
    "measure",
    [
        lambda m, b: hessian_top_eigenvalue(m, b, iters=3),
        lambda m, b: worst_case_loss_increase(m, b, epsilon=0.5, inner_steps=2),
        lambda m, b: loss_along_direction(m, b, alphas=[-0.5, 0.5]),
    ],
    ids=["hessian", "amp", "landscape"],
)
def test_weights_and_modes_are_restored(measure):
    model = TinyClassifier(batchnorm=True)
    model.train()
    model.fc2.eval()  # a mixed state, to be kept as it is
    before = params_of(model)
    stats = model.norm.running_mean.clone()
    measure(model, classifier_batches())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.training and model.fc1.training and model.norm.training and not model.fc2.training
    assert torch.equal(model.norm.running_mean, stats)  # measured in eval mode: statistics untouched


def test_sharper_at_high_loss_curvature_than_at_flat_one():
    sharp, flat = Quadratic(spd([50.0, 1.0, 1.0, 1.0])), Quadratic(spd([1.0, 1.0, 1.0, 1.0]))
    assert hessian_top_eigenvalue(sharp, BATCHES) > 10 * hessian_top_eigenvalue(flat, BATCHES)
    assert worst_case_loss_increase(sharp, BATCHES, epsilon=0.1) > worst_case_loss_increase(flat, BATCHES, epsilon=0.1)


def test_callback_logs_sharpness_at_each_evaluation(tmp_path):
    def run(callbacks):
        trainer = AMPTrainer(
            model=TinyClassifier(),
            args=tiny_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8),
            train_dataset=DictDataset(),
            eval_dataset=DictDataset(n=16, seed=5),
            callbacks=callbacks,
        )
        trainer.train()
        return trainer

    with_cb = run([SharpnessCallback(num_batches=2, hessian_iters=5)])
    evals = [e for e in with_cb.state.log_history if "eval_loss" in e]
    assert len(evals) == 2
    for entry in evals:
        assert entry["eval_sharpness_hessian"] > 0 and entry["eval_sharpness_amp"] > 0
    metrics = with_cb.evaluate()
    assert {"eval_sharpness_hessian", "eval_sharpness_amp"} <= metrics.keys()
    # measuring changes nothing about training: same weights as a run without the callback
    without_cb = run([])
    assert all(torch.equal(a, b) for a, b in zip(with_cb.model.parameters(), without_cb.model.parameters()))


def test_callback_with_its_trainer_logs_through_every_backend(tmp_path):
    from transformers import TrainerCallback

    reported = []

    class Backend(TrainerCallback):  # stands for a report_to integration
        def on_log(self, args, state, control, logs=None, **kwargs):
            reported.append(dict(logs or {}))

    trainer = AMPTrainer(
        model=TinyClassifier(),
        args=tiny_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2),
        train_dataset=DictDataset(),
        eval_dataset=DictDataset(n=16, seed=5),
        callbacks=[Backend()],
    )
    trainer.add_callback(SharpnessCallback(hessian_iters=3, trainer=trainer))
    trainer.train()
    assert any("eval_sharpness_hessian" in logs and "eval_sharpness_amp" in logs for logs in reported)


@pytest.mark.parametrize(
    "measure",
    [
        hessian_top_eigenvalue,
        lambda m, b: worst_case_loss_increase(m, b, epsilon=0.5),
        lambda m, b: loss_along_direction(m, b, alphas=[0.5]),
    ],
    ids=["hessian", "amp", "landscape"],
)
def test_sharded_models_are_refused_with_a_clear_error(measure):
    model = TinyClassifier()
    model.fc1.weight.ds_tensor, model.fc1.weight.ds_status = torch.zeros(1), "NOT_AVAILABLE"  # as ZeRO-3 marks it
    with pytest.raises(ValueError, match=r"sharded \(FSDP2 or DeepSpeed ZeRO-3\).*unsharded copy"):
        measure(model, classifier_batches())
