"""Tiny models, data and an independent plain-PyTorch AMP reference, shared by the tests."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence

import datasets
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, SequentialSampler
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, Trainer

from amp_hf import AMPMixin, AMPTrainingArguments


class TinyClassifier(nn.Module):
    """A two-layer MLP that returns a mean cross-entropy loss, like a Hugging Face model does."""

    def __init__(self, n_in: int = 6, n_hidden: int = 8, n_out: int = 3, batchnorm: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.norm = nn.BatchNorm1d(n_hidden) if batchnorm else nn.Identity()
        self.fc2 = nn.Linear(n_hidden, n_out)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.tanh(self.norm(self.fc1(x))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class TokenNormalisedClassifier(TinyClassifier):
    """Accepts `num_items_in_batch` like a Hugging Face model with loss kwargs: sum of item losses / that count."""

    def forward(self, x, labels=None, num_items_in_batch=None, **kwargs):
        logits = self.fc2(torch.tanh(self.fc1(x)))
        out = {"logits": logits}
        if labels is not None:
            if num_items_in_batch is None:
                out["loss"] = nn.functional.cross_entropy(logits, labels, ignore_index=-100)
            else:
                total = nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
                out["loss"] = total / num_items_in_batch
        return out


class MeanLossWithKwargs(TinyClassifier):
    """Accepts `num_items_in_batch` but ignores it, returning a plain mean, as BertForSequenceClassification does."""

    def forward(self, x, labels=None, num_items_in_batch=None, **kwargs):
        return super().forward(x, labels)


class OverflowsWhenPushed(TinyClassifier):
    """Finite at θ, infinite at θ + Δ: exp(200·s) overflows float32 once the ascent moves s from 0 to ε = 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.zeros(()))

    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        if labels is not None:
            out["loss"] = out["loss"] + torch.exp(200 * self.s)
        return out


class DictDataset(Dataset):
    def __init__(self, n: int = 32, n_in: int = 6, n_out: int = 3, seed: int = 1, ignored_every: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, n_in, generator=g)
        self.y = torch.randint(0, n_out, (n,), generator=g)
        if ignored_every:
            self.y[::ignored_every] = -100  # unequal item counts per micro-batch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class InOrder:
    """Mixin: feed the training set in order, so a reference loop can walk the same batches."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class SequentialTrainer(InOrder, Trainer):
    pass


class SequentialAMPTrainer(InOrder, AMPMixin, Trainer):
    pass


class WithMomentumSGD:
    """Mixin: SGD with momentum 0.9 at the arguments' learning rate, on every transformers release (4.57 ignores
    optim_args for optim='sgd'), for the momentum direction."""

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.args.learning_rate, momentum=0.9)
        return self.optimizer


class MomentumAMPTrainer(WithMomentumSGD, SequentialAMPTrainer):
    pass


class MomentumTrainer(WithMomentumSGD, SequentialTrainer):
    pass


def tiny_args(output_dir, **overrides) -> AMPTrainingArguments:
    """SGD at a constant rate, no clipping, no saving, no reporting: every update is easy to replay."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    settings.update(overrides)
    return AMPTrainingArguments(**settings)


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun rendezvous (fixed ports collide between runs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_two_processes(*script_and_args: str, timeout: int = 300, **env: str):
    """Runs `script args...` under torchrun with two CPU processes (one thread each, a free rendezvous port)."""
    import os
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command = [*launcher, "--master_port", str(free_port()), *script_and_args]
    environment = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)


def steps_in_backward(model: nn.Module, lr: float = 0.1) -> dict[nn.Parameter, torch.optim.Optimizer]:
    """PyTorch's recipe for fusing the optimizer step into backward: one SGD per parameter, stepped by a
    post-accumulate-grad hook as soon as that parameter's gradient is ready."""
    optimizers = {p: torch.optim.SGD([p], lr=lr) for p in model.parameters()}

    def step(p: nn.Parameter) -> None:
        optimizers[p].step()
        optimizers[p].zero_grad()

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(step)
    return optimizers


