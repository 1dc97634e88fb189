"""BAPO inside TRL's GRPOTrainer: the loss mapping (no TRL needed) and a real 2-step run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bapo import BAPOConfig, FixedClip
from bapo.integrations.trl import LOSS_TYPES, trl_policy_loss


def _trl_reference(lp, old, adv, mask, eps_low, eps_high, loss_type, *, accum, num_items, max_len,
                   weights=None, kl=None, beta=0.0):  # fmt: skip
    """TRL 1.16's own clipped loss (GRPOTrainer._compute_loss, token level), written out."""
    coef_1 = torch.exp(lp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    a = adv.unsqueeze(1)
    per_token = -torch.min(coef_1 * a, coef_2 * a)
    if weights is not None:
        per_token = per_token * weights
    if beta:
        per_token = per_token + beta * kl
    m = mask.float()
    if loss_type == "grpo":
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean() / accum
    if loss_type == "bnpo":
        return (per_token * m).sum() / m.sum().clamp(min=1) / accum
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.size(0) * max_len) / accum
    return (per_token * m).sum() / num_items  # dapo


def _batch(seed=0, b=6, t=7):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(b, t, generator=g) * 0.9 + 0.05)
    lp = (old + 0.4 * torch.randn(b, t, generator=g)).requires_grad_()
    adv = torch.randn(b, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[:, 0] = True
    return lp, old, adv, mask


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("extras", [False, True])
def test_fixed_clip_reproduces_trls_loss_and_gradient(loss_type, extras):
    lp, old, adv, mask = _batch(1)
    g = torch.Generator().manual_seed(5)
    weights = (torch.rand(lp.shape, generator=g) * 2) * (torch.rand(lp.shape, generator=g) > 0.2)
    kl = torch.rand(lp.shape, generator=g) if extras else None
    kw = dict(accum=2.0, num_items=31.0, max_len=9)
    extra = dict(weights=weights if extras else None, kl=kl, beta=0.04 if extras else 0.0)
    ref = _trl_reference(lp, old, adv, mask, 0.2, 0.28, loss_type, **kw, **extra)
    (g_ref,) = torch.autograd.grad(ref, lp)
    loss, stats = trl_policy_loss(
        lp, old, adv, mask, FixedClip(0.8, 1.28), loss_type,
        accumulation=2.0, num_items=31.0, max_completion_length=9,
        token_weights=extra["weights"], per_token_kl=kl, beta=extra["beta"],
    )  # fmt: skip
    (g_ours,) = torch.autograd.grad(loss, lp)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)
    assert stats.c_low == 0.8 and stats.c_high == 1.28


def test_bapo_clip_moves_bounds_on_a_negative_heavy_batch():
    lp, old, _, mask = _batch(2)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0])
    _, stats = trl_policy_loss(lp, old, adv, mask, BAPOConfig(), "grpo")
    assert stats.n_steps > 0 and (stats.c_high > 1.2 or stats.c_low > 0.6)
    assert stats.rho >= 0.4 or stats.c_low == BAPOConfig().b_minus


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="cispo"), "loss_type='cispo' is not supported"),
        (dict(loss_type="dapo"), "needs num_items"),
        (dict(loss_type="dr_grpo"), "max_completion_length=None is out of range"),
        (dict(loss_type="grpo", accumulation=0.0), "accumulation=0.0 is out of range"),
        (dict(loss_type="grpo", token_weights=-torch.ones(6, 7)), "must be >= 0"),
        (dict(loss_type="grpo", beta=0.1), "needs per_token_kl"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    lp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match=match):
        trl_policy_loss(lp, old, adv, mask, FixedClip(), **kwargs)


def test_trainer_class_needs_trl(monkeypatch):
    import sys

    import bapo.integrations.trl as mod

    monkeypatch.setitem(sys.modules, "trl", None)
    monkeypatch.setattr(mod, "_CLASS", None)
    with pytest.raises(ImportError, match=r"bapo\[trl\]"):
        mod.BAPOGRPOTrainer  # noqa: B018


