import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="session")
def random_llama():
    """A randomly initialised tiny Llama (vocab 16: 0 pad, 1 bos, 2 eos, 3.. symbols)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded default (built once into BAPO_CACHE, default <repo>/.cache/bapo)."""
    import os
    from pathlib import Path

    os.environ.setdefault(
        "BAPO_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "bapo")
    )
    from bapo.models import load_model

    return load_model("embedded")
