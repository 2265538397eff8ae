"""Tiny models that drive AMP's step into its edge cases: reentrant checkpointing, overflow at θ + Δ in the logits
(so that every loss path overflows, not only the model's own loss), and overflow on one process only."""

from __future__ import annotations

import torch
import torch.distributed as dist
from helpers import TinyClassifier
from torch import nn
from torch.utils.checkpoint import checkpoint


class ReentrantCheckpointed(TinyClassifier):
    """TinyClassifier with its second half in a reentrant `torch.utils.checkpoint` segment (`use_reentrant=True`,
    transformers 4.x's default), whose backward refuses `torch.autograd.grad`. Same weights, same function."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = self.fc1(x)  # requires grad, so the segment's output does and fc2 gets its gradient

        def head(h: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.tanh(self.norm(h)))

        logits = checkpoint(head, hidden, use_reentrant=True)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class LogitsOverflowWhenPushed(TinyClassifier):
    """Finite at θ, non-finite logits at θ + Δ: every loss path (the model's, the label smoother's, a
    `compute_loss_func`'s) overflows there. Logit 0 gets b(s) = exp(200·s) + exp(−300·s), 2 at s = 0, whose slope
    −100 gives s an ascent gradient far above ε = 0.5: the ball moves s by ±0.5, and either way b overflows float32
    (e^100, e^150 > 3.4e38). The plain Trainer's first step stays finite; it is the step AMP must fall back to."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.tanh(self.fc1(x)))
        bump = torch.exp(200 * self.s) + torch.exp(-300 * self.s)
        logits = torch.cat([logits[:, :1] + bump, logits[:, 1:]], dim=1)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class OverflowsOnRank(TinyClassifier):
    """Finite everywhere on every process but `rank`, whose loss gains exp(200·s): its ascent moves s to ε = 0.5 and
    its loss overflows at θ + Δ. The other processes' loss holds s with weight 0: a zero ascent gradient (Δ_s = 0,
    they stay finite) and a parameter DDP sees used on every process."""

    def __init__(self, rank: int = 1) -> None:
        super().__init__()
        self.rank = rank
        self.s = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().forward(x, labels)
        if labels is not None:
            here = dist.is_initialized() and dist.get_rank() == self.rank
            out["loss"] = out["loss"] + (torch.exp(200 * self.s) if here else 0 * self.s)
        return out


class OverflowsWhenPushedSharded(TinyClassifier):
    """`helpers.OverflowsWhenPushed` with s of shape (1,), as FSDP2 shards no 0-d tensor: finite at θ, infinite at
    θ + Δ (exp(200·s) once the ascent moves s to ε = 0.5). s belongs to the root module, not to fc1 or fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().forward(x, labels)
        if labels is not None:
            out["loss"] = out["loss"] + torch.exp(200 * self.s).sum()
        return out


class RootScaledClassifier(TinyClassifier):
    """TinyClassifier whose logits are multiplied by a learned temperature held by the root module itself: under
    FSDP2 (fc1 and fc2 wrapped as their own units) the root keeps its gathered parameters after its forward, as the
    embeddings and heads of Hugging Face models do, so the temperature is only sharded between passes."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.full((1,), 1.5))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.tanh(self.fc1(x))) * self.temperature
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out
