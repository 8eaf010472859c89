"""Every supported model family runs through its own transformers forward with our cache objects."""

from __future__ import annotations

import pytest

from bench.models import load_model
from tests.helpers import generate


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral", "tiny-gpt2"])
def test_full_cache_matches_naive_on_each_family(shape):
    loaded = load_model(f"random:{shape}")
    prompts = [[5, 17, 923, 44, 8], [300, 2000, 7]]
    naive = generate(loaded.model, "naive", prompts, 12)
    assert generate(loaded.model, "full", prompts, 12) == naive
    assert generate(loaded.model, "hf-generate", prompts, 12) == naive


def test_random_shape_of_the_real_model_has_its_dimensions():
    loaded = load_model("random:smollm2-135m")
    c = loaded.model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size) == (30, 9, 3, 576)
    assert c.vocab_size == len(loaded.tokenizer)
