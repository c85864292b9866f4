"""The exact optimum over a stored study: ``iht oracle DIR``, stored as ``DIR/oracle.parquet``.

For the first K data splits of a stored IRIS study (split i is shared by the dense run i and
the IHT runs i of every level), :func:`run_oracle` solves the convex training problem on every
support of every level with :mod:`iht.oracle`, compares the optimum with the stored IHT run on
the same split and level, and stores one row per (split, s). :func:`comparison_table`
summarises it per level; :mod:`iht.report.oracle` draws its figure.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..data import load_builtin, random_split, standardise
from ..errors import InvalidValueError, StoreError
from ..oracle import (
    ATTAINED,
    SEPARABLE,
    Array,
    Index,
    SupportProblem,
    SupportSolutions,
    check_levels,
    level_summary,
    solve_levels,
    solve_on,
)
from ..storage.files import atomic_write_bytes, read_bounded
from .config import DENSE, IHT, N_POINTS, OracleConfig, P, StudyConfig
from .seeds import run_seeds
from .store import ResultStore

__all__ = [
    "ORACLE_FILE",
    "VIOLATION_TOL",
    "comparison_table",
    "read_oracle",
    "refresh_iht",
    "run_oracle",
    "split_data",
]


#: The oracle's results in a study directory: one row per (split index, s).
ORACLE_FILE = "oracle.parquet"
_MAX_ORACLE_BYTES = 256 << 20
#: Columns every stored oracle row has (what the report and a rerun select on).
_ORACLE_KEY_COLUMNS = ("index", "s", "data_seed", "gtol", "tie_tol")
#: An IHT run whose training loss is below the optimum by more than this is a bug.
VIOLATION_TOL = 1e-9


def split_data(dataset: str, train_idx: Sequence[int] | Index) -> tuple[Array, Index]:
    """The training features (standardised with the training rows' mean and std, as the
    study's runs see them) and labels of one split of a built-in data set."""
    data = load_builtin(dataset)
    train = np.asarray(train_idx, dtype=np.int64)
    return standardise(data.X, train)[train], data.y[train]


def _study_splits(
    frame: pd.DataFrame, config: StudyConfig, indices: Sequence[int]
) -> dict[int, tuple[int, Index]]:
    """(data seed, training indices) of each split index, checked against the stored runs.

    Every stored run with index i must have the same split, the one its data seed draws.
    """
    out: dict[int, tuple[int, Index]] = {}
    runs = frame[frame["kind"].isin([DENSE, IHT])]
    for i in indices:
        seed = run_seeds(config, DENSE, P, i).data_seed
        train, _ = random_split(N_POINTS, config.n_train, seed=seed)
        for row in runs[runs["index"] == i].to_dict("records"):
            if int(row["data_seed"]) != seed or list(row["train_idx"]) != train.tolist():
                raise StoreError(
                    f"stored run {row['run_id']} does not use split {i} of the config "
                    f"(data seed {seed}); the store is inconsistent"
                )
        out[i] = (seed, train)
    return out


def _iht_columns(
    run: dict[str, Any] | None,
    row: dict[str, Any],
    problem: SupportProblem,
    sol: SupportSolutions,
    gtol: float,
) -> dict[str, Any]:
    """The stored IHT run on the same split and level, compared with the optimum."""
    if run is None:
        return {
            "iht_run_id": None,
            "iht_train_loss": math.nan,
            "iht_loss_float64": math.nan,
            "iht_gap": math.nan,
            "iht_support": None,
            "iht_found": None,
            "iht_support_value": math.nan,
            "iht_support_status": None,
            "iht_violation": None,
        }
    theta = np.asarray(run["theta_final"], dtype=np.float64)[None, :]
    every = np.arange(problem.size)[None, :]
    loss64 = float(problem.loss(theta, every, None)[0])
    support = sorted(int(k) for k in run["support"])
    optimal = {tuple(o) for o in row["optimal_supports"]}
    found = any(set(support) <= set(o) for o in optimal)
    # The infimum over the run's own support: the lookup of the level's solutions, or a
    # solve of its own when the run ended with fewer than s nonzeros.
    if len(support) == sol.supports.shape[1]:
        pos = sol.position(support)
        own_value, own_status = float(sol.value[pos]), str(sol.status[pos])
    elif support:
        own = solve_on(problem, [support], gtol=gtol, max_iter=100, chunk=1)
        own_value, own_status = float(own.value[0]), str(own.status[0])
    else:
        own_value, own_status = float(problem.loss(theta * 0, every, None)[0]), ATTAINED
    return {
        "iht_run_id": str(run["run_id"]),
        "iht_train_loss": float(run["train_loss"]),
        "iht_loss_float64": loss64,
        "iht_gap": float(run["train_loss"]) - row["value"],
        "iht_support": support,
        "iht_found": bool(found),
        "iht_support_value": own_value,
        "iht_support_status": own_status,
        "iht_violation": bool(loss64 < row["value"] - VIOLATION_TOL),
    }


def run_oracle(
    directory: str | Path,
    config: OracleConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> pd.DataFrame:
    """The exact optimum on the first ``splits`` data splits of a stored study, stored.

    Split index i (0 <= i < splits) is the split of the dense run i and of the IHT runs i
    at every level; for each such split and each level s this computes :func:`oracle`,
    compares it with the stored IHT run (i, s), and stores one row per (i, s) in
    ``DIR/oracle.parquet`` (the columns of :func:`oracle` plus ``index``, ``data_seed``,
    ``train_idx``, ``gtol``, ``tie_tol`` and the ``iht_*`` comparison: the run's stored
    ``iht_train_loss``, its loss recomputed in float64 at its stored parameters
    ``iht_loss_float64``, ``iht_gap`` = iht_train_loss - value, ``iht_support``,
    ``iht_found`` (its support is inside an optimal support), ``iht_support_value`` and
    ``iht_support_status`` (the infimum over its own support) and ``iht_violation`` (its
    float64 loss is below the optimum by more than 1e-9: a bug, never expected)).

    Rows already stored are kept and not recomputed; only missing (i, s) rows are added.
    A file made with other settings (gtol, tie_tol) or for another study is refused unless
    ``overwrite``, which moves it aside (``oracle-replaced-TIMESTAMP.parquet``).

    Returns:
        Every row stored for the splits and levels asked, by index and s.

    Raises:
        StoreError: no study in ``directory``, or an oracle file that does not fit.
        ValueError: bad splits, levels or settings.
    """
    settings = config or OracleConfig()
    splits, gtol, tie_tol, max_iter = (
        settings.splits,
        settings.gtol,
        settings.tie_tol,
        settings.max_iter,
    )
    store = ResultStore(directory)
    study = store.read_config()
    frame = store.load()
    if splits > study.runs:
        raise InvalidValueError(
            f"splits must be in 1..{study.runs} (the study's runs), got {splits}"
        )
    asked = check_levels(study.levels if settings.levels is None else settings.levels, P - 1)
    indices = list(range(splits))
    split_of = _study_splits(frame, study, indices)

    path = store.directory / ORACLE_FILE
    stored = read_oracle(path) if path.exists() else None
    if stored is not None:
        problem_msg = _mismatch(stored, split_of, gtol, tie_tol)
        if problem_msg:
            if not overwrite:
                raise StoreError(
                    f"{path} was made {problem_msg}; use --overwrite to move it aside "
                    "and compute it again"
                )
            aside = path.with_name(f"oracle-replaced-{time.strftime('%Y%m%d-%H%M%S')}.parquet")
            path.rename(aside)
            log(f"moved the earlier oracle results to {aside}")
            stored = None
    have = set() if stored is None else set(zip(stored["index"], stored["s"], strict=True))
    todo = [i for i in indices if any((i, s) not in have for s in asked)]
    if len(todo) < len(indices):
        log(f"{len(indices) - len(todo)} of {len(indices)} splits already stored in {path}")

    iht = frame[frame["kind"] == IHT]
    runs: dict[tuple[int, int], dict[str, Any]] = {
        (int(r["index"]), int(r["sparsity"])): {str(k): v for k, v in r.items()}
        for r in iht.to_dict("records")
    }
    per_split = sum(math.comb(P, s) for s in range(1, max(asked) + 1))
    bar = tqdm(
        total=per_split * len(todo),
        unit="support",
        disable=not progress or not todo,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total} supports [{elapsed}<{remaining}, {rate_fmt}]",
    )
    new_rows: list[dict[str, Any]] = []
    try:
        for i in todo:
            seed, train = split_of[i]
            bar.set_description(f"oracle split {i}")
            X, y = split_data(study.dataset, train)
            problem = SupportProblem.build(X, y, None)
            t0 = time.perf_counter()
            solved = solve_levels(
                problem,
                asked,
                gtol=gtol,
                max_iter=max_iter,
                chunk=2048,
                on_level=lambda _s, n: bar.update(n),
            )
            for s, (sol, seconds) in sorted(solved.items()):
                if (i, s) in have:
                    continue
                row = level_summary(sol, s, seconds, tie_tol)
                row.update(
                    {
                        "index": i,
                        "data_seed": seed,
                        "train_idx": train.tolist(),
                        "gtol": gtol,
                        "tie_tol": tie_tol,
                    }
                )
                row.update(_iht_columns(runs.get((i, s)), row, problem, sol, gtol))
                new_rows.append(row)
            log(f"split {i}: {time.perf_counter() - t0:.1f} s for levels 1..{max(asked)}")
    finally:
        bar.close()
        if new_rows:
            parts = [pd.DataFrame(new_rows)]
            if stored is not None:
                parts.insert(0, stored)
            table = pd.concat(parts, ignore_index=True).sort_values(["index", "s"])
            _atomic_write_parquet(path, table.reset_index(drop=True))
    result = read_oracle(path) if path.exists() else pd.DataFrame()
    return result[result["index"].isin(indices) & result["s"].isin(asked)].reset_index(drop=True)


def read_oracle(path: Path) -> pd.DataFrame:
    """The stored oracle rows.

    Raises:
        StoreError: the file cannot be read.
    """
    try:
        # Bounded: a regular file of this store (no link, FIFO or device), of an oracle's size.
        frame = pq.read_table(pa.BufferReader(read_bounded(path, _MAX_ORACLE_BYTES))).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(
            f"{path} cannot be read ({exc}); move it aside or use --overwrite"
        ) from None
    missing = [c for c in _ORACLE_KEY_COLUMNS if c not in frame.columns]
    if missing:
        raise StoreError(
            f"{path} is not an oracle file (no column {', '.join(missing)}); move it aside or "
            "use --overwrite"
        )
    return frame


def _mismatch(
    stored: pd.DataFrame, split_of: dict[int, tuple[int, Index]], gtol: float, tie_tol: float
) -> str:
    """Why a stored oracle file does not fit this request ('' when it does)."""
    settings = stored[["gtol", "tie_tol"]].drop_duplicates()
    if len(settings) != 1 or (
        float(settings["gtol"].iloc[0]),
        float(settings["tie_tol"].iloc[0]),
    ) != (gtol, tie_tol):
        shown = ", ".join(
            f"gtol={float(r['gtol']):g}, tie_tol={float(r['tie_tol']):g}"
            for r in settings.to_dict("records")
        )
        return f"with other settings ({shown}; asked gtol={gtol:g}, tie_tol={tie_tol:g})"
    for row in stored[["index", "data_seed"]].drop_duplicates().to_dict("records"):
        i, seed = int(row["index"]), int(row["data_seed"])
        if i in split_of and seed != split_of[i][0]:
            return f"for another study (split {i} has data seed {seed})"
    return ""


def _atomic_write_parquet(path: Path, table: pd.DataFrame) -> None:
    """Write ``table`` as Parquet with the store's atomic writer: whole or absent."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per level: the optimum over the splits and the stored IHT runs on the same splits.

    Columns (one row per s): ``splits``, ``optimum_median``, ``optimum_min``,
    ``optimum_max``, ``attained`` (splits whose optimum is attained), ``separable`` (splits
    whose optimum is 0), ``iht_runs``, ``iht_median``, ``iht_q25``, ``iht_q75`` (stored
    training loss), ``gap_min`` and ``gap_median`` (IHT loss - optimum), ``found_share``
    (IHT runs whose support is inside an optimal support), ``own_gap_median`` (IHT loss -
    the infimum over the run's own support: how far IHT stopped from the best point of the
    support it chose), ``violations`` (IHT runs below the optimum: bugs),
    ``optimal_share`` (mean over splits of the share of all C(P, s) supports that are
    optimal: the chance that a uniformly random support is) and ``seconds`` (median time
    per split, every support of that level).
    """
    rows = []
    for s in sorted(table["s"].unique()):
        g = table[table["s"] == s]
        iht = g[g["iht_run_id"].notna()]
        loss = iht["iht_train_loss"].astype(float)
        rows.append(
            {
                "s": int(s),
                "splits": len(g),
                "optimum_median": float(g["value"].median()),
                "optimum_min": float(g["value"].min()),
                "optimum_max": float(g["value"].max()),
                "attained": int(g["attained"].sum()),
                "separable": int((g["status"] == SEPARABLE).sum()),
                "iht_runs": len(iht),
                "iht_median": float(loss.median()) if len(iht) else math.nan,
                "iht_q25": float(loss.quantile(0.25)) if len(iht) else math.nan,
                "iht_q75": float(loss.quantile(0.75)) if len(iht) else math.nan,
                "gap_min": float(iht["iht_gap"].min()) if len(iht) else math.nan,
                "gap_median": float(iht["iht_gap"].median()) if len(iht) else math.nan,
                "found_share": float(iht["iht_found"].astype(bool).mean())
                if len(iht)
                else math.nan,
                "own_gap_median": float((loss - iht["iht_support_value"]).median())
                if len(iht)
                else math.nan,
                "violations": int(iht["iht_violation"].astype(bool).sum()),
                "optimal_share": float((g["n_optimal"] / g["n_supports"]).mean()),
                "seconds": float(g["seconds"].median()),
            }
        )
    return pd.DataFrame(rows)


def refresh_iht(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The ``iht_*`` columns taken again from the runs stored now.

    The optimum depends only on the split, but the IHT runs of a study made again in the
    same directory (``--overwrite``, same seed) may differ from those the oracle saw: the
    figure always compares with the stored runs. The infimum over a run's own support is
    kept only where the run is unchanged.
    """
    iht = frame[frame["kind"] == IHT]
    now = {(int(r["index"]), int(r["sparsity"])): r for r in iht.to_dict("records")}
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "iht_run_id",
            "iht_train_loss",
            "iht_gap",
            "iht_support",
            "iht_found",
            "iht_violation",
            "iht_support_value",
        )
    }
    for row in table.to_dict("records"):
        run = now.get((int(row["index"]), int(row["s"])))
        if run is None:
            missing = (None, math.nan, math.nan, None, None, None, math.nan)
            for k, v in zip(cols, missing, strict=True):
                cols[k].append(v)
            continue
        loss, value = float(run["train_loss"]), float(row["value"])
        support = sorted(int(k) for k in run["support"])
        old = row["iht_support"]
        same = old is not None and loss == row["iht_train_loss"] and support == list(old)
        cols["iht_run_id"].append(str(run["run_id"]))
        cols["iht_train_loss"].append(loss)
        cols["iht_gap"].append(loss - value)
        cols["iht_support"].append(support)
        cols["iht_found"].append(
            any(set(support) <= {int(k) for k in o} for o in row["optimal_supports"])
        )
        cols["iht_violation"].append(loss < value - VIOLATION_TOL)
        cols["iht_support_value"].append(row["iht_support_value"] if same else math.nan)
    out = table.copy()
    for name, values in cols.items():
        out[name] = pd.Series(values, index=table.index, dtype=object)
    return out
