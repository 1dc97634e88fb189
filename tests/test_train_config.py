"""The config object: presets, YAML round trip, overrides, and errors that name the field."""

import pytest

from bapo import BAPOConfig, FixedClip
from bapo.train.config import Config, load_config, preset


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config("cpu-tiny", algo="bapo", overrides=["algo.rho0=0.5", "train.epochs=4"])
    assert cfg.algo.rho0 == 0.5 and cfg.train.epochs == 4 and cfg.staleness == 4
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    back = Config.from_yaml(path)
    assert back == cfg
    assert load_config(config_file=str(path)) == cfg


def test_algorithms_map_to_clip_rules():
    assert load_config(algo="grpo").algo.clip_rule() == FixedClip(0.8, 1.2)
    assert load_config(algo="clip-higher").algo.clip_rule() == FixedClip(0.8, 1.28)
    assert load_config(algo="bapo").algo.clip_rule() == BAPOConfig()
    assert load_config(algo="bapo-official").algo.clip_rule() == BAPOConfig.official()
    fixed = load_config(algo="fixed", overrides=["algo.c_low=0.7", "algo.c_high=1.5"])
    assert fixed.algo.clip_rule() == FixedClip(0.7, 1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(preset_name="laptop"), "unknown preset 'laptop'"),
        (dict(algo="ppo"), "unknown algorithm 'ppo'"),
        (dict(overrides=["algo.a_minus=1.5"]), "a_minus=1.5 is out of range"),
        (dict(overrides=["algo.rho0=2"]), "rho0"),
        (dict(overrides=["train.group_size=1"]), "train.group_size=1 is out of range"),
        (dict(overrides=["train.mini_batches=3"]), "train.mini_batches=3 does not divide"),
        (
            dict(overrides=["train.micro_batch_size=24"]),
            "train.micro_batch_size=24 does not divide",
        ),
        (dict(overrides=["train.epochs=0"]), "train.epochs=0 is out of range"),
        (dict(overrides=["train.lr=-1"]), "train.lr=-1.0 is out of range"),
        (dict(overrides=["train.steps=two"]), "train.steps='two' must be an integer"),
        (dict(overrides=["train.nope=1"]), "unknown field 'nope'"),
        (dict(overrides=["nope.x=1"]), "unknown section 'nope'"),
        (dict(overrides=["rollout.temperature=0"]), "temperature=0"),
        (dict(overrides=["rollout.engine=sglang"]), "rollout.engine='sglang'"),
        (dict(overrides=["algo.agg=sum"]), "algo.agg='sum'"),
        (dict(overrides=["justtext"]), "section.field=value"),
    ],
)
def test_bad_input_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(**kwargs)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ValueError, match="train.stepz"):
        load_config(config_file=str(bad))


def test_gpu_preset_is_complete():
    cfg = preset("gpu-qwen2.5-math-1.5b").validate()
    assert cfg.rollout.engine == "vllm" and cfg.model.dtype == "bfloat16"
    assert cfg.model.gradient_checkpointing and 8 <= cfg.train.group_size <= 16
    assert cfg.algo.clip_rule() == BAPOConfig()


@pytest.mark.parametrize("via", ["epochs", "mini-batches"])
@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_staleness_config_matches_updates_and_says_how(via, s):
    from bapo.train.compare import staleness_config

    base = load_config("cpu-guess")
    cfg = staleness_config(base, s, via).validate()
    assert cfg.staleness == s
    updates = cfg.train.steps * cfg.train.epochs * cfg.train.mini_batches
    assert updates == base.train.steps  # matched: every level makes the same number of updates
    samples = cfg.train.steps * cfg.train.prompts_per_step
    expected = base.train.steps * base.train.prompts_per_step // (s if via == "epochs" else 1)
    assert samples == expected
    per_update = cfg.train.prompts_per_step // cfg.train.mini_batches
    assert per_update == base.train.prompts_per_step  # each update sees a batch of the same size


def test_staleness_config_errors_name_the_field():
    from bapo.train.compare import staleness_config

    base = load_config("cpu-guess")
    with pytest.raises(ValueError, match="does not divide train.steps"):
        staleness_config(base, 7)
    with pytest.raises(ValueError, match="via='sideways'"):
        staleness_config(base, 2, "sideways")
    with pytest.raises(ValueError, match="staleness 1"):
        staleness_config(staleness_config(base, 2), 2)


def test_a_presets_task_options_do_not_leak_into_another_task():
    cfg = load_config("cpu-tiny", overrides=["task.name=guess-check"])
    assert cfg.task.options == {} and cfg.task.path is None
    kept = load_config("cpu-tiny", overrides=["task.options={digits: 2}", "task.name=arithmetic"])
    assert kept.task.options == {"digits": 2}  # the same task: the options stay
    given = load_config(
        "cpu-tiny", overrides=["task.name=guess-check", "task.options.max_operand=5"]
    )
    assert given.task.options == {"max_operand": 5}  # options given with the new task are kept


@pytest.mark.parametrize("raw", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
@pytest.mark.parametrize("field", ["train.lr", "train.steps", "algo.rho0", "rollout.top_p"])
def test_numbers_must_be_finite(field, raw):
    with pytest.raises(ValueError, match=f"^{field}=.*(finite numbers only|must be an integer)"):
        load_config(overrides=[f"{field}={raw}"])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n  lr: [1e-3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: malformed YAML at line \d+") as e:
        load_config(config_file=str(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="is not a file"):
        load_config(config_file=str(tmp_path))


def test_a_config_file_naming_another_task_starts_without_the_default_options(tmp_path):
    path = tmp_path / "guess.yaml"
    path.write_text("task:\n  name: guess-check\n")
    assert load_config(config_file=str(path)).task.options == {}
    path.write_text("task:\n  name: arithmetic\n")
    assert load_config(config_file=str(path)).task.options == {"digits": 1, "ops": "+-*"}
