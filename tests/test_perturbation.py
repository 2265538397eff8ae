"""The AMP inner maximisation on its own: projection, exact restore, non-finite handling."""

import pytest
import torch
from helpers import (
    DictDataset,
    SequentialAMPTrainer,
    TinyClassifier,
    assert_params_close,
    project_,
    reference_amp,
    tiny_args,
)
from torch import nn

from amp_hf import AMP, AMPConfig, perturbed_weights, save_buffers


def quadratic_gradient(params, targets):
    """L(θ) = Σ ½‖θ_p − t_p‖², so ∇L = θ − t: the ascent is known in closed form."""

    def fn():
        loss = sum(0.5 * ((p - t) ** 2).sum() for p, t in zip(params, targets))
        return loss.detach(), torch.autograd.grad(loss, params)

    return fn


def test_per_tensor_projection_clips_each_tensor_to_its_own_ball():
    deltas = [torch.tensor([3.0, 4.0]), torch.tensor([0.1, 0.0])]
    norms = project_(deltas, epsilon=1.0, norm="tensor")
    torch.testing.assert_close(deltas[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(deltas[1], torch.tensor([0.1, 0.0]))  # inside the ball: untouched
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.1]))


def test_global_projection_scales_every_tensor_by_one_factor():
    deltas = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])]
    norms = project_(deltas, epsilon=1.0, norm="global")
    torch.testing.assert_close(deltas[0], torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(deltas[1], torch.tensor([0.0, 0.8]))
    torch.testing.assert_close(torch.linalg.vector_norm(norms), torch.tensor(1.0))


def test_relative_projection_scales_each_radius_by_the_weights_norm():
    deltas = [torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]), torch.tensor([1.0, 0.0])]
    theta_norms = torch.tensor([10.0, 10.0, 0.0])  # radii 1, 1 and 0 at ε = 0.1
    norms = project_(deltas, epsilon=0.1, norm="relative", theta_norms=theta_norms)
    torch.testing.assert_close(deltas[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(deltas[1], torch.tensor([0.3, 0.4]))  # inside its ball
    torch.testing.assert_close(deltas[2], torch.tensor([0.0, 0.0]))  # a tensor at zero is not perturbed
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.5, 0.0]))


def test_inside_the_block_the_weights_sit_at_theta_plus_delta():
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    q = torch.nn.Parameter(torch.tensor([0.0, 2.0]))
    fn = quadratic_gradient([p, q], [torch.zeros(2), torch.zeros(2)])
    config = AMPConfig(epsilon=10.0, inner_lr=0.5, inner_steps=2)
    with perturbed_weights([p, q], fn, config) as result:
        # Δ₁ = ½θ; at θ + Δ₁ = 1.5θ the gradient is 1.5θ, so Δ₂ = ½θ + ¾θ = 1.25θ and the weights are 2.25θ.
        torch.testing.assert_close(p.detach(), torch.tensor([2.25, 2.25]))
        torch.testing.assert_close(q.detach(), torch.tensor([0.0, 4.5]))
    assert result.clean_loss == pytest.approx(0.5 * (1 + 1 + 4))
    assert float(result.delta_norm) == pytest.approx(1.25 * (2 + 4) ** 0.5)
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("norm", ["tensor", "global"])
def test_projected_ascent_lands_on_the_ball(norm):
    # The last projection is fused into θ + factor·Δ: with the ball active, the weights must sit on its surface.
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    q = torch.nn.Parameter(torch.tensor([0.0, 0.5]))
    fn = quadratic_gradient([p, q], [torch.zeros(2), torch.zeros(2)])  # ∇ = θ
    for steps in (1, 2):
        with perturbed_weights([p, q], fn, AMPConfig(epsilon=1.0, inner_steps=steps, norm=norm)) as result:
            delta_p, delta_q = p.detach() - torch.tensor([3.0, 4.0]), q.detach() - torch.tensor([0.0, 0.5])
        if norm == "tensor":  # p's Δ is clipped to norm 1 along θ_p; q's is 0.5 (inside), then 1.5 clipped to 1
            torch.testing.assert_close(delta_p, torch.tensor([0.6, 0.8]))
            torch.testing.assert_close(delta_q, torch.tensor([0.0, 0.5 if steps == 1 else 1.0]))
        else:  # one factor for all: Δ ∥ θ and ‖Δ‖ = 1
            total = torch.linalg.vector_norm(torch.cat([delta_p, delta_q]))
            torch.testing.assert_close(total, torch.tensor(1.0))
            torch.testing.assert_close(delta_p / total, torch.tensor([3.0, 4.0]) / (25.25**0.5))
        assert float(result.delta_norm) == pytest.approx(
            float(torch.linalg.vector_norm(torch.cat([delta_p, delta_q]))), rel=1e-5
        )
    assert torch.equal(p.detach(), torch.tensor([3.0, 4.0])) and torch.equal(q.detach(), torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_restore_is_bit_exact(dtype):
    torch.manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(64, 33) * 3).to(dtype)) for _ in range(3)]
    before = [p.detach().clone() for p in params]
    fn = quadratic_gradient(params, [torch.randn(64, 33).to(dtype) for _ in params])
    with perturbed_weights(params, fn, AMPConfig(epsilon=0.37, inner_lr=0.9, inner_steps=3)):
        deltas = [p.detach() - b for p, b in zip(params, before)]
        assert all(d.abs().max() > 0 for d in deltas)
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    if dtype == torch.bfloat16:  # why a saved copy is needed: θ + Δ − Δ is not θ in bfloat16
        roundtrip = [(b + d) - d for b, d in zip(before, deltas)]
        assert any(not torch.equal(r, b) for r, b in zip(roundtrip, before))


