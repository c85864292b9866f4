"""Backends: a study on Ray stores exactly the rows of a local study, and resumes across them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from iht.cli import main
from iht.study.chunks import plan_chunks
from iht.study.config import StudyConfig
from iht.study.runner import run_study
from iht.study.store import ResultStore

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason='ray is not installed (pip install -e ".[ray]" to test the Ray backend)'
)

CONFIG = StudyConfig(runs=4, chunk_runs=2, levels=(2, 9), max_steps=300, n_monte=5)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return run_study(CONFIG, tmp_path_factory.mktemp("local"), progress=False).load()


@pytest.fixture(scope="module")
def ray_2cpus() -> Iterator[Any]:
    """A local Ray with 2 CPUs for this module; the backend uses it as it is."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _stamps(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (directory / "parts").glob("*.parquet")}


# Tests without Ray come first: they run before the module's Ray is started.
def test_ray_backend_without_ray_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["reproduce", "iris", "--backend", "ray", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "needs Ray" in err and 'pip install "iht[ray]"' in err
    assert not (tmp_path / "x").exists()


def test_address_without_the_ray_backend_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["reproduce", "iris", "--address", "auto", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "--address auto needs --backend ray" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_local_backend_never_imports_ray(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import iht, iht.study.backends, iht.cli, iht.report.study
        from iht.study.runner import run_study
        from iht.study.config import StudyConfig
        config = StudyConfig(runs=1, levels=(3,), max_steps=5, n_monte=2, engine="torch")
        run_study(config, {str(tmp_path)!r}, progress=False)
        assert "ray" not in sys.modules, "ray was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_ray
def test_ray_backend_stores_exactly_the_rows_of_the_local_backend(
    ray_2cpus: Any, local_reference: pd.DataFrame, tmp_path: Path
) -> None:
    messages: list[str] = []
    store = run_study(CONFIG, tmp_path, progress=False, backend="ray", log=messages.append)
    assert ray_2cpus.is_initialized()  # a Ray it did not start is left running
    pd.testing.assert_frame_equal(store.load(), local_reference)
    assert sorted(_stamps(tmp_path)) == sorted(f"{c.key}.parquet" for c in plan_chunks(CONFIG))
    assert list((tmp_path / "parts").glob(".*")) == []
    # finished: a second run on either backend computes nothing
    before = _stamps(tmp_path)
    run_study(CONFIG, tmp_path, progress=False, backend="ray", log=messages.append)
    assert _stamps(tmp_path) == before and "all 13 runs already stored" in messages[-1]


@needs_ray
def test_a_study_resumes_across_backends(
    ray_2cpus: Any, local_reference: pd.DataFrame, tmp_path: Path
) -> None:
    """Half done locally, the rest on Ray; then parts lost again, finished locally."""
    run_study(CONFIG, tmp_path, progress=False)
    parts = tmp_path / "parts"
    # a dense chunk missing too: the IHT chunks of its runs need its losses, computed first
    for key in ("dense-00002", "s02-00002", "s09-00000", "s09-00002", "showcase"):
        (parts / f"{key}.parquet").unlink()
    kept = _stamps(tmp_path)
    run_study(CONFIG, tmp_path, progress=False, backend="ray")
    pd.testing.assert_frame_equal(ResultStore(tmp_path).load(), local_reference)
    assert {k: v for k, v in _stamps(tmp_path).items() if k in kept} == kept  # not recomputed

    for key in ("dense-00000", "s09-00002"):
        (parts / f"{key}.parquet").unlink()
    run_study(CONFIG, tmp_path, progress=False)
    pd.testing.assert_frame_equal(ResultStore(tmp_path).load(), local_reference)
