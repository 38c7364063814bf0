"""``select`` by scoring: the log-probability of each choice's tokens after the prompt, through the normal batch.

Tokenization boundary: the prompt is tokenized on its own (exactly as a generation request would see it) and each
choice is tokenized on its own (no BOS) and appended. This scores the choice as the continuation the model would
have to generate after this prompt, and every choice shares the prompt's tokens, so the radix cache computes the
prompt once. (Tokenizing ``prompt + choice`` as one string could merge tokens across the boundary, giving each choice
a different prompt.)

Each choice becomes a request for ``prompt + choice`` with ``prompt_logprobs_start = len(prompt)`` and one greedy
token (discarded): the scheduler computes the logits of the positions that predict the choice tokens during the
prefill, next to every other request in the batch.
"""

from __future__ import annotations

from dataclasses import replace

from plait.engine.errors import InvalidRequestError
from plait.engine.request import ChoiceScore, GenerateRequest, TokenLogprob
from plait.engine.sampling_params import SamplingParams
from plait.engine.tokenizer import Tokenizer


def scoring_requests(
    request: GenerateRequest, prompt_ids: list[int], choices: list[str], tokenizer: Tokenizer
) -> list[GenerateRequest]:
    """One request per choice: ``prompt_ids`` + the choice's tokens, returning the choice tokens' log-probabilities."""
    if not isinstance(choices, list) or not choices:
        raise InvalidRequestError("choices", "must be a non-empty list of strings")
    requests = []
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise InvalidRequestError("choices", f"choices[{i}] must be a non-empty string")
        choice_ids = tokenizer.encode(choice, add_special_tokens=False)
        sampling = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, prompt_logprobs_start=len(prompt_ids))
        requests.append(
            replace(
                request,
                prompt=None,
                messages=None,
                prompt_pieces=None,
                prompt_token_ids=prompt_ids + choice_ids,
                sampling=sampling,
                request_id=f"{request.request_id}-choice{i}",
            )
        )
    return requests


def choice_score(choice: str, prompt_logprobs: list[TokenLogprob] | None) -> ChoiceScore:
    if not prompt_logprobs:
        raise RuntimeError(f"no log-probabilities came back for choice {choice!r}")
    return ChoiceScore.from_logprobs(choice, [lp.logprob for lp in prompt_logprobs])
