"""Shared fixtures: the default model (skipped with a reason when its wheel is missing) and HF's reference model;
every test fails when a planner hook raised during it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The planner's module logger: ``Planner`` logs a hook that raised there, at ERROR, and goes on (planning is advice).
PLANNER_LOGGER = "plait.runtime.planning.planner"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def planner_hook_failures() -> Iterator[list[logging.LogRecord]]:
    """Every test: a planner hook that raised fails it (programs go on without the hook's bookkeeping, so only the
    log would show it otherwise). A test that breaks a hook on purpose takes this list and clears it."""
    handler = _Records()
    logger = logging.getLogger(PLANNER_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
    if handler.records:
        failures = "\n".join(
            f"{record.getMessage()}: {record.exc_info[1]!r}" if record.exc_info else record.getMessage()
            for record in handler.records
        )
        pytest.fail(f"{len(handler.records)} planner hook failure(s) during the test:\n{failures}", pytrace=False)


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
