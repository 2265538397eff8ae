"""Offline, CPU, few threads: the suite must run the same on a laptop, a 2-core CI box and without network. Under
`CI=true` (`.ci/run`) a skipped test fails the run."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _accelerate_environment_restored():
    """transformers 4.57's TrainingArguments writes settings into os.environ (ACCELERATE_MIXED_PRECISION for bf16,
    ACCELERATE_DYNAMO_BACKEND for torch_compile), where every later Trainer of the process and every torchrun child
    would read them: a bf16 test turned the next DDP test's runs into bf16 runs. Each test gets the session's."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("ACCELERATE_")}
    yield
    for key in [key for key in os.environ if key.startswith("ACCELERATE_")]:
        if key not in saved:
            del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def accelerator_of():
    """Builds an `Accelerator` on CPU; accelerate's shared state is reset around each test (mixed precision differs)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    def build(**kwargs) -> Accelerator:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return Accelerator(cpu=True, **kwargs)

    yield build
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


CI_SKIP = "skipped under CI=true, where every extra is installed (`make test`): a skip would pass unnoticed. Reason: "


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skipped test is a failure: `make test` installs every extra, so nothing has a reason to skip."""
    report = (yield).get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = CI_SKIP + str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (`pytest.importorskip` at module level)."""
    report = (yield).get_result()
    if _in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = CI_SKIP + str(report.longrepr)
