"""Shared fixtures: the real embedded model (loaded once per session) and tiny random models."""

from __future__ import annotations

import os

import pytest
import torch

from bench.models import LoadedModel, load_model
from bench.workloads.text import encode_prompt

# Under pytest-xdist (make test) the workers share the cores: one worker's torch threads get its share of them,
# or two workers' matmuls oversubscribe a 2-core machine.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 2) // WORKERS)
torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def smol() -> LoadedModel:
    torch.set_num_threads(THREADS)
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol_prompts(smol) -> list[list[int]]:
    texts = ["What is the capital of France?", "Write one sentence about the sea.",
             "List three fruits that are red."]
    return [encode_prompt(smol.tokenizer, t) for t in texts]


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("random:tiny-llama")