class StepsInBackward(torch.optim.Optimizer):
    """An optimizer to hand the Trainer (`optimizers=(it, None)`) whose updates happen in backward
    (`steps_in_backward`), as LOMO's do: its own `step` has nothing left to do."""

    def __init__(self, model: nn.Module, lr: float = 0.1) -> None:
        super().__init__(model.parameters(), {"lr": lr})
        self.per_parameter = steps_in_backward(model, lr)

    def step(self, closure=None) -> None:
        return None


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------- the reference
def reference_amp(
    model: nn.Module,
    dataset: DictDataset,
    *,
    steps: int,
    batch_size: int,
    grad_accum: int = 1,
    lr: float = 0.1,
    epsilon: float = 0.5,
    inner_lr: float = 1.0,
    inner_steps: int = 1,
    norm: str = "tensor",
    max_grad_norm: float = 0.0,
    token_normalised: bool = False,
    perturb: Callable[[str], bool] = lambda name: True,
    ascent_fraction: float = 1.0,
    ascent_head: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    adamw: bool = False,
) -> nn.Module:
    """amp-spec.md written out with plain loops: no amp_hf code, no Trainer. SGD, or AdamW (no weight decay)."""
    model = copy.deepcopy(model)
    model.train()
    optimizer = torch.optim.AdamW if adamw else torch.optim.SGD
    opt = optimizer(model.parameters(), lr=lr, **({"weight_decay": 0.0} if adamw else {}))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and perturb(n)]
    params = [p for _, p in named]

    def batch(i: int) -> dict[str, torch.Tensor]:
        rows = slice(i * batch_size, (i + 1) * batch_size)
        return {"x": dataset.x[rows], "labels": dataset.y[rows]}

    def mean_loss(b) -> torch.Tensor:
        return model(**b)["loss"]

    micro = 0
    for _ in range(steps):
        window = [batch(micro + j) for j in range(grad_accum)]
        window_items = sum(int((b["labels"] != -100).sum()) for b in window)
        micro += grad_accum
        opt.zero_grad()
        for b in window:
            theta = [p.detach().clone() for p in params]
            rows = max(1, math.ceil(ascent_fraction * len(b["labels"])))  # the ascent's head of the micro-batch
            head = {k: v[:rows] for k, v in b.items()} if ascent_head is None else ascent_head(b)
            scale = [t.abs() + 0.01 for t in theta]  # ASAM's T, for the elementwise ball
            g = torch.autograd.grad(mean_loss(head), params)
            delta = [torch.zeros_like(p) for p in params]
            for k in range(inner_steps):
                if norm == "elementwise":
                    delta = [d + inner_lr * t * t * gi for d, gi, t in zip(delta, g, scale)]
                else:
                    delta = [d + inner_lr * gi for d, gi in zip(delta, g)]
                norms = [float(d.norm()) for d in delta]
                if norm == "elementwise":
                    total = sum(float((d / t).norm()) ** 2 for d, t in zip(delta, scale)) ** 0.5
                    if total > epsilon:
                        delta = [d * (epsilon / (total + 1e-12)) for d in delta]
                elif norm == "tensor":
                    delta = [d * (epsilon / (n + 1e-12)) if n > epsilon else d for d, n in zip(delta, norms)]
                elif norm == "relative":
                    radii = [epsilon * float(t.norm()) for t in theta]
                    delta = [d * (r / (n + 1e-12)) if n > r else d for d, n, r in zip(delta, norms, radii)]
                else:
                    total = sum(n * n for n in norms) ** 0.5
                    if total > epsilon:
                        delta = [d * (epsilon / (total + 1e-12)) for d in delta]
                with torch.no_grad():
                    for p, t, d in zip(params, theta, delta):
                        p.copy_(t + d)
                if k < inner_steps - 1:
                    g = torch.autograd.grad(mean_loss(head), params)
            if token_normalised:
                logits = model(x=b["x"])["logits"]
                loss = nn.functional.cross_entropy(logits, b["labels"], ignore_index=-100, reduction="sum")
                (loss / window_items).backward()
            else:
                (mean_loss(b) / grad_accum).backward()
            with torch.no_grad():
                for p, t in zip(params, theta):
                    p.copy_(t)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
    return model


