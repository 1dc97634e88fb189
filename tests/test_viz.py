"""The notebook figures are package functions: they must draw what the numbers say."""

import plotly.graph_objects as go
import pytest
import torch

from bapo import BAPOConfig, search_path
from bapo.train.offpolicy import Sample
from bapo.viz.balance import TokenBatch, balance, balance_figure, balance_widget, search_widget
from bapo.viz.figures import search_path_figure
from bapo.viz.live import LiveDashboard
from bapo.viz.offpolicy import versions_figure
from bapo.viz.report import compare_figure, format_summary, metric_band, summary_rows, write_report


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    old = torch.log(torch.rand(200, generator=g) * 0.9 + 0.05)
    lp = old + 0.4 * torch.randn(200, generator=g)
    adv = torch.where(torch.rand(200, generator=g) < 0.3, 1.0, -1.0)
    return TokenBatch(lp, old, adv)


def test_balance_counts_and_share(batch):
    b = balance(batch, 0.8, 1.2)
    r = batch.ratio
    assert b["n_pos"] == int((batch.advantages > 0).sum())
    assert b["clipped_pos"] == int(((batch.advantages > 0) & (r >= 1.2)).sum())
    assert b["clipped_neg"] == int(((batch.advantages < 0) & (r <= 0.8)).sum())
    assert b["rho"] == pytest.approx(b["pos"] / (b["pos"] + b["neg"]))
    wider = balance(batch, 0.8, 3.0)  # un-clipping positive tokens raises the share
    assert wider["rho"] > b["rho"] and wider["clipped_pos"] < b["clipped_pos"]


def test_balance_figure_draws_every_token_once(batch):
    fig = balance_figure(batch, 0.8, 1.2)
    scatter = [t for t in fig.data if isinstance(t, go.Scattergl)]
    assert sum(len(t.x) for t in scatter) == len(batch.advantages)
    clipped = next(t for t in scatter if (t.name or "").startswith("A>0 clipped"))
    assert len(clipped.x) == balance(batch, 0.8, 1.2)["clipped_pos"]
    bar = next(t for t in fig.data if isinstance(t, go.Bar))
    assert sum(bar.y) == pytest.approx(1.0)
    # positives are drawn last (on top of the more numerous negatives); counts in the legend
    names = [t.name for t in scatter]
    assert names[-1].startswith("A>0") and names[0].startswith("A<0")
    assert names[-1] == f"A>0 clipped ({len(clipped.x)})"
    # bar labels carry the counts, so no text sits in the bars where the rho0 line runs
    assert bar.text is None and f"{balance(batch, 0.8, 1.2)['n_pos']} tokens" in bar.x[0]


def test_balance_figure_explains_zero_advantage_tokens(batch):
    adv = batch.advantages.clone()
    adv[:7] = 0.0
    zeroed = type(batch)(batch.log_probs, batch.old_log_probs, adv)
    fig = balance_figure(zeroed, 0.8, 1.2)
    assert "+ 7 tokens with A = 0" in fig.layout.xaxis.title.text
    scatter = [t for t in fig.data if isinstance(t, go.Scattergl)]
    assert sum(len(t.x) for t in scatter) == len(adv) - 7


def test_widgets_build_and_call_the_package_callbacks(batch):
    wdg = balance_widget(batch)
    assert [c.description for c in wdg.children[:4]] == [
        "c_low", "c_high", "measure", "pi_rollout weight"
    ]  # fmt: skip
    # moving a slider redraws the figure in place: c_high up clips fewer positive tokens
    clipped = next(t for t in wdg.figure.data if (t.name or "").startswith("A>0 clipped"))
    assert len(clipped.x) == balance(batch, 0.8, 1.2)["clipped_pos"]
    wdg.children[1].value = 3.0
    clipped = next(t for t in wdg.figure.data if (t.name or "").startswith("A>0 clipped"))
    assert len(clipped.x) == balance(batch, 0.8, 3.0)["clipped_pos"]
    assert "rho = " in wdg.figure.layout.annotations[0].text
    s = search_widget(batch, BAPOConfig())
    path = search_path(batch.log_probs, batch.old_log_probs, batch.advantages, None, BAPOConfig())
    assert s.children[0].value == path.stop
    s.children[0].value = 2
    assert len(s.figure.data[0].x) == 3  # the path drawn up to step 2


def test_search_path_figure_upto(batch):
    cfg = BAPOConfig()
    path = search_path(batch.log_probs, batch.old_log_probs, batch.advantages, None, cfg)
    fig = search_path_figure(path, cfg, upto=3)
    assert len(fig.data[0].x) == 4
    assert list(fig.data[0].y) == pytest.approx(path.rho[:4].tolist())


def records(values, key="entropy/mean"):
    return [{"step": i + 1, key: v} for i, v in enumerate(values)]


