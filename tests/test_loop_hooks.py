"""`amp_hf.AMP`'s blocks and the optimizers of a loop: what a block does to optimizers that are not its own, to a
second block of the same object, to steps it cannot take from θ, and how it counts optimizer steps.

Each loop is checked against the same loop written in plain PyTorch (`helpers.reference_perturbed`), so a block that
let another model's optimizer put its weights back at θ (plain ERM) shows as a difference in the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from helpers import (
    DictDataset,
    TinyClassifier,
    assert_params_close,
    assert_params_far,
    params_of,
    reference_perturbed,
    steps_in_backward,
)
from torch import nn
from torch.optim import optimizer as torch_optimizer
from torch.utils.data import DataLoader

from amp_hf import AMP

EPSILON = 0.05


def batch_of(data: DictDataset, i: int, size: int = 4) -> dict[str, torch.Tensor]:
    rows = slice(i * size, (i + 1) * size)
    return {"x": data.x[rows], "labels": data.y[rows]}


def assert_at(model: nn.Module, theta: dict[str, torch.Tensor], what: str) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, theta[name]), f"{what}: {name} is not θ bit for bit"


# -------------------------------------------------------------------------------------------- 1. one object, nested
def test_nesting_blocks_of_one_object_is_refused_and_theta_restored():
    """The inner block would save θ + Δ₁ as 'θ' into the buffers both share, and the outer exit would 'restore' it."""
    model = TinyClassifier()
    amp = AMP(model, amp_epsilon=EPSILON)
    batch = batch_of(DictDataset(n=8), 0)
    theta = params_of(model)
    with pytest.raises(RuntimeError, match=r"(?i)nest|already"), amp.perturbed(batch), amp.perturbed(batch):
        pass
    assert_at(model, theta, "after the refused nested block")


# ------------------------------------------------------------------------------------------ 2. hooks of the object
def generator_and_discriminator() -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    return nn.Linear(3, 2), nn.Linear(2, 1)


def generator_loss(g: nn.Module, d: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(-d(g(z))).mean()


def discriminator_loss(g: nn.Module, d: nn.Module, z: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(-d(real)).mean() + nn.functional.softplus(d(g(z).detach())).mean()


def gan_loop(make_block: Callable[[nn.Module, nn.Module], Callable], steps: int = 3) -> nn.Module:
    """A GAN step as such loops write it: inside G's block D takes its own step, then G's loss and backward; G's
    optimizer steps after the block. `make_block(G, D)` returns `block(z)`, G's AMP block for noise z."""
    g, d = generator_and_discriminator()
    opt_g, opt_d = torch.optim.SGD(g.parameters(), lr=0.5), torch.optim.SGD(d.parameters(), lr=0.5)
    block = make_block(g, d)
    noise = torch.Generator().manual_seed(1)
    for _ in range(steps):
        z, real = torch.randn(8, 3, generator=noise), torch.randn(8, 2, generator=noise) + 2.0
        with block(z):
            opt_d.zero_grad()
            discriminator_loss(g, d, z, real).backward()
            opt_d.step()  # D is not under AMP: its step must leave G at θ + Δ
            opt_g.zero_grad()
            generator_loss(g, d, z).backward()
        opt_g.step()
    return g


def test_gan_discriminator_step_inside_the_generators_block_leaves_the_generator_perturbed():
    def with_amp(g, d):
        amp = AMP(g, amp_epsilon=EPSILON, loss_fn=lambda module, z: generator_loss(module, d, z))
        return amp.perturbed

    def reference(g, d):
        return lambda z: reference_perturbed(list(g.parameters()), lambda: generator_loss(g, d, z), EPSILON)

    trained = gan_loop(with_amp)
    assert_params_close(trained, gan_loop(reference))
    assert_params_far(trained, gan_loop(lambda g, d: lambda z: contextlib.nullcontext()), what="G trained as ERM")


def test_two_objects_nested_each_model_gets_its_own_reference_step():
    """Two models, two `AMP` objects, one block inside the other; B steps inside its block (the no_trainer shape),
    which must put only B back at θ: A's backward after it is still taken at θ_A + Δ_A."""
    data = DictDataset(n=12)

    def loop(make_blocks: Callable, step_inside: bool) -> tuple[nn.Module, nn.Module]:
        a, b = TinyClassifier(seed=0), TinyClassifier(seed=1)
        opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
        block_a, block_b = make_blocks(a, b)
        for i in range(3):
            batch = batch_of(data, i)
            with block_a(batch), block_b(batch):
                b(**batch)["loss"].backward()
                if step_inside:
                    opt_b.step()
                a(**batch)["loss"].backward()
            if not step_inside:
                opt_b.step()  # the reference: from θ_B, with the gradient taken at θ_B + Δ_B, as a step inside does
            opt_a.step()
            opt_a.zero_grad()
            opt_b.zero_grad()
        return a, b

    def with_amp(a, b):
        return AMP(a, amp_epsilon=EPSILON).perturbed, AMP(b, amp_epsilon=EPSILON).perturbed

    def reference(a, b):
        def block(model):
            return lambda batch: reference_perturbed(list(model.parameters()), lambda: model(**batch)["loss"], EPSILON)

        return block(a), block(b)

    def erm(a, b):
        return (lambda batch: contextlib.nullcontext(),) * 2

    a, b = loop(with_amp, step_inside=True)
    ref_a, ref_b = loop(reference, step_inside=False)
    erm_a, erm_b = loop(erm, step_inside=False)
    assert_params_close(b, ref_b)
    assert_params_close(a, ref_a)
    assert_params_far(a, erm_a, what="A trained as ERM")
    assert_params_far(b, erm_b, what="B trained as ERM")


