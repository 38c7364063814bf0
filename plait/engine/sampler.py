"""Token selection for a batch of rows, each with its own parameters and random generator.

Random draws use the "exponential race": ``argmax(p / q)`` with ``q ~ Exp(1)`` picks token i with probability
``p_i``. Each row draws ``q`` from its request's own generator, so a seeded request samples the same tokens
whatever else is in the batch.

Presence and frequency penalties are subtracted from the logits of the rows that set them, first (before
temperature, filters and the greedy argmax), from counts of the tokens each sample has generated; every other row's
logits are left as they are, so a row's token never depends on its batch-mates' penalties.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from plait.engine.host_copy import pinned_to_device, to_device
from plait.engine.request import TokenLogprob
from plait.engine.sampling_params import SamplingParams


@dataclass
class SampleRow:
    """One row of a sampling step: its parameters, its random generator and (read only when ``params.penalized``)
    its sample's tokens: the prompt's ``num_prompt`` first, then those generated so far (a negative placeholder for
    a token not read back yet is not counted)."""

    params: SamplingParams
    generator: torch.Generator
    token_ids: list[int] = field(default_factory=list)
    num_prompt: int = 0


ARGMAX_CHUNK = 256


def row_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` (the first index of each row's maximum), faster for a few wide rows on a GPU.

    A one-row argmax over a 128k vocabulary is reduced by a single thread block (28 us on an H200, half a percent of
    an 8B decode step); here the row is cut into chunks whose maxima are found in parallel, then the first chunk
    holding the row's maximum gives the index (ties resolve to the first index, as ``argmax`` does).
    """
    rows, vocab = logits.shape
    if rows > 16 or vocab % ARGMAX_CHUNK or vocab < 16 * ARGMAX_CHUNK:
        return logits.argmax(dim=-1)
    best, where = logits.view(rows, vocab // ARGMAX_CHUNK, ARGMAX_CHUNK).max(dim=-1)
    chunk = best.argmax(dim=-1, keepdim=True)
    return (chunk * ARGMAX_CHUNK + where.gather(1, chunk)).squeeze(1)


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """Pick one token per row of ``logits`` (``[rows, vocab]``, float32). Returns int64 ``[rows]`` on the CPU."""
    return sample_on_device(logits, rows).cpu()


def sample_on_device(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """``sample`` without the copy to the host: the tokens stay on ``logits``' device and nothing waits for them.
    ``logits`` itself is never modified."""
    logits = apply_penalties(logits, rows)  # ``logits`` itself when no row sets a penalty
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    if len(greedy) == len(rows):  # one kernel, nothing copied: the common decode step of a greedy batch
        return row_argmax(logits)
    tokens = torch.empty(len(rows), dtype=torch.int64, device=logits.device)
    if greedy:
        index = to_device(greedy, torch.int64, logits.device)
        tokens[index] = logits[index].argmax(dim=-1)
    random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
    if random_rows:
        index = to_device(random_rows, torch.int64, logits.device)
        params = [rows[i].params for i in random_rows]
        probs = _filtered_probs(logits[index], params)
        noise = pinned_to_device(
            torch.stack(
                [
                    torch.empty(probs.shape[1], device="cpu").exponential_(generator=rows[i].generator)
                    for i in random_rows
                ]
            ),
            probs.device,
        )
        tokens[index] = (probs / noise).argmax(dim=-1)
    return tokens


def apply_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """``logits`` (``[rows, vocab]``) with each penalised row lowered by ``frequency_penalty * count[t] +
    presence_penalty * (count[t] > 0)``, ``count`` the times its sample generated token ``t``. A new tensor where
    some row sets a penalty (the others copied unchanged); ``logits`` itself where none does.

    The counts are rebuilt each step from the rows' host token lists (one flat copy to the device, one scatter-add):
    host work proportional to the tokens the penalised rows generated, none for the other rows.
    """
    penalized = [i for i, r in enumerate(rows) if r.params.penalized]
    if not penalized:
        return logits
    device, vocab = logits.device, logits.shape[1]
    outputs = [rows[i].token_ids[rows[i].num_prompt :] for i in penalized]
    tokens = np.fromiter(itertools.chain.from_iterable(outputs), dtype=np.int64)
    owner = np.repeat(np.arange(len(penalized), dtype=np.int64), [len(o) for o in outputs])
    counted = tokens >= 0
    flat = torch.from_numpy(owner[counted] * vocab + tokens[counted])
    counts = torch.zeros(len(penalized) * vocab, dtype=torch.float32, device=device)
    counts.scatter_add_(0, pinned_to_device(flat, device), torch.ones(flat.shape, dtype=torch.float32, device=device))
    counts = counts.view(len(penalized), vocab)
    frequency = to_device([rows[i].params.frequency_penalty for i in penalized], torch.float32, device)
    presence = to_device([rows[i].params.presence_penalty for i in penalized], torch.float32, device)
    penalty = frequency[:, None] * counts + presence[:, None] * (counts > 0)
    if len(penalized) == len(rows):
        return logits - penalty.to(logits.dtype)
    index = to_device(penalized, torch.int64, device)
    return logits.index_put((index,), logits[index] - penalty.to(logits.dtype))


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Softmax at each row's temperature, with its top-k / top-p / min-p filters applied."""
    device = logits.device
    temperature = to_device([p.temperature for p in params], torch.float32, device)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    if any(p.min_p > 0 for p in params):
        min_p = to_device([p.min_p for p in params], torch.float32, device)
        probs = probs.masked_fill(probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values, 0.0)
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        ranks = torch.arange(probs.shape[1], device=device)[None, :]
        top_k = to_device([p.top_k if p.top_k > 0 else probs.shape[1] for p in params], torch.int64, device)
        drop = ranks >= top_k[:, None]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        # top-p applies to what min-p and top-k kept, renormalised (so filters compose as in other engines).
        sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
        top_p = to_device([p.top_p for p in params], torch.float32, device)
        # Keep the smallest set whose mass reaches top_p: drop a token when the mass before it already does.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before >= top_p[:, None]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
    return probs


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top_n: list[int]) -> list[TokenLogprob]:
    """Log-probabilities (raw model distribution) of the chosen tokens, with ``top_n[i]`` alternatives per row."""
    return logprobs_to_host(logprob_tensors(logits, tokens, top_n), tokens.tolist(), top_n)


LogprobTensors = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # chosen, top values, top ids


def logprob_tensors(logits: torch.Tensor, tokens: torch.Tensor, top_n: list[int]) -> LogprobTensors:
    """The device half of ``token_logprobs``: nothing is read back, so the host need not wait for the GPU."""
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(1, tokens.to(logits.device)[:, None]).squeeze(1)
    k = max(top_n, default=0)
    if not k:
        return chosen, None, None
    top_values, top_ids = logprobs.topk(k, dim=-1)
    return chosen, top_values, top_ids


def logprobs_to_host(tensors: LogprobTensors, tokens: list[int], top_n: list[int]) -> list[TokenLogprob]:
    """The host half of ``token_logprobs``: one ``TokenLogprob`` per row."""
    chosen_t, values_t, ids_t = tensors
    chosen = chosen_t.tolist()
    top_values = values_t.tolist() if values_t is not None else None
    top_ids = ids_t.tolist() if ids_t is not None else None
    result = []
    for i, token in enumerate(tokens):
        top = list(zip(top_ids[i][: top_n[i]], top_values[i][: top_n[i]], strict=True)) if top_values else []
        result.append(TokenLogprob(token, chosen[i], _chosen_first_among_ties(top, token, chosen[i])))
    return result


def _chosen_first_among_ties(top: list[tuple[int, float]], token: int, logprob: float) -> list[tuple[int, float]]:
    """``top`` with the chosen token first among the alternatives that tie with it. Low-precision logits tie often,
    and ``topk`` orders ties arbitrarily: a greedy token must still be listed as the most likely."""
    if not top or top[0][0] == token or top[0][1] != logprob:
        return top
    rest = [entry for entry in top if entry[0] != token]
    return [(token, logprob), *rest][: len(top)]
