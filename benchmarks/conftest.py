"""Options of the pytest-benchmark suites (``pytest benchmarks``; CI runs only tests/).

    pytest benchmarks --bench-device cuda --bench-presets tiny
"""
import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("fastsrnn benchmarks")
    group.addoption("--bench-device", default=None, help="cpu or cuda [default: cuda when available, else cpu]")
    group.addoption("--bench-presets", nargs="+", default=None, help="presets to time [default: all in the suite]")


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> torch.device:
    name = pytestconfig.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.exit(f"--bench-device {name}: no CUDA device here", returncode=2)
    if device.type == "cuda":  # fp32 means fp32, as in fastsrnn bench
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


@pytest.fixture(autouse=True)
def _only_chosen_presets(request):
    """Skip a parametrised preset that --bench-presets leaves out."""
    chosen = request.config.getoption("--bench-presets")
    callspec = getattr(request.node, "callspec", None)
    if chosen and callspec is not None and callspec.params.get("preset") not in chosen:
        pytest.skip(f"preset {callspec.params.get('preset')} not in --bench-presets")