def step_hooks(optimizer: torch.optim.Optimizer) -> list[Callable]:
    """Every optimizer-step hook that can act on `optimizer`'s steps: the global ones and its own."""
    return [
        *torch_optimizer._global_optimizer_pre_hooks.values(),
        *torch_optimizer._global_optimizer_post_hooks.values(),
        *optimizer._optimizer_step_pre_hooks.values(),
        *optimizer._optimizer_step_post_hooks.values(),
    ]


def test_step_hooks_are_registered_once_per_object_not_per_block():
    """New hook closures on every block make a compiled `optimizer.step` recompile on every block (until dynamo
    gives up): the hooks in force in block 2 must be the same in block 6 (equal: a bound method of the object is
    a new object on each access, but equal to the last), and none pile up."""
    model = TinyClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = AMP(model, amp_epsilon=EPSILON)
    data = DictDataset(n=24)
    seen, after = [], []
    for i in range(6):
        batch = batch_of(data, i)
        with amp.perturbed(batch):
            seen.append(step_hooks(optimizer))
            model(**batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
        after.append(len(step_hooks(optimizer)))
    assert len(set(after)) == 1, f"hooks pile up block after block: {after}"
    assert len(seen[1]) == len(seen[-1]) and all(x == y for x, y in zip(seen[1], seen[-1])), (
        "the step hooks in force differ from block to block (registered anew on each)"
    )


# ------------------------------------------------------------------------------ 3. steps that cannot start from θ
def test_closure_step_inside_the_block_is_refused():
    """`step(closure)` re-evaluates the loss inside the step, after θ was put back: it would train plain ERM."""
    model = TinyClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = AMP(model, amp_epsilon=EPSILON)
    batch = batch_of(DictDataset(n=4), 0)
    theta = params_of(model)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="closure"), amp.perturbed(batch):
        optimizer.step(closure)
    assert_at(model, theta, "after the refused closure step")


def test_optimizer_stepping_inside_backward_is_refused():
    """Such a step would run at θ + Δ in the middle of autograd (or be undone by the restore of θ)."""
    model = TinyClassifier()
    steps_in_backward(model)
    amp = AMP(model, amp_epsilon=EPSILON)
    batch = batch_of(DictDataset(n=4), 0)
    theta = params_of(model)
    with pytest.raises(RuntimeError, match="backward") as refused, amp.perturbed(batch):
        model(**batch)["loss"].backward()
    assert "inplace" not in str(refused.value)  # AMP's own refusal, not autograd's crash
    assert_at(model, theta, "after the refused step in backward")


# ------------------------------------------------------------------------------------------ 7. counting the steps
def loop_in_order(accelerator, amp_first: bool) -> tuple[nn.Module, AMP, int, list[bool]]:
    """GA = 2, amp_interval = 2, six micro-batches; the context managers in the given order."""
    model = TinyClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(DictDataset(n=24), batch_size=4, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    taken = []
    optimizer.optimizer.register_step_post_hook(lambda *_: taken.append(1))
    amp = AMP(model, accelerator=accelerator, amp_epsilon=EPSILON, amp_interval=2)
    applied = []
    for batch in loader:
        with contextlib.ExitStack() as stack:  # exits in reverse order, as `with a, b:` does
            if amp_first:
                result = stack.enter_context(amp.perturbed(batch))
                stack.enter_context(accelerator.accumulate(model))
            else:
                stack.enter_context(accelerator.accumulate(model))
                result = stack.enter_context(amp.perturbed(batch))
            accelerator.backward(model(**batch)["loss"])
        optimizer.step()
        optimizer.zero_grad()
        applied.append(result.clean_loss is not None)
    return model, amp, len(taken), applied


def test_step_count_does_not_depend_on_the_order_of_the_context_managers(accelerator_of):
    documented, amp_d, taken_d, applied_d = loop_in_order(accelerator_of(gradient_accumulation_steps=2), False)
    swapped, amp_s, taken_s, applied_s = loop_in_order(accelerator_of(gradient_accumulation_steps=2), True)
    assert taken_d == taken_s == 3
    assert amp_d.optimizer_steps == taken_d, "the documented order miscounts"
    assert applied_d == [True, True, False, False, True, True]  # every other optimizer step, both its micro-batches
    assert (amp_s.optimizer_steps, applied_s) == (amp_d.optimizer_steps, applied_d), "the order shifted the count"
    for (name, a), (_, b) in zip(documented.named_parameters(), swapped.named_parameters()):
        assert torch.equal(a, b), f"{name} differs between the two orders"


def test_block_that_raises_counts_no_step():
    model = TinyClassifier()
    amp = AMP(model, amp_epsilon=EPSILON)
    batch = batch_of(DictDataset(n=4), 0)
    with pytest.raises(ValueError, match="user error"), amp.perturbed(batch):
        raise ValueError("user error")
    assert amp.optimizer_steps == 0
    with amp.perturbed(batch):
        model(**batch)["loss"].backward()
    assert amp.optimizer_steps == 1