@pytest.mark.parametrize("inner_lr", [1.0, 0.9])  # ζ = 1 skips the multiplication by ζ
def test_caller_kept_buffers_give_the_same_perturbation_and_are_reused(inner_lr):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 4)) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    fn = quadratic_gradient(params, [torch.randn(5, 4) for _ in params])
    config = AMPConfig(epsilon=0.3, inner_lr=inner_lr, inner_steps=2, norm="relative")
    with perturbed_weights(params, fn, config) as fresh:
        expected = [p.detach().clone() for p in params]
    buffers = save_buffers(params)
    storage = [b.data_ptr() for b in buffers]
    for _ in range(2):  # twice: the buffers are written again, not reallocated
        with perturbed_weights(params, fn, config, saved=buffers) as kept:
            for p, e in zip(params, expected):
                assert torch.equal(p.detach(), e)
        assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert float(kept.delta_norm) == float(fresh.delta_norm) > 0
    assert [b.data_ptr() for b in buffers] == storage and all(torch.equal(b, t) for b, t in zip(buffers, before))


def test_an_exception_inside_the_block_still_restores():
    p = torch.nn.Parameter(torch.ones(3))
    fn = quadratic_gradient([p], [torch.zeros(3)])
    with pytest.raises(KeyError), perturbed_weights([p], fn, AMPConfig()):
        assert not torch.equal(p.detach(), torch.ones(3))
        raise KeyError("descent failed")
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("at_step", [0, 1])
def test_non_finite_gradient_skips_the_perturbation(bad, at_step):
    p = torch.nn.Parameter(torch.ones(3))
    calls = []

    def fn():
        calls.append(1)
        grad = torch.full((3,), bad) if len(calls) == at_step + 1 else torch.ones(3)
        return torch.tensor(1.0), [grad]

    with perturbed_weights([p], fn, AMPConfig(inner_steps=2)) as result:
        assert torch.equal(p.detach(), torch.ones(3))  # trained at θ, unperturbed
    assert result.skipped and float(result.delta_norm) == 0.0


def test_disabled_config_or_no_parameters_never_calls_the_gradient():
    def fn():
        raise AssertionError("no pass expected")

    p = torch.nn.Parameter(torch.ones(2))
    with perturbed_weights([p], fn, AMPConfig(inner_steps=0)) as result:
        assert result.clean_loss is None
    with perturbed_weights([], fn, AMPConfig()):
        pass


# ------------------------------------------------------------------ expanded (stride-0) gradients from autograd
class ScaledBySum(TinyClassifier):
    """Logits scaled by `s.sum()`: `torch.autograd.grad` returns s's gradient as an expanded scalar (stride 0), a view
    in which every element is one memory location, so writing Δ into it in place is an error."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, x, labels=None):
        logits = self.fc2(torch.tanh(self.fc1(x))) * self.s.sum()
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


EXPANDED_CASES = {
    "inner_lr 0.5": dict(inner_lr=0.5),
    "two inner steps": dict(inner_steps=2),
    "elementwise ball": dict(norm="elementwise"),
}


def test_the_model_gives_an_expanded_gradient():
    model, data = ScaledBySum(), DictDataset(n=4)
    (grad,) = torch.autograd.grad(model(x=data.x, labels=data.y)["loss"], [model.s])
    assert grad.stride() == (0,)  # what the cases below depend on


@pytest.mark.parametrize("case", list(EXPANDED_CASES))
def test_expanded_gradient_in_a_loop_matches_the_reference(case):
    settings = dict(epsilon=0.05, **EXPANDED_CASES[case])
    model, data = ScaledBySum(), DictDataset(n=8)
    expected = reference_amp(ScaledBySum(), data, steps=2, batch_size=4, **settings)  # out-of-place Δ arithmetic
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = AMP(model, **{f"amp_{k}": v for k, v in settings.items()})
    for i in range(2):
        batch = {"x": data.x[4 * i : 4 * i + 4], "labels": data.y[4 * i : 4 * i + 4]}
        with amp.perturbed(batch) as result:
            model(**batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        assert float(result.delta_norm) > 0
    assert_params_close(model, expected)


@pytest.mark.parametrize("case", list(EXPANDED_CASES))
def test_expanded_gradient_in_the_trainer_matches_the_reference(tmp_path, case):
    settings = dict(epsilon=0.05, **EXPANDED_CASES[case])
    data = DictDataset(n=8)
    trainer = SequentialAMPTrainer(
        model=ScaledBySum(),
        args=tiny_args(tmp_path, max_steps=2, **{f"amp_{k}": v for k, v in settings.items()}),
        train_dataset=data,
    )
    trainer.train()
    assert_params_close(trainer.model, reference_amp(ScaledBySum(), data, steps=2, batch_size=4, **settings))
