"""Device check: a few BAPO steps with the ``transformers`` engine on CUDA (bf16), for the embedded
model and a mid-size random model built locally (no downloads, no vLLM).

    python scripts/gpu_check.py            # on a GPU machine: prints tokens/s, peak memory
    python scripts/gpu_check.py --cpu      # CI smoke test: the same code path, tiny sizes

Prints one line per model and exits non-zero if any metric is not finite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bapo.models import load_model  # noqa: E402
from bapo.tasks.base import Example, Task  # noqa: E402
from bapo.train.config import load_config  # noqa: E402
from bapo.train.trainer import Trainer  # noqa: E402


class DigitTask(Task):
    """A reward a random model can get both right and wrong: does the completion contain a 7?"""

    name = "contains-7"

    def sample(self, n, rng):
        return [Example(f"{rng.randint(10, 99)}+{rng.randint(10, 99)}=", "7") for _ in range(n)]

    def reward(self, completion, example):
        return float(example.answer in completion)


def random_llama(tokenizer, hidden: int, layers: int, inter: int, heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def run(name, model, tokenizer, task, device, overrides, out_dir) -> dict:
    cfg = load_config("cpu-tiny", algo="bapo", overrides=overrides + [
        f"model.device={device}", f"run.out_dir={out_dir / name}", "run.progress=false",
        "run.eval_every=0",
    ])  # fmt: skip
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer, task=task)
    t0 = time.time()
    records = trainer.train()
    wall = time.time() - t0
    last = records[-1]
    keys = ["reward/mean", "entropy/mean", "bapo/rho", "bapo/c_low", "bapo/c_high",
            "policy/grad_norm", "policy/approx_kl", "clip/high_frac", "clip/low_frac"]  # fmt: skip
    finite = all(
        isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for r in records for k in keys
    )
    n_params = sum(p.numel() for p in model.parameters())
    out = {
        "model": name,
        "params_M": round(n_params / 1e6, 1),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "steps": len(records),
        "rollout_tokens_per_s": round(_mean(records[1:] or records, "speed/rollout_tokens_per_s")),
        "train_tokens_per_s": round(_mean(records[1:] or records, "speed/train_tokens_per_s")),
        "step_s": round(_mean(records[1:] or records, "time/step_s"), 3),
        "wall_s": round(wall, 1),
        "peak_gpu_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.startswith("cuda") else None,
        # BAPO's search pass (train.keep_graphs=auto): graphs kept, micro-batches forwarded
        # twice, and what the kept graphs held (allocated-memory growth on CUDA)
        "graphs_kept": _mean(records, "train/graphs_kept"),
        "extra_forwards": _mean(records, "train/extra_forwards"),
        "graphs_MiB": round(_mean(records, "memory/graphs_mb"), 1),
        "metrics_finite": finite,
        "last": {k: last.get(k) for k in keys},
    }  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


def _mean(records, key):
    vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return sum(vals) / max(len(vals), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="smoke test on CPU with tiny sizes")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the smoke test", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else "cuda"
    steps = args.steps or (2 if args.cpu else 4)
    out_dir = Path(tempfile.mkdtemp(prefix="bapo-gpu-check-"))
    results = []

    model, tok = load_model("embedded", device=device)
    from bapo.models import EMBEDDED_TASKS
    from bapo.tasks import make_task

    common = [f"train.steps={steps}", "train.epochs=2", "model.dtype=auto"]
    results.append(run("embedded", model, tok, make_task("arithmetic", **EMBEDDED_TASKS["arithmetic"]),
                       device,
                       common + ["train.prompts_per_step=32", "train.group_size=8"], out_dir))  # fmt: skip

    # a mid-size random model (~250M parameters on GPU), same tokenizer, longer completions
    size = dict(hidden=64, layers=2, inter=128, heads=4) if args.cpu else \
        dict(hidden=1024, layers=20, inter=2816, heads=16)  # fmt: skip
    mid = random_llama(tok, **size)
    gen_len = 16 if args.cpu else 128
    results.append(run("random-mid", mid, tok, DigitTask(), device, common + [
        "train.prompts_per_step=16", "train.group_size=8", f"rollout.max_new_tokens={gen_len}",
        "train.micro_batch_size=32", "train.lr=1e-5", "model.gradient_checkpointing=true",
    ], out_dir))  # fmt: skip
    ok = all(r["metrics_finite"] for r in results)
    print("OK" if ok else "FAILED: non-finite metrics", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
