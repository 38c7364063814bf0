"""Bad input: every mistake raises a precise error that names what to fix, and the engine keeps serving.

Request errors must surface from ``Engine.generate()`` / ``Engine.complete()`` before any delta, leave the core
idle with no KV held, and the same ``Engine`` must then complete a valid request. Model-loading errors must be
``ModelNotFoundError`` / ``ModelLoadError`` (never a raw ``struct.error``, ``ValueError`` or ``IndexError``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from plait.engine import (
    Engine,
    EngineConfig,
    EngineCore,
    GenerateRequest,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    SamplingParams,
)
from tests.conftest import serving, tiny_core

VALID_SAMPLING = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def assert_idle(core: EngineCore) -> None:
    assert not core.has_work(), "a rejected request left work in the engine"
    assert core.kv_in_use() == 0, "a rejected request left KV slots allocated"


async def first_error(engine: Engine, request: GenerateRequest) -> BaseException:
    """The exception ``generate()`` raises for ``request``; fails if any delta arrives first."""
    deltas = []
    try:
        async for delta in engine.generate(request):
            deltas.append(delta)
    except Exception as error:
        assert not deltas, f"{len(deltas)} deltas arrived before the error"
        return error
    raise AssertionError(f"no error raised; got {len(deltas)} deltas")


async def complete_error(engine: Engine, request: GenerateRequest) -> BaseException:
    try:
        await engine.complete(request)
    except Exception as error:
        return error
    raise AssertionError("complete() did not raise")


def check_invalid(error: BaseException, field: str, *fragments: str) -> None:
    assert isinstance(error, InvalidRequestError), f"expected InvalidRequestError, got {type(error).__name__}: {error}"
    assert error.field == field, f"field is {error.field!r}, expected {field!r} ({error})"
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} not in the message {str(error)!r}"


async def serves(engine: Engine, tag: str = "ok") -> None:
    request = GenerateRequest(prompt="Hello", sampling=VALID_SAMPLING, request_id=f"valid-{tag}")
    result = await engine.complete(request)
    assert len(result.completions) == 1
    assert result.completions[0].finish_reason == "length"
    assert len(result.completions[0].token_ids) == VALID_SAMPLING.max_tokens


# ---- malformed requests on the default model -------------------------------------------------------------------------


@dataclass
class Case:
    request: Callable[[], GenerateRequest]
    field: str
    fragments: tuple[str, ...]


def sampled(**params: object) -> Callable[[], GenerateRequest]:
    return lambda: GenerateRequest(prompt="Hello", sampling=SamplingParams(**params))


CASES: dict[str, Case] = {
    "empty prompt": Case(lambda: GenerateRequest(prompt=""), "prompt", ("non-empty",)),
    "prompt and messages": Case(
        lambda: GenerateRequest(prompt="Hi", messages=[{"role": "user", "content": "Hi"}]),
        "prompt",
        ("exactly one", "messages"),
    ),
    "no prompt at all": Case(lambda: GenerateRequest(), "prompt", ("exactly one",)),
    "token id past the vocabulary": Case(
        lambda: GenerateRequest(prompt_token_ids=[1, 2, 49152]), "prompt_token_ids", ("vocabulary", "49152")
    ),
    "negative token id": Case(lambda: GenerateRequest(prompt_token_ids=[-1, 5]), "prompt_token_ids", ("vocabulary",)),
    "max_tokens 0": Case(sampled(max_tokens=0), "max_tokens", ("positive integer",)),
    "max_tokens -5": Case(sampled(max_tokens=-5), "max_tokens", ("positive integer",)),
    "top_p 0": Case(sampled(top_p=0.0), "top_p", ("(0, 1]",)),
    "top_p -0.1": Case(sampled(top_p=-0.1), "top_p", ("(0, 1]", "-0.1")),
    "top_p 1.01": Case(sampled(top_p=1.01), "top_p", ("(0, 1]", "1.01")),
    "temperature -1": Case(sampled(temperature=-1.0), "temperature", (">= 0",)),
    "n 0": Case(sampled(n=0), "n", ("[1, 128]",)),
    "message without role": Case(
        lambda: GenerateRequest(messages=[{"content": "Hi"}]), "messages[0].role", ("non-empty string",)
    ),
    "message content not a string": Case(
        lambda: GenerateRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": 5}]),
        "messages[1].content",
        ("must be a string", "int"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_raises_before_any_delta(fp32_core, name):
    case = CASES[name]

    async def main(engine: Engine) -> None:
        check_invalid(await first_error(engine, case.request()), case.field, *case.fragments)
        assert_idle(fp32_core)
        check_invalid(await complete_error(engine, case.request()), case.field, *case.fragments)
        assert_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_empty_prompt_token_ids_names_its_field(fp32_core):
    async def main(engine: Engine) -> None:
        error = await first_error(engine, GenerateRequest(prompt_token_ids=[]))
        assert isinstance(error, InvalidRequestError)
        assert_idle(fp32_core)
        assert "empty" in str(error)
        check_invalid(error, "prompt_token_ids")

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_engine_serves_after_every_bad_request(fp32_core):
    async def main(engine: Engine) -> None:
        for case in CASES.values():
            with pytest.raises(InvalidRequestError):
                await engine.complete(case.request())
            assert_idle(fp32_core)
        with pytest.raises(InvalidRequestError):
            await engine.complete(GenerateRequest(prompt_token_ids=[]))
        await serves(engine)
        assert_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_duplicate_request_id_while_running(fp32_core):
    sampling = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    async def main(engine: Engine) -> None:
        first = engine.generate(GenerateRequest(prompt="Count to ten:", sampling=sampling, request_id="dup"))
        deltas = [await anext(first)]
        error = await first_error(engine, GenerateRequest(prompt="Another", sampling=sampling, request_id="dup"))
        check_invalid(error, "request_id", "'dup'", "already running")
        # The rejected duplicate must not have disturbed the first request.
        deltas += [delta async for delta in first]
        assert [d.completion_tokens for d in deltas] == list(range(1, 11))
        assert deltas[-1].finish_reason == "length"
        assert_idle(fp32_core)
        # Once finished, the id is free again.
        result = await engine.complete(GenerateRequest(prompt="Again", sampling=VALID_SAMPLING, request_id="dup"))
        assert result.completions[0].finish_reason == "length"
        assert_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_duplicate_request_id_on_the_core():
    core = tiny_core()
    core.add_request(GenerateRequest(prompt="abc", sampling=VALID_SAMPLING, request_id="same"))
    with pytest.raises(InvalidRequestError) as raised:
        core.add_request(GenerateRequest(prompt="xyz", sampling=VALID_SAMPLING, request_id="same"))
    check_invalid(raised.value, "request_id", "already running")
    tokens = []
    while core.has_work():
        tokens += [t for delta in core.step() for t in delta.token_ids]
    assert len(tokens) == VALID_SAMPLING.max_tokens  # only the first request ran
    assert_idle(core)


# ---- limits of a small engine ----------------------------------------------------------------------------------------


def test_prompt_longer_than_the_context():
    core = tiny_core(max_context=64)

    async def main(engine: Engine) -> None:
        error = await first_error(engine, GenerateRequest(prompt="a" * 100, sampling=VALID_SAMPLING))
        check_invalid(error, "prompt", "100 tokens", "context window of 64")
        assert_idle(core)
        await serves(engine)
        assert_idle(core)

    with serving(core) as engine:
        asyncio.run(main(engine))


def test_request_that_can_never_fit_the_kv_pool():
    core = tiny_core(kv_slots=64)

    async def main(engine: Engine) -> None:
        request = GenerateRequest(prompt="0123456789", sampling=SamplingParams(max_tokens=200))
        error = await first_error(engine, request)
        check_invalid(error, "max_tokens", "210 KV slots", "pool has 64", "lower max_tokens")
        assert_idle(core)
        # n multiplies the need: 10 + 3 x 20 = 70 > 64.
        error = await first_error(
            engine, GenerateRequest(prompt="0123456789", sampling=SamplingParams(max_tokens=20, n=3))
        )
        check_invalid(error, "max_tokens", "70 KV slots")
        assert_idle(core)
        await serves(engine)
        assert_idle(core)

    with serving(core) as engine:
        asyncio.run(main(engine))


# ---- models that cannot be loaded ------------------------------------------------------------------------------------


def test_unknown_model_path():
    with pytest.raises(ModelNotFoundError, match=r"/nonexistent/model\.gguf") as raised:
        EngineCore(EngineConfig(model="/nonexistent/model.gguf", device="cpu"))
    assert ".gguf file" in str(raised.value)  # says what would be accepted


def test_unknown_dummy_shape():
    with pytest.raises(ModelNotFoundError, match="no-such-shape") as raised:
        EngineCore(EngineConfig(model="no-such-shape", weights="dummy", device="cpu"))
    assert "tiny" in str(raised.value)  # lists the shapes that exist


def test_unknown_weights_format():
    with pytest.raises(ModelLoadError, match="pickle") as raised:
        EngineCore(EngineConfig(model="tiny", weights="pickle", device="cpu"))
    for choice in ("gguf", "safetensors", "dummy"):
        assert choice in str(raised.value)


def test_random_bytes_with_a_gguf_suffix(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(ModelLoadError) as raised:
        EngineCore(EngineConfig(model=str(path), device="cpu"))
    assert str(path) in str(raised.value)
    assert "GGUF" in str(raised.value)


def test_truncated_gguf(tmp_path, default_gguf):
    path = tmp_path / "truncated.gguf"
    with open(default_gguf, "rb") as source, open(path, "wb") as target:
        target.write(source.read(1 << 20))
    with pytest.raises(ModelLoadError) as raised:  # not struct.error / ValueError / IndexError from the reader
        EngineCore(EngineConfig(model=str(path), device="cpu", dtype="float32"))
    assert path.name in str(raised.value)


def test_unsupported_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_name("tiny-gpt2")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError) as raised:
        EngineCore(EngineConfig(model=str(path), device="cpu"))
    message = str(raised.value)
    assert "gpt2" in message and "architecture" in message
    assert "llama" in message  # names what is supported


@pytest.mark.slow  # gguf's reader takes ~10 s over this file's 128k-token vocabulary
def test_vocab_only_gguf(shared_data):
    vocab = shared_data / "tokenizers" / "ggml-vocab-llama-bpe.gguf"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is absent")
    with pytest.raises(ModelLoadError) as raised:
        EngineCore(EngineConfig(model=str(vocab), device="cpu"))
    assert vocab.name in str(raised.value)
    assert "vocabulary-only" in str(raised.value)
