"""The evaluation report: Markdown content from a hand-made result, real PNGs beside it, optional
parts left out, clear errors for a malformed result, and no half report when plotting fails."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder.evaluate import report
from builder.evaluate.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RESULT: dict[str, Any] = {
    "dataset": "amazon-beauty",
    "protocol": "loo-full",
    "split": "test",
    "k": 20,
    "users": 22363,
    "metrics": {
        "HR@5": 0.05, "NDCG@5": 0.03, "HR@10": 0.07123, "NDCG@10": 0.0401, "HR@20": 0.1012,
        "NDCG@20": 0.0478, "MRR@20": 0.0333, "coverage@20": 0.41, "ILD@20": 0.62, "novelty@20": 9.8765,
        "head_share@20": 0.35,
    },
    "ci": {"HR@10": [0.0680, 0.07449], "NDCG@10": [0.0385, 0.0417]},
    "baselines": {
        "popularity": {"metrics": {"HR@10": 0.0201, "NDCG@10": 0.0102, "HR@20": 0.03, "NDCG@20": 0.0125},
                       "ci": {"HR@10": [0.019, 0.0212]}},
        "covisit": {"metrics": {"HR@10": 0.05, "NDCG@10": 0.028}},
    },
    "segments": {
        "shopper:returning": {"users": 1234, "metrics": {"full": {"HR@10": 0.0811, "NDCG@10": 0.0456},
                                                         "popularity": {"HR@10": 0.0222, "NDCG@10": 0.0111}}},
        "target:tail": {"users": 567, "metrics": {"popularity": {"HR@10": 0.0011}, "full": {"HR@10": 0.0333}}},
    },
    "published": {"SASRec": {"HR@10": 0.0605, "NDCG@10": 0.0318}},
    "ablation": [
        {"name": "all ingredients", "metrics": {"NDCG@10": 0.0401, "HR@10": 0.0712}},
        {"name": "without ranker", "metrics": {"NDCG@10": 0.0351, "HR@10": 0.0650}},
    ],
    "correlation": {"spearman(rank, planted affinity)": 0.8123},
    "run": {"commit": "abc123", "machine": "bench-01 (16 cores)", "command": "aisle eval --store beauty --protocol loo-full",
            "seconds": {"build": 123.4, "evaluate": 56.7, "total": 180.1}, "started_at": "2025-05-01T10:00:00Z"},
}

MINIMAL: dict[str, Any] = {"dataset": "tiny", "protocol": "temporal", "metrics": {"HR@10": 0.5}}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE
    import matplotlib.image

    height, width, channels = matplotlib.image.imread(path).shape
    assert height >= 200 and width >= 400 and channels in (3, 4)


def table_row(markdown: str, first_cell: str) -> str:
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, rows)
    return rows[0]


def test_full_result_markdown_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "beauty.md"
    written = write_report(copy.deepcopy(RESULT), out)

    pngs = [tmp_path / f"beauty-{name}.png" for name in ("metrics", "segments", "ablation")]
    assert written == [out, *pngs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no staging left
    for png in pngs:
        assert_png(png)

    md = out.read_text(encoding="utf-8")
    assert md.startswith("# Evaluation: amazon-beauty (loo-full, test split, 22,363 shoppers)\n")
    assert "aisle eval --store beauty --protocol loo-full" in md
    assert "`abc123`" in md and "bench-01 (16 cores)" in md
    assert "build 123.4 s, evaluate 56.7 s, total 180.1 s" in md

    header = table_row(md, "Variant")
    assert header == "| Variant | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR@20 | coverage@20 | ILD@20 | novelty@20 | head_share@20 |"
    full = table_row(md, "full pipeline")
    assert full == ("| full pipeline | 0.0712 [0.0680, 0.0745] | 0.0401 [0.0385, 0.0417] | 0.1012 | 0.0478 | 0.0333"
                    " | 0.4100 | 0.6200 | 9.8765 | 0.3500 |")
    assert table_row(md, "popularity").startswith("| popularity | 0.0201 [0.0190, 0.0212] | 0.0102 | 0.0300 | 0.0125 | – |")
    assert table_row(md, "SASRec (published, not rerun)") == "| SASRec (published, not rerun) | 0.0605 | 0.0318 | – | – | – | – | – | – | – |"
    # Order: pipeline, baselines, published.
    assert md.index("| full pipeline |") < md.index("| popularity |") < md.index("| covisit |") < md.index("| SASRec")

    assert "| shopper:returning | 1,234 | full pipeline | 0.0811 | 0.0456 |" in md
    assert "| shopper:returning | 1,234 | popularity | 0.0222 | 0.0111 |" in md
    assert "| target:tail | 567 | full pipeline | 0.0333 | – |" in md  # pipeline first even when listed second
    assert md.index("| target:tail | 567 | full pipeline") < md.index("| target:tail | 567 | popularity")

    assert "| without ranker | 0.0650 (-0.0062) | 0.0351 (-0.0050) |" in md
    assert "| spearman(rank, planted affinity) | 0.8123 |" in md

    for png in pngs:
        assert f"]({png.name})" in md  # relative links, resolvable from the Markdown's directory


def _head(ece: float, rate: float) -> dict[str, Any]:
    table = {"strategy": "quantile", "mean_predicted": [rate * 0.5, rate * 1.5], "observed": [rate * 0.55, rate * 1.45],
             "low": [rate * 0.4, rate * 1.3], "high": [rate * 0.7, rate * 1.6], "weight": [500.0, 500.0], "count": [500, 500]}
    metrics = {"ece": ece, "log_loss": 0.3, "auc": 0.71, "rows": 1000, "weight": 1000.0, "positive_rate": rate,
               "mean_predicted": rate, "table": table}
    return {"calibrated": metrics, "uncalibrated": {**metrics, "ece": ece * 3}, "calibration": "isotonic",
            "position": "none", "labels": "weighted", "train_rows": 5000, "train_positives": 400}


def test_heads_section_and_reliability_plot(tmp_path: Path) -> None:
    result = copy.deepcopy(MINIMAL)
    result["metrics"] |= {"revenue_NDCG@10": 0.61}
    click = _head(0.004, 0.07)
    click["calibrated"]["ece_floor"] = 0.0035  # the purchase head comes from a report written before the floor was measured
    result["heads"] = {"click": {**click, "position": "feature", "labels": ""}, "purchase": _head(0.012, 0.15)}
    out = tmp_path / "heads.md"
    written = write_report(result, out)
    assert tmp_path / "heads-reliability.png" in written
    assert_png(tmp_path / "heads-reliability.png")
    md = out.read_text(encoding="utf-8")
    assert table_row(md, "Variant") == "| Variant | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR@20 | revenue_NDCG@10 |"
    assert "## Ranking heads" in md
    assert table_row(md, "Head").startswith("| Head | ECE | ECE noise floor | ECE uncalibrated |")
    assert table_row(md, "click") == "| click | 0.0040 | 0.0035 | 0.0120 | 0.3000 | 0.7100 | 1,000 | 0.0700 | 0.0700 | isotonic | feature |"
    assert table_row(md, "purchase").startswith("| purchase | 0.0120 | – | 0.0360 |")
    assert table_row(md, "purchase").endswith("| isotonic | weighted |")
    assert "](heads-reliability.png)" in md


def test_optional_parts_absent(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "tiny report.md"  # missing directory and a space in the stem
    written = write_report(dict(MINIMAL), out)

    assert written == [out, tmp_path / "sub" / "tiny report-metrics.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny report-metrics.png", "tiny report.md"]
    assert_png(written[1])
    md = out.read_text(encoding="utf-8")
    assert md.startswith("# Evaluation: tiny (temporal)\n")
    assert table_row(md, "full pipeline") == "| full pipeline | 0.5000 | – | – | – | – |"
    assert "](tiny%20report-metrics.png)" in md
    assert "No run record" in md
    for section in ("## Segments", "## Ablation", "## Correlation", "published"):
        assert section not in md


@pytest.mark.parametrize("key", ["dataset", "protocol", "metrics"])
def test_missing_required_key_names_it(tmp_path: Path, key: str) -> None:
    result = copy.deepcopy(RESULT)
    del result[key]
    with pytest.raises(ValueError, match=key):
        write_report(result, tmp_path / "r.md")
    assert list(tmp_path.iterdir()) == []


def test_metrics_must_be_a_dict(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metrics"):
        write_report({**MINIMAL, "metrics": [0.1]}, tmp_path / "r.md")


def test_plot_failure_leaves_no_half_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(report, "_plot_ablation", broken)  # the last plot: the others were already drawn
    with pytest.raises(RuntimeError, match="plotting broke"):
        write_report(copy.deepcopy(RESULT), tmp_path / "r.md")
    assert list(tmp_path.iterdir()) == []


def test_plot_failure_keeps_the_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.md"
    written = write_report(dict(MINIMAL), out)
    before = {p: p.read_bytes() for p in written}

    def broken(*args: object) -> None:
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(report, "_plot_segments", broken)
    with pytest.raises(RuntimeError):
        write_report(copy.deepcopy(RESULT), out)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, builder.evaluate.report; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "False"
