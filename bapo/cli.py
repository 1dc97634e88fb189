"""The command line: ``bapo train`` and ``bapo compare``.

bapo train --preset cpu-tiny --algo bapo [algo.rho0=0.5 train.steps=20 ...]
bapo train --config my.yaml --resume
bapo compare --preset cpu-guess --algos grpo,clip-higher,bapo --seeds 3 --staleness 1,4
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from bapo.train.config import ALGOS, PRESETS, SCENARIOS, load_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help=f"one of {', '.join(sorted(PRESETS))}")
    p.add_argument("--config", default=None, help="a YAML config file (instead of a preset)")
    p.add_argument("--out", default=None, help="run folder (run.out_dir)")
    p.add_argument(
        "--scenario", default=None, choices=list(SCENARIOS),
        help="off-policy scenario: epochs (reused batches), replay, partial (rollouts)",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", help="section.field=value, e.g. algo.rho0=0.5")


def _staleness_levels(text: str | None) -> int | list[int] | None:
    """``"4"`` -> 4, ``"1,4,8"`` -> [1, 4, 8]; anything else names --staleness."""
    if text is None:
        return None
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or any(s < 1 for s in levels):
        raise ValueError(
            f"--staleness={text!r} is not allowed: use integers >= 1, one or a list like 1,4,8"
        )
    return levels[0] if len(levels) == 1 else levels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bapo", description="BAPO: train and compare off-policy RL")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train one run")
    _common(tr)
    tr.add_argument("--algo", default=None, help=f"one of {', '.join(ALGOS)}")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    cp = sub.add_parser("compare", help="several algorithms x seeds, with an HTML report")
    _common(cp)
    cp.add_argument("--algos", default="grpo,clip-higher,bapo")
    cp.add_argument("--seeds", type=int, default=3)
    cp.add_argument(
        "--staleness", default=None,
        help="policy updates per rollout batch; a list such as 1,4,8 compares levels",
    )  # fmt: skip
    cp.add_argument(
        "--via", default="epochs", choices=["epochs", "mini-batches"],
        help="how a batch serves S updates (both matched by updates, see bapo.train.compare): "
        "epochs (S passes, the paper's ppo_epoch) or mini-batches (S fresh mini-batches)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    shown, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _run(args)
    finally:
        warnings.formatwarning = shown


def _run(args: argparse.Namespace) -> int:
    """The command; errors as one line and exit code 2, interrupts as 130 / 143."""
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    try:
        if args.cmd == "train":
            cfg = load_config(args.preset, args.config, args.algo, overrides, args.scenario)
            from bapo.train.trainer import Trainer

            Trainer(cfg, resume=args.resume).train()
            print(f"run written to {cfg.run.out_dir}")
        else:
            if not args.out:
                overrides.append(f"run.out_dir=runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
            cfg = load_config(args.preset, args.config, None, overrides, args.scenario)
            from bapo.train.compare import run_compare

            algos = [a.strip() for a in args.algos.split(",") if a.strip()]
            levels = _staleness_levels(args.staleness)
            run_compare(cfg, algos, args.seeds, cfg.run.out_dir, staleness=levels, via=args.via)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"bapo: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # 130 for SIGINT, 143 for SIGTERM (bapo.train.trainer)
        from bapo.train.trainer import HardInterrupt

        if isinstance(e, HardInterrupt):
            print(f"bapo: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except RuntimeError as e:
        from bapo.train.trainer import NonFiniteLossError

        if not isinstance(e, NonFiniteLossError):
            raise
        print(f"bapo: error: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"bapo: warning: {_one_line(message)}\n"


def _one_line(e: BaseException | Warning | str) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
