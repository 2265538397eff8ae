"""Offline, CPU, few threads: the suite must run the same on a laptop, a 2-core CI box and without network. Under
`CI=true` (`.ci/run`) a skipped test fails the run."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
