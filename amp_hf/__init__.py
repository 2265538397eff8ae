"""amp_hf: Adversarial Model Perturbation (Zheng, Zhang, Mao, CVPR 2021) for the Hugging Face Trainer.

Swap `Trainer` for `AMPTrainer` and `TrainingArguments` for `AMPTrainingArguments`; nothing else changes. Custom
training loops (Accelerate's `*_no_trainer.py` style) use `AMP` (`amp_hf/loop.py`, docs/custom-loops.md).
"""

from .config import AMPConfig
from .loop import AMP, add_amp_arguments
from .perturbation import AscentResult, perturbed_weights, save_buffers
from .process_group import close_process_group
from .selection import perturbed_parameter_names
from .trainer import AMPMixin, AMPSeq2SeqTrainer, AMPTrainer
from .training_args import AMPArgumentsMixin, AMPSeq2SeqTrainingArguments, AMPTrainingArguments

__version__ = "0.1.0"

__all__ = [
    "AMP",
    "AMPArgumentsMixin",
    "AMPConfig",
    "AMPMixin",
    "AMPSeq2SeqTrainer",
    "AMPSeq2SeqTrainingArguments",
    "AMPTrainer",
    "AMPTrainingArguments",
    "AscentResult",
    "add_amp_arguments",
    "close_process_group",
    "perturbed_parameter_names",
    "perturbed_weights",
    "save_buffers",
]
