"""The report reads a stored study and nothing else: files, tables, claims, partial stores."""

from __future__ import annotations

import base64
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iht.errors import StoreError
from iht.report.claims import Claim, evaluate_claims
from iht.report.study import write_study_report as write_report
from iht.report.study_figures import FIGURE_NAMES, _as_grid
from iht.report.study_tables import format_summary, summary_table, support_table
from iht.study.config import StudyConfig
from iht.study.runner import run_study
from iht.study.store import ResultStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_TAG = '<img src="data:image/png;base64,'
LEVELS = (1, 5, 14)
CONFIG = StudyConfig(runs=3, chunk_runs=3, max_steps=50, n_monte=5, levels=LEVELS)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real study (3 runs per level, 50 steps), computed once for the module."""
    directory = tmp_path_factory.mktemp("report") / "study"
    run_study(CONFIG, directory, progress=False, log=lambda _: None)
    return directory


@pytest.fixture(scope="module")
def reported(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the study with its report written once (for the tests that only read it)."""
    directory = copy_study(study, tmp_path_factory.mktemp("reported"))
    write_report(directory, print_summary=False)
    return directory


def copy_study(study: Path, tmp_path: Path) -> Path:
    """A private copy of the stored runs (no report files), safe to damage."""
    target = tmp_path / "copy"
    target.mkdir()
    shutil.copy(study / "config.json", target / "config.json")
    shutil.copytree(study / "parts", target / "parts")
    return target


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_files(reported: Path) -> None:
    directory = reported
    page = (directory / "report.html").read_text(encoding="utf-8")

    pngs = sorted((directory / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == set(FIGURE_NAMES)  # the showcase run is stored
    assert page.count(IMG_TAG) == len(pngs)
    for path in pngs:
        data = path.read_bytes()
        assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC), path.name
    # Every file is embedded, byte for byte.
    assert sorted(embedded_pngs(page)) == sorted(p.read_bytes() for p in pngs)

    # Self-contained: no external assets.
    assert "<link" not in page and "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    # The config is shown.
    for key in ("runs", "max_steps", "n_monte", "tol", "showcase_support_seed"):
        assert f">{key}<" in page
    for section in ("Table I", "Paper claims", "Summary table"):
        assert section in page


def test_table_one(reported: Path) -> None:
    directory = reported
    page = (directory / "report.html").read_text(encoding="utf-8")
    frame = ResultStore(directory).load()
    table = support_table(frame).set_index("s")
    assert list(table.index) == list(range(1, 15))
    for s in range(1, 15):
        assert table.at[s, "possible_supports"] == math.comb(15, s)
    for s in LEVELS:
        runs = CONFIG.runs
        assert table.at[s, "runs"] == runs
        assert 1 <= table.at[s, "distinct_final_supports"] <= runs
        assert f"<tr><td>{s}</td><td>{math.comb(15, s):,}</td><td>{runs}</td>" in page
    assert table.at[2, "runs"] == 0  # not a stored level


def test_summary_table_matches_pandas(study: Path) -> None:
    frame = ResultStore(study).load()
    table = summary_table(frame)
    assert list(table.index) == ["dense", *(str(s) for s in LEVELS)]
    assert table["runs"].sum() == len(frame) - 1  # the showcase run is not a level
    assert table.at["dense", "sparsity"] == 15
    iht = frame[frame["kind"] == "iht"]
    dense = frame[frame["kind"] == "dense"]
    for column in ("test_acc", "train_loss", "lr"):
        direct = iht.groupby("sparsity")[column].median()
        for s in LEVELS:
            assert table.at[str(s), f"{column}_median"] == pytest.approx(direct[s], rel=1e-12)
        assert table.at["dense", f"{column}_median"] == pytest.approx(dense[column].median())
    q75 = iht.groupby("sparsity")["test_loss"].quantile(0.75)
    assert table.at["5", "test_loss_q75"] == pytest.approx(q75[5], rel=1e-12)
    stable = iht.groupby("sparsity")["stable"].mean()
    assert table.at["14", "frac_stable"] == pytest.approx(stable[14])

    text = format_summary(table)
    lines = text.splitlines()
    assert lines[0].startswith("level")
    assert [line.split()[0] for line in lines[2 : 2 + len(table)]] == list(table.index)


def test_summary_csv_round_trips(reported: Path) -> None:
    table = summary_table(ResultStore(reported).load())
    stored = pd.read_csv(reported / "summary.csv", index_col="level", dtype={"level": str})
    pd.testing.assert_frame_equal(stored, table, check_exact=False, rtol=1e-12)


def test_empty_store_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no stored runs") as info:
        write_report(tmp_path / "nothing-here", print_summary=False)
    assert "\n" not in str(info.value)
    opened = tmp_path / "opened"
    ResultStore(opened).open(CONFIG)  # config.json and an empty parts/
    with pytest.raises(StoreError, match="no stored runs"):
        write_report(opened, print_summary=False)
    assert not (opened / "report.html").exists()


def test_without_showcase(study: Path, tmp_path: Path) -> None:
    directory = copy_study(study, tmp_path)
    write_report(directory, print_summary=False)
    assert (directory / "figures" / "showcase.png").exists()
    (directory / "parts" / "showcase.parquet").unlink()

    page = write_report(directory, print_summary=False).read_text(encoding="utf-8")
    pngs = sorted((directory / "figures").glob("*.png"))
    # The earlier showcase figure is gone, so the directory matches the page.
    assert {p.stem for p in pngs} == set(FIGURE_NAMES) - {"showcase"}
    assert page.count(IMG_TAG) == len(pngs)
    assert "showcase run is not stored" in page


def test_partial_study(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = copy_study(study, tmp_path)
    for part in (directory / "parts").glob("s14-*.parquet"):
        part.unlink()
    html_path = write_report(directory)  # prints the summary by default
    assert html_path == directory / "report.html"
    page = html_path.read_text(encoding="utf-8")
    table = summary_table(ResultStore(directory).load())
    assert list(table.index) == ["dense", "1", "5"]
    assert capsys.readouterr().out.strip() == format_summary(table).strip()
    assert "IHT levels not stored: 14" in page
    assert page.count(IMG_TAG) == len(list((directory / "figures").glob("*.png")))
    frame = ResultStore(directory).load()
    claims = {c.claim.split()[0]: c for c in evaluate_claims(frame, CONFIG)}
    assert claims["Training"].verdict == "n/a"  # no level s >= 11 left


def test_claims_on_the_stored_study(study: Path) -> None:
    claims = evaluate_claims(ResultStore(study).load(), CONFIG)
    assert len(claims) == 5
    for claim in claims:
        assert isinstance(claim, Claim)
        assert claim.verdict in ("agree", "partly", "disagree", "n/a")
        assert claim.evidence and claim.rule


def synthetic(
    *,
    train_loss: dict[int, float],
    test_loss: dict[int, float],
    test_acc: dict[int, list[float]],
    lr: dict[int, float],
    stable: float,
) -> pd.DataFrame:
    """A frame with just the columns the claims read; 4 runs per level, test_acc given per run."""
    rows = []
    for s in sorted(train_loss):
        for i in range(4):
            rows.append(
                {
                    "kind": "iht",
                    "sparsity": s,
                    "lr": lr[s],
                    "train_loss": train_loss[s],
                    "test_loss": test_loss[s],
                    "test_acc": test_acc[s][i],
                    "reached_tol": True,
                    "stable": i < round(4 * stable),
                    "tie": False,
                    "off_support_ratio": 0.1,
                    "max_grad_on_support": 1e-4,
                }
            )
    return pd.DataFrame(rows)


def test_claim_rules_follow_the_numbers() -> None:
    levels = range(1, 15)
    config = StudyConfig()
    agreeing = synthetic(
        train_loss={s: 0.0499 if s >= 11 else 1.0 / s for s in levels},
        test_loss={s: 0.1 if s >= 5 else 1.0 / s for s in levels},
        test_acc={
            s: [0.9, 0.95, 0.97, 1.0] if s < 10 else [0.96, 0.967, 0.967, 0.97] for s in levels
        },
        lr={s: 1.0 + s for s in levels},
        stable=1.0,
    )
    assert [c.verdict for c in evaluate_claims(agreeing, config)] == ["agree"] * 5

    disagreeing = synthetic(
        train_loss={s: 0.5 / (s - 9) if s >= 11 else 1.0 for s in levels},
        test_loss={s: 1.0 / s for s in levels},
        # medians move by 0.025 per level, spread grows with s
        test_acc={s: [0.4 + s / 40 + d * s / 60 for d in (-1, 0, 0, 1)] for s in levels},
        lr={s: 20.0 - s for s in levels},
        stable=0.25,
    )
    assert [c.verdict for c in evaluate_claims(disagreeing, config)] == ["disagree"] * 5


def test_showcase_grid_layout() -> None:
    """Row i of the heatmap is class i: its 4 weights (row-major W) then its bias."""
    grid = _as_grid(list(np.arange(15.0)))
    assert grid.shape == (3, 5)
    np.testing.assert_array_equal(grid[:, :4], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(grid[:, 4], [12.0, 13.0, 14.0])