def test_metric_band_and_summary():
    nan = float("nan")
    runs = {"grpo": [records([3, 2, 1]), records([3, 1, 1])], "bapo": [records([3, nan, 3])]}
    steps, mean, lo, hi = metric_band(runs["grpo"], "entropy/mean")
    assert steps == [1, 2, 3] and mean == [3, 1.5, 1] and lo == [3, 1, 1] and hi == [3, 2, 1]
    rows = {r["algo"]: r for r in summary_rows(runs, last=1)}
    assert rows["grpo"]["final_entropy"] == 1 and rows["bapo"]["final_entropy"] == 3
    mean = {r["algo"]: r for r in summary_rows(runs, last=0)}
    assert mean["bapo"]["final_entropy"] == 3  # a nan step is skipped, not propagated
    assert "grpo" in format_summary(list(rows.values()))
    fig = compare_figure(runs, [("entropy/mean", "entropy")])
    names = [t.name for t in fig.data if t.showlegend]
    assert names == ["grpo", "bapo"]


def test_write_report_is_self_contained(tmp_path):
    path = write_report({"bapo": [records([1.0, 0.9])]}, tmp_path / "r.html", "t")
    html = path.read_text()
    assert len(html) > 1_000_000  # plotly.js is inlined ...
    assert '<script src="http' not in html  # ... not fetched from a CDN


def test_live_dashboard_grows_with_records():
    dash = LiveDashboard()
    cb = dash.callback("bapo")
    for rec in records([2.0, 1.5, 1.2]):
        cb(rec)
    assert dash.widget is not None  # anywidget comes with the notebooks extra
    tr = next(t for t in dash.widget.data if t.name == "bapo" and len(t.y))
    assert list(tr.y) == [2.0, 1.5, 1.2]
    static = dash.figure()
    assert any(list(t.y) == [2.0, 1.5, 1.2] for t in static.data)


def test_versions_figure_rows_are_token_versions():
    s = [Sample([1], [4, 5, 6], [0, 0, 0], 1.0, 0.5, versions=[0, 0, 3]),
         Sample([1], [4], [0], 0.0, -0.5, versions=[2])]  # fmt: skip
    fig = versions_figure(s)
    assert [list(r) for r in fig.data[0].z] == [[0, 0, 3], [2, None, None]]


def test_one_colour_per_algorithm_in_every_figure():
    from bapo.viz.report import ALGO_STYLE, arm_style

    runs = {"bapo S=4": [records([1, 2])], "grpo S=4": [records([1, 2])],
            "grpo S=1": [records([1, 2])], "clip-higher": [records([1, 2])]}  # fmt: skip
    fig = compare_figure(runs, [("entropy/mean", "entropy")])
    lines = {t.name: t.line for t in fig.data if t.showlegend}
    assert lines["bapo S=4"].color == ALGO_STYLE["bapo"][0]  # not the first colour of a cycle
    assert lines["grpo S=4"].color == lines["grpo S=1"].color == ALGO_STYLE["grpo"][0]
    assert lines["grpo S=4"].dash != lines["grpo S=1"].dash  # staleness picks the dash
    assert lines["clip-higher"].dash != "solid"  # visible on top of GRPO's identical bounds
    assert fig.layout.xaxis.title.text == "step" and fig.layout.yaxis.title.text == "nats/token"
    assert arm_style("someone else", 7)[1] == "solid"


def test_dashboard_draws_its_axes_and_rho0_before_the_first_step():
    dash = LiveDashboard(steps=30)
    fig = dash.widget
    assert len(fig.data) == 0
    keys = [k for k, _ in dash.metrics]
    i = keys.index("bapo/rho")
    yaxis = fig.layout[f"yaxis{i + 1 if i else ''}"]
    assert yaxis.title.text == "share of the loss"
    assert tuple(fig.layout.xaxis.range) == (0, 30)
    rho0_lines = [s for s in fig.layout.shapes if s.y0 == s.y1 == 0.4]
    assert len(rho0_lines) == 1


def test_hover_text_comes_from_the_glossary(tmp_path):
    from bapo.glossary import describe

    fig = compare_figure({"bapo": [records([1.0, 0.9])]}, [("entropy/mean", "entropy")])
    words = describe("entropy/mean").meaning.split()[:3]
    line = next(t for t in fig.data if t.name == "bapo")
    assert " ".join(words) in line.hovertemplate.replace("<br>", " ")
    dash = LiveDashboard(metrics=[("entropy/mean", "entropy")])
    dash.callback("grpo")(records([2.0])[0])
    assert " ".join(words) in dash.widget.data[0].hovertemplate.replace("<br>", " ")
    html = write_report({"bapo": [records([1.0, 0.9])]}, tmp_path / "r.html", "t").read_text()
    assert "What each panel shows" in html and describe("bapo/rho").meaning[:30] in html


def test_compare_figure_on_an_axis_of_updates():
    # staleness 1: one update per step; staleness 4: four.  Matched runs end at the same update.
    s1 = [{"step": i, "offpolicy/updates": 1, "entropy/mean": 1.0 - i / 10} for i in (1, 2, 3, 4)]
    s4 = [{"step": 1, "offpolicy/updates": 4, "entropy/mean": 0.5}]
    fig = compare_figure({"grpo S=1": [s1], "grpo S=4": [s4]}, [("entropy/mean", "H")], x="updates")
    lines = {t.name: list(t.x) for t in fig.data}
    assert lines == {"grpo S=1": [1, 2, 3, 4], "grpo S=4": [4]}
    assert fig.layout.xaxis.title.text == "optimizer updates"
    with pytest.raises(ValueError, match="x='epochs'"):
        compare_figure({"a": [s1]}, [("entropy/mean", "H")], x="epochs")