# --- a real run ---------------------------------------------------------------------------------
def _tiny_model_dir(path):
    """A random 2-layer Llama and a word-level tokenizer, saved locally (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "a b c d e f g h one two three yes no".split()
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return tok


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs trl (bapo[trl])")
def test_bapo_grpo_trainer_two_steps_log_bapo_metrics_and_move_parameters(tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from bapo.integrations.trl import BAPOGRPOTrainer

    model_dir = tmp_path / "tiny"
    tok = _tiny_model_dir(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def reward_count_a(completions, **kwargs):  # varies within a group: advantages are not 0
        return [float(c.split().count("a")) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        max_steps=2, steps_per_generation=2, learning_rate=5e-3, logging_steps=1,
        save_strategy="no", seed=0, temperature=1.0, loss_type="grpo", beta=0.0,
    )  # fmt: skip
    data = Dataset.from_dict({"prompt": ["a b c", "one two", "yes no a", "d e f"] * 2})
    trainer = BAPOGRPOTrainer(
        model=model,
        reward_funcs=reward_count_a,
        args=args,
        train_dataset=data,
        processing_class=tok,
        clip=BAPOConfig(),
    )
    trainer.train()

    logged = [row for row in trainer.state.log_history if "bapo/c_low" in row]
    assert len(logged) == 2
    for row in logged:
        assert 0.6 <= row["bapo/c_low"] <= 0.9 and 1.2 <= row["bapo/c_high"] <= 3.0
        assert "bapo/rho" in row
    # the second step reuses the first step's generations: off-policy, ratio != 1 somewhere
    assert logged[1]["policy/approx_kl"] > 0
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed


def test_trainer_rejects_unsupported_options_before_loading(tmp_path):
    trl = pytest.importorskip("trl")
    from bapo.integrations.trl import BAPOGRPOTrainer

    args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                          loss_type="sapo")  # fmt: skip
    with pytest.raises(ValueError, match="loss_type='sapo'"):
        BAPOGRPOTrainer(model="does-not-exist", reward_funcs=[], args=args)


def _run(trainer_cls, tmp_path, name, **extra):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    model_dir = tmp_path / "tiny"
    tok = _tiny_model_dir(model_dir) if not model_dir.exists() else None
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)

    def reward_count_a(completions, **kwargs):
        return [float(c.split().count("a")) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / name), use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        max_steps=2, steps_per_generation=2, learning_rate=5e-3, logging_steps=1,
        save_strategy="no", seed=0, temperature=1.0, loss_type="grpo", beta=0.04,
    )  # fmt: skip
    data = Dataset.from_dict({"prompt": ["a b c", "one two", "yes no a", "d e f"] * 2})
    trainer = trainer_cls(model=model, reward_funcs=reward_count_a, args=args,
                          train_dataset=data, processing_class=tok, **extra)  # fmt: skip
    trainer.train()
    return [row for row in trainer.state.log_history if "entropy" in row]


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs trl (bapo[trl])")
def test_bapo_trainer_logs_every_metric_plain_grpo_logs_under_the_same_names(tmp_path):
    from trl import GRPOTrainer

    from bapo.integrations.trl import BAPOGRPOTrainer

    plain = _run(GRPOTrainer, tmp_path, "grpo")
    ours = _run(BAPOGRPOTrainer, tmp_path, "bapo", clip=FixedClip(0.8, 1.2))
    assert len(plain) == len(ours) == 2
    for p_row, b_row in zip(plain, ours):
        missing = set(p_row) - set(b_row)
        assert not missing, f"BAPOGRPOTrainer does not log {sorted(missing)}"
        extra = set(b_row) - set(p_row)
        assert {"bapo/c_low", "bapo/c_high", "bapo/rho", "bapo/search_skipped",
                "clip/high_frac", "tokens/count"} <= extra  # fmt: skip
        assert {"entropy", "kl", "clip_ratio/region_mean", "clip_ratio/high_max"} <= set(b_row)
    # same seed, same fixed bounds: the first step sees the same batch and logs the same values
    for key in ("entropy", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "reward"):
        assert ours[0][key] == pytest.approx(plain[0][key], rel=1e-4, abs=1e-7), key


def test_trainer_warns_that_grpo_epsilons_are_replaced_by_the_clip_rule(tmp_path):
    trl = pytest.importorskip("trl")
    from bapo.integrations.trl import _warn_replaced

    quiet = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_replaced(quiet)  # defaults: nothing to say
    for kw in (dict(epsilon=0.3), dict(epsilon_high=0.28)):
        args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)
        with pytest.warns(UserWarning, match=r"is ignored by BAPOGRPOTrainer.*FixedClip"):
            _warn_replaced(args)
