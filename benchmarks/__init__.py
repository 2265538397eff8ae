"""The studies behind the README's numbers, as one package: run each from the project root as
`python -m benchmarks.<study>` (accuracy, transfer, frontier, cost, flatness, device_check).

Shared parts, each written once: `data` (the studies' data sets and label noise), `tasks` (task and model-family
records, building a run's model and data), `methods` (ERM and AMP settings, the passes-per-step cost model),
`runner` (one training run, the run cache keyed by settings and code, the scheduler), `stats` (paired statistics and
the choice rules), `reports` (report headers, recommended.json) and `steps` (an optimizer step by hand, for timing).
How to rerun a study or add a task or a method: benchmarks/README.md.
"""

import os

# Nothing downloads a model or a data set: set before any study imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