@contextlib.contextmanager
def reference_perturbed(
    params: Sequence[torch.Tensor], loss: Callable[[], torch.Tensor], epsilon: float
) -> Iterator[None]:
    """One AMP block in plain PyTorch (amp-spec.md, K = 1, ζ = 1, per-tensor ball): the weights are θ + Δ inside, with
    Δ = ∇loss(θ) projected onto the ball of radius ε per tensor, and θ again after. For loops `reference_amp` does
    not model (two models, an optimizer stepping inside the block): the test writes the same loop around this."""
    params = list(params)
    theta = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(loss(), params)
    with torch.no_grad():
        for p, t, g in zip(params, theta, grads):
            norm = float(g.norm())
            p.copy_(t + (g * (epsilon / (norm + 1e-12)) if norm > epsilon else g))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)


def assert_params_close(a: nn.Module, b: nn.Module, names: Sequence[str] | None = None, atol: float = 2e-6) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name in names or pa:
        torch.testing.assert_close(pa[name], pb[name], atol=atol, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def params_distance(a: nn.Module, b: nn.Module) -> float:
    """The largest elementwise difference between two models' weights."""
    pb = dict(b.named_parameters())
    return max(float((p.detach() - pb[n].detach()).abs().max()) for n, p in a.named_parameters())


def assert_params_far(a: nn.Module, b: nn.Module, atol: float = 2e-6, what: str = "") -> None:
    """`assert_params_close` would fail on these: some weight differs by more than its tolerance (atol + rtol·|b|).
    Shows that a reference comparison can tell the right result from a wrong one."""
    pb = dict(b.named_parameters())
    excess = max(
        float(((p.detach() - pb[n].detach()).abs() - (atol + 1e-5 * pb[n].abs())).max())
        for n, p in a.named_parameters()
    )
    assert excess > 0, f"{what}: within the tolerance of the other result, so the comparison cannot tell them apart"


FREE_BALL = 1e3
"""An ε no Δ reaches: Δ = ζ·g exactly, so any rescaling of the ascent's loss shows in the weights. (With ε = 0.05 and
the per-tensor ball every Δ is clipped to the sphere and a loss scaled by anything above ~0.45 gives the same Δ.)"""


def assert_only_the_right_scale_matches(model: nn.Module, reference: Callable[..., nn.Module]) -> None:
    """`model` equals `reference(inner_lr=1.0)` (run with `FREE_BALL`) and is far from the references whose ascent
    loss is scaled by 1/2 or 2, the mistakes a wrong count (the window's instead of the micro-batch's) or a missing
    process factor make."""
    assert_params_close(model, reference(inner_lr=1.0))
    for wrong in (0.5, 2.0):
        assert_params_far(model, reference(inner_lr=wrong), what=f"the ascent scaled by {wrong}")


def assert_params_equal(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), f"{name} differs"


# ------------------------------------------------------------------------------ tiny Hugging Face models
COMMON = dict(
    use_cpu=True,
    report_to="none",
    disable_tqdm=True,
    logging_steps=1,
    per_device_train_batch_size=4,
    learning_rate=1e-3,
    seed=0,
)


def tiny_bert(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2() -> GPT2LMHeadModel:
    """A one-layer GPT-2 without dropout; its `lm_head.weight` is `transformer.wte.weight` (tied embeddings)."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def text_data(n: int = 32, length: int = 12) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (n, length), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})


# ------------------------------------------------------------------------------------ checks in the process workers
def assert_ranks_identical(model: nn.Module) -> None:
    """Every parameter is bit-identical on every rank (called on all ranks: one all-gather per parameter)."""
    for name, p in model.named_parameters():
        gathered = [torch.empty_like(p) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, p.detach().contiguous())
        assert all(torch.equal(gathered[0], g) for g in gathered[1:]), f"{name} differs across ranks"


def assert_close_to(model: nn.Module, expected: nn.Module, what: str) -> None:
    """`model`'s parameters (inside a DDP wrapper, if any) equal `expected`'s to float32 precision."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    for (name, a), (_, b) in zip(model.named_parameters(), expected.named_parameters()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=lambda m, n=name: f"{what}, {n}: {m}")


def project_(deltas, epsilon, norm, theta_norms=None, group=None, scales=None) -> torch.Tensor:
    """Projects Δ in place onto the ball(s) of radius ε (`perturbation.projection_factors`); returns each tensor's
    norm after. Test-only: the library fuses the projection into θ + Δ."""
    from amp_hf.perturbation import projection_factors

    factors, norms = projection_factors(deltas, epsilon, norm, theta_norms, group, scales)
    torch._foreach_mul_(deltas, list(factors.unbind()))
    return norms * factors


def shard_group(params):
    """The process group every parameter is sharded over, or None (test-only; `sharding.layout` refuses the rest)."""
    from amp_hf.sharding import layout

    return layout(params).group


def running_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers() if "running" in name or "tracked" in name}


def statistics_under_each_policy(model: nn.Module, batch: dict, fraction: float, epsilon: float) -> dict[str, dict]:
    """The running statistics after one AMP micro-batch (K = 1, per-tensor ball) under each policy, in plain PyTorch
    on copies of `model`: "head" (the library's: the clean pass's update, on the head of the micro-batch at θ) and
    "descent" (the measured alternative: one update, by the descent's forward on the whole micro-batch at θ + Δ)."""
    size = max(1, math.ceil(fraction * len(batch["labels"])))
    head = {k: v[:size] for k, v in batch.items()}
    descent = copy.deepcopy(model).train()
    before = running_statistics(descent)
    with reference_perturbed(list(descent.parameters()), lambda: descent(**head)["loss"], epsilon), torch.no_grad():
        for name, b in descent.named_buffers():
            if name in before:
                b.copy_(before[name])  # the ascent's forward leaves no trace
        descent(**batch)
    at_head = copy.deepcopy(model).train()
    with torch.no_grad():
        at_head(**head)
    return {"descent": running_statistics(descent), "head": running_statistics(at_head)}


def assert_statistics_of_the_clean_pass(model: nn.Module, policies: dict[str, dict]) -> None:
    got = running_statistics(model)
    for name, value in policies["head"].items():
        torch.testing.assert_close(got[name], value, msg=lambda m, n=name: f"{n}: {m}")
    assert int(got["norm.num_batches_tracked"]) == 1  # one update per micro-batch
    assert not torch.allclose(got["norm.running_mean"], policies["descent"]["norm.running_mean"])  # the test can tell


def reference_momentum_amp(
    model: nn.Module,
    dataset: DictDataset,
    *,
    steps: int,
    batch_size: int,
    grad_accum: int = 1,
    lr: float = 0.1,
    epsilon: float = 0.5,
    norm: str = "global",
    momentum: float = 0.9,
    adamw: bool = False,
    start_step: int = 0,
) -> nn.Module:
    """amp_direction='momentum' written out with plain loops (no amp_hf code, no Trainer): before each micro-batch's
    one pass, Δ = −m scaled onto the sphere of the ball of radius ε, m the optimizer's first moment as it stands (SGD's
    momentum_buffer, AdamW's exp_avg), Δ = 0 before the first step and before `start_step`; θ put back after the pass;
    then the optimizer steps. SGD with `momentum`, or AdamW (no weight decay)."""
    model = copy.deepcopy(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if adamw:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    key = "exp_avg" if adamw else "momentum_buffer"
    micro = 0
    for step in range(steps):
        opt.zero_grad()
        for _ in range(grad_accum):
            rows = slice(micro * batch_size, (micro + 1) * batch_size)
            micro += 1
            theta = [p.detach().clone() for p in params]
            moments = [opt.state[p].get(key) if p in opt.state else None for p in params]
            if step >= start_step and all(m is not None for m in moments):
                if norm == "elementwise":
                    scale = [t.abs() + 0.01 for t in theta]
                    steps_ = [t * t * m for t, m in zip(scale, moments)]
                    total = sum(float((s / t).norm()) ** 2 for s, t in zip(steps_, scale)) ** 0.5
                    delta = [-s * (epsilon / (total + 1e-12)) for s in steps_]
                elif norm == "global":
                    total = sum(float(m.norm()) ** 2 for m in moments) ** 0.5
                    delta = [-m * (epsilon / (total + 1e-12)) for m in moments]
                elif norm == "tensor":
                    delta = [-m * (epsilon / (float(m.norm()) + 1e-12)) for m in moments]
                else:  # relative
                    delta = [
                        -m * (epsilon * float(t.norm()) / (float(m.norm()) + 1e-12)) for m, t in zip(moments, theta)
                    ]
                with torch.no_grad():
                    for p, t, d in zip(params, theta, delta):
                        p.copy_(t + d)
            (model(x=dataset.x[rows], labels=dataset.y[rows])["loss"] / grad_accum).backward()
            with torch.no_grad():
                for p, t in zip(params, theta):
                    p.copy_(t)
        opt.step()
    return model
