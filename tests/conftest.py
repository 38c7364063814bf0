"""Shared fixtures: the default model (skipped with a reason when its wheel is missing) and HF's reference model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from plait.engine import ModelNotFoundError, default_model_path

    try:
        return default_model_path()
    except ModelNotFoundError as error:
        pytest.skip(f"default model not installed: {error}")


@pytest.fixture(scope="session")
def fp32_core(default_gguf):
    """One float32 EngineCore on the default model, shared by the tests that drive it step by step."""
    from plait.engine import EngineConfig, EngineCore

    return EngineCore(EngineConfig(model=str(default_gguf), dtype="float32", device="cpu"))


@pytest.fixture(scope="session")
def hf_model(default_gguf):
    """HF transformers' own Llama implementation loading the same GGUF: the independent reference."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        default_gguf.parent, gguf_file=default_gguf.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture
def one_thread():
    """For the ``tiny`` dummy shape: its matrices are too small for intra-op threads, which only add overhead (a
    lot of it when the cores are busy)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (it holds the real traces, schemas and tokenizers)")
    return SHARED_DATA


class FakeClock:
    """Stands in for the ``time`` module of the cache (only ``monotonic`` is used). Starts at the real monotonic
    time because ``NextUse.given_at`` reads the real clock."""

    def __init__(self) -> None:
        import time

        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def patch_cache_clock(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> FakeClock:
    """Make the radix cache and its hints read ``clock`` instead of the real monotonic time."""
    import plait.cache.hints
    import plait.cache.radix

    monkeypatch.setattr(plait.cache.radix, "time", clock)
    monkeypatch.setattr(plait.cache.hints, "time", clock)
    return clock


TINY = {"model": "tiny", "weights": "dummy", "device": "cpu", "dtype": "float32"}


def tiny_core(**overrides: object):
    """An EngineCore on the few-MB ``tiny`` dummy shape (random weights, byte-level tokenizer), for mechanics tests."""
    from plait.engine import EngineConfig, EngineCore

    return EngineCore(EngineConfig(**TINY, **overrides))


@contextlib.contextmanager
def serving(core) -> Iterator:
    """An ``Engine`` on ``core``; closed afterwards (closing aborts whatever is still in flight)."""
    from plait.engine import Engine

    engine = Engine(core=core)
    try:
        yield engine
    finally:
        engine.close()


def run_to_completion(core, requests) -> dict[str, dict[int, list[int]]]:
    """Submit ``requests`` to an EngineCore, step until idle, return generated token ids by request and sample."""
    for request in requests:
        core.add_request(request)
    tokens: dict[str, dict[int, list[int]]] = {}
    while core.has_work():
        for delta in core.step():
            tokens.setdefault(delta.request_id, {}).setdefault(delta.index, []).extend(delta.token_ids)
    return tokens
