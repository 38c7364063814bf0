"""The model runner of the simulated engine: the step takes as long as the cost model says, the logits are fixed.

Everything around the forward pass is the real one (``ModelRunner.prepare`` fills ``req_to_token`` and the batch's
layouts as it does on a GPU); only the model is replaced. The wait is measured from the start of ``prepare``, so a
step lasts ``max(host work, modelled device time)``, as with the overlap loop on a GPU.
"""

from __future__ import annotations

import time

import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.forward_batch import ForwardBatch
from plait.engine.inflight import InflightStep
from plait.engine.model_runner import ModelRunner
from plait.engine.scheduler import ScheduledBatch
from plait.engine.simulated_gpu import StepCostModel

# Logits are this wide: ids below 256 exist in every vocabulary (at least the bytes), and a narrow row keeps the
# sampler's CPU time far below the modelled step (a 128k-wide argmax costs milliseconds on a CPU).
LOGIT_WIDTH = 256


class _NoAttention:
    """Nothing to prepare: the simulated model reads no KV."""

    def prepare(self, forward: ForwardBatch) -> None:
        return None


class SimulatedRunner(ModelRunner):
    def __init__(self, cost: StepCostModel, kv_pool: KVPool, req_to_token: ReqToTokenPool, filler_token: int) -> None:
        super().__init__(None, kv_pool, req_to_token, _NoAttention(), torch.device("cpu"))  # type: ignore[arg-type]
        self.cost = cost
        self.device_seconds = 0.0  # modelled device time of every step so far
        self._row = torch.zeros(LOGIT_WIDTH)
        self._row[filler_token if 0 <= filler_token < LOGIT_WIDTH else 0] = 1.0  # what greedy decoding emits
        self._started: float | None = None

    def prepare(self, batch: ScheduledBatch, inflight: InflightStep | None = None) -> ForwardBatch:
        self._started = time.perf_counter()
        return super().prepare(batch, inflight)

    def forward(self, forward: ForwardBatch) -> torch.Tensor:
        seconds = self.cost.seconds(forward.layouts)
        self.device_seconds += seconds
        started = self._started if self._started is not None else time.perf_counter()
        self._started = None
        remaining = started + seconds - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return self._row.expand(forward.sample_indices.shape[0], LOGIT_WIDTH).clone()
