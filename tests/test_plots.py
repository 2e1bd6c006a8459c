"""Figures a reader understands: what each shows is in its title, the selected step and the
true pairs are marked, colour bars say what their colours mean (lfvila_cli.plots, report.py)."""

from __future__ import annotations

import pytest
import torch

from lfvila_cli import plots
from lfvila_cli.report import alignment_figure, similarity_figure


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures drawn, kept when they are closed."""
    kept = []
    plt = plots.pyplot()
    close = plt.close

    def keep(fig=None):
        kept.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return kept


def test_fine_tuning_curves_title_the_selecting_figure_and_mark_the_selected_step(tmp_path, figures, monkeypatch):
    from lfvila_cli.train import fit

    draw = plots.plot_curves
    train = [{"step": s, "loss/total": 3.0 - 0.1 * s} for s in range(1, 7)]
    val = [{"step": s, "split": "val", "selected_on": v} for s, v in ((2, 0.2), (4, 0.4), (6, 0.3))]
    captured = {}
    monkeypatch.setattr(plots, "plot_curves", lambda series, path, mark=None: captured.update(series=series, mark=mark))
    monkeypatch.setattr(fit, "save_pretrained", lambda *a, **k: None)
    fit.write_finished(None, None, tmp_path, train, val, val_keys=("selected_on",),
                       val_titles={"selected_on": "val accuracy (selects the model)"}, selected_step=4)
    assert list(captured["series"]) == ["train loss/total", "val accuracy (selects the model)"]
    assert captured["mark"] == (4, "selected: step 4")
    # drawn: the panel titles, the mark on every panel, its label
    draw(captured["series"], tmp_path / "loss.png", mark=captured["mark"])
    fig = figures[-1]
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["train loss/total", "val accuracy (selects the model)"]
    for ax in fig.axes:
        assert any(list(line.get_xdata()) == [4, 4] and line.get_linestyle() == "--" for line in ax.get_lines())
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["selected: step 4"]


def test_similarity_figure_names_model_and_split_outlines_true_pairs_and_labels_its_colours(tmp_path, figures):
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    video = torch.nn.functional.normalize(text + torch.randn(5, 8), dim=-1)
    similarity_figure({"text": text, "video": video}, [f"v{i}" for i in range(5)], 24, tmp_path / "s.png",
                      title="retrieval, test split: fine-tuned model 02a64394")
    fig = figures[-1]
    ax, bar = fig.axes
    assert ax.get_title().startswith("retrieval, test split: fine-tuned model 02a64394\nparagraph × video cosine similarity")
    assert bar.get_ylabel() == "cosine similarity"
    outlined = [(p.get_x(), p.get_y()) for p in ax.patches]
    assert outlined == [(i - 0.5, i - 0.5) for i in range(5)]  # the diagonal: the true pairs
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_alignment_figure_labels_its_colour_bars(tmp_path, figures):
    predicted = {"sentences": torch.randn(2, 4, 8), "clips": torch.randn(2, 4, 8), "sentence_mask": torch.ones(2, 4, dtype=torch.bool)}
    alignment_figure(predicted, ["a", "b"], 2, tmp_path / "a.png")
    fig = figures[-1]
    assert [ax.get_ylabel() for ax in fig.axes[2:]] == ["cosine similarity"] * 2
