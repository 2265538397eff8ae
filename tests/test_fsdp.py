"""FSDP2: whole-tensor norms from shards, and AMPTrainer under FSDP2 against the one-process reference.

The two-process checks run in one torchrun launch (CPU, gloo): see `fsdp_worker.py`. The construction-time refusals
(FSDP1, CPU offload) need no process group and run here.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import DictDataset, TinyClassifier, tiny_args, torchrun_two_processes
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy
from transformers import Trainer

from amp_hf import AMPMixin

WORKER = Path(__file__).with_name("fsdp_worker.py")


def test_fsdp2_two_processes_use_whole_tensor_norms_and_match_one_process_on_the_global_batch():
    done = torchrun_two_processes(str(WORKER))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("ALL OK") == 2
    assert done.stdout.count("sharded norms == whole-tensor norms") == 2
    assert done.stdout.count("== one process on the global batch, logs agree") == 12
    assert done.stdout.count("RootScaledClassifier == one process on the global batch") == 2
    assert done.stdout.count("FSDP2 fall-back at θ == one process's ERM step") == 2
    assert done.stdout.count("momentum direction: shards move as the whole tensors") == 2
    assert done.stdout.count("FSDP2 momentum direction matches one process on the global batch") == 2


def _trainer_on_pretend_fsdp(tmp_path, plugin, **overrides):
    """Builds an AMP trainer whose accelerator reports FSDP with `plugin` (no process group, nothing sharded).

    The plugin is set on accelerate's state class only while the trainer is built, after `Trainer.__init__` (which
    would act on it), so later tests see accelerate's state as it was.
    """
    with pytest.MonkeyPatch.context() as patch:

        class PretendFSDP(Trainer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                patch.setattr(type(self.accelerator.state), "fsdp_plugin", plugin, raising=False)
                self.is_fsdp_enabled = True

        class AMPOnPretendFSDP(AMPMixin, PretendFSDP):
            pass

        args = tiny_args(tmp_path, **overrides)
        return AMPOnPretendFSDP(model=TinyClassifier(), args=args, train_dataset=DictDataset())


@pytest.mark.parametrize(
    "plugin, message",
    [
        (SimpleNamespace(fsdp_version=1), "does not support FSDP version 1.*Use FSDP2"),
        (SimpleNamespace(fsdp_version=2, cpu_offload=CPUOffloadPolicy()), "does not support FSDP2 with CPU offload"),
    ],
    ids=["fsdp1", "cpu-offload"],
)
def test_fsdp1_and_cpu_offload_are_refused_at_construction(tmp_path, plugin, message):
    with pytest.raises(ValueError, match=message):
        _trainer_on_pretend_fsdp(tmp_path, plugin)
    _trainer_on_pretend_fsdp(tmp_path, plugin, amp_epsilon=0.0)  # AMP off is the plain Trainer


def test_fsdp2_without_offload_is_accepted(tmp_path):
    plugin = SimpleNamespace(fsdp_version=2, cpu_offload=OffloadPolicy())
    trainer = _trainer_on_pretend_fsdp(tmp_path, plugin)
    assert trainer.amp_config.enabled
