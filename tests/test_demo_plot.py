"""The Exo2Ego demo's PNG: every panel says what its lines, bars and dots are."""
import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from exo2ego_jax.methods.exo2ego import demo as exo2ego_demo  # noqa: E402


def test_every_panel_is_self_explaining(tmp_path, monkeypatch):
    def curve(scale):
        return [{"step": s, "loss": scale / s} for s in (10, 20, 30)]

    runs = {}
    for seed in (0, 1, 2):
        runs[f"a{seed}"] = {"variant": "a_exo2ego", "seed": seed, "accuracy": 50.0 + seed,
                            "curves": {"stage1": curve(3), "stage2": curve(2), "stage3": curve(1)}}
        runs[f"b{seed}"] = {"variant": "b_ego_only", "seed": seed, "accuracy": 45.0 + seed,
                            "curves": {"ego_captions": curve(2), "stage3": curve(1.5)}}
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    exo2ego_demo.plot({"runs": runs}, str(tmp_path / "demo.png"))
    (fig,) = figures
    labels = {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes}
    seeds = ["seed 0", "seed 1", "seed 2"]
    a, b = exo2ego_demo.VARIANTS["a_exo2ego"], exo2ego_demo.VARIANTS["b_ego_only"]
    assert labels["stage1: training loss"] == [a] + seeds
    assert labels["ego_captions: training loss"] == [b] + seeds
    assert labels["stage3: training loss"] == [a, b] + seeds  # both variants' curves in one panel
    assert sorted(labels["held-out synthetic EgoBench"]) == ["chance (4 options)", "mean over seeds", "one seed"]
    (acc,) = [ax for ax in fig.axes if ax.get_title() == "held-out synthetic EgoBench"]
    assert [line.get_ydata()[0] for line in acc.get_lines()] == [25.0]  # the chance line
