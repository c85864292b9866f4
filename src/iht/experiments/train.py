"""``iht train`` as a library function: one model under a budget of s nonzeros, certified, saved.

:func:`run_train` takes a :class:`TrainConfig` (what the user asks), resolves it on the data
(:class:`TrainRecord`: the split, the model's layers, the budget, the step size, the seeds),
trains with :func:`iht.training.fit`, certifies with :func:`iht.certify.certify_budget` and
writes the output directory::

    config.json        the TrainRecord (written before training starts)
    history.parquet    one row per step (also written when training stops on an error)
    model.pt, mask.pt  the state_dict and a bool mask (param != 0) per parameter
    model_sparse.pt    the parameters as torch sparse CSR/COO tensors (iht.export.load_sparse)
    model_shrunk.pt    a neuron/channel run only: the state_dict of the smaller dense model
                       (iht.shrink.shrink; its widths are the tensors' shapes), which
                       computes what the sparse model does
    certificate.json   HT-stability under the budget (and epsilon with dense_reference)
    metrics.json       the TrainMetrics: final losses and accuracies, nonzeros, wall times
                       (written last: a run is finished when its metrics.json exists)
    checkpoint.pt      while the run is unfinished: its state every 30 s and when it is
                       stopped (Ctrl-C, SIGTERM, SIGHUP); the same command resumes from it

It draws nothing: the report (``report.html``, ``figures/``) is :mod:`iht.report.train`, from
these files only.
"""

from __future__ import annotations

import copy
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from .. import __version__
from ..budget import (
    Budget,
    budgeted_size,
    layers_of,
    parse_sparsity,
    plan_budget,
    plan_structured_budget,
)
from ..certify import certify_budget
from ..data import Dataset, load_dataset, n_test_rows, random_split, standardise
from ..errors import DataError, NonFiniteError, StoreError
from ..export import sparse_payload
from ..init import reset_parameters_
from ..lipschitz import estimate_l2s
from ..models import build_model
from ..optim import IHT
from ..schedules import schedule_named
from ..shrink import shrink
from ..storage.files import (
    atomic_write_bytes,
    check_output_dir,
    json_text,
    lock_directory,
    make_dir,
    move_aside,
    parquet_bytes,
    read_bounded,
    read_json,
    read_parquet,
    torch_bytes,
    write_json,
)
from ..storage.records import from_dict, reading_stored, to_dict
from ..tasks import Task
from ..training import History, evaluate, fit
from .checkpoint import CHECKPOINT_FILE, Checkpoint, read_checkpoint, restore, write_checkpoint
from .config import Recipe, TrainConfig, recipe
from .progress import StepProgress
from .stopping import StopAtStep
from .threads import torch_threads

__all__ = [
    "OUTPUT_FILES",
    "DataInfo",
    "DenseReference",
    "LayerInfo",
    "LayerMetrics",
    "LrInfo",
    "ModelInfo",
    "Timings",
    "TrainMetrics",
    "TrainRecord",
    "TrainResult",
    "TrainSeeds",
    "TrainingInfo",
    "default_out",
    "read_train_run",
    "run_train",
]

#: The files a finished run writes (the report adds report.html and figures/).
OUTPUT_FILES = (
    "config.json",
    "history.parquet",
    "model.pt",
    "mask.pt",
    "model_sparse.pt",
    "certificate.json",
    "metrics.json",
)
_SEED_NAMES = ("data", "init", "support", "monte_carlo", "shuffle")


@dataclass(frozen=True)
class DataInfo:
    """The data as the run used it."""

    source: str
    name: str
    target: str | None
    n_rows: int
    n_features: int
    n_classes: int
    class_names: tuple[str, ...]
    test_fraction: float
    n_train: int
    n_test: int
    standardise: str = "z-score with the training rows' mean and population std"
    task: str = "classification"
    target_mean: float | None = None
    target_std: float | None = None


@dataclass(frozen=True)
class LayerInfo:
    """A layer (a module holding parameters directly) and its parameters' names."""

    name: str
    params: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class ModelInfo:
    """The model: an MLP of ``hidden`` widths (a linear model when empty)."""

    hidden: tuple[int, ...]
    activation: str
    dtype: str
    n_params: int
    layers: tuple[LayerInfo, ...]


@dataclass(frozen=True)
class LrInfo:
    """The step size and, when automatic, the estimate it came from.

    ``source``: ``auto`` (1 / L_hat_2s), ``given`` (--lr) or ``recipe`` (the optimizer's
    default step, :data:`iht.experiments.config.DEFAULT_LR`).
    """

    value: float
    l2s_estimate: float | None
    n_monte: int | None
    estimated_with_sparsity: int | None
    source: str = "auto"


@dataclass(frozen=True)
class TrainingInfo:
    """What the loop did: the algorithm, its length, and the recipe it followed."""

    algorithm: str
    steps: int
    steps_per_epoch: int
    optimizer: str = "iht"
    schedule: str = "constant"
    batch_size: int | None = None
    selection: str = "magnitude"


@dataclass(frozen=True)
class TrainSeeds:
    """Independent seeds of every source of randomness, derived from the master seed."""

    seed: int
    data: int
    init: int
    support: int
    monte_carlo: int
    shuffle: int


@dataclass(frozen=True)
class TrainRecord:
    """A run's ``config.json``: the config as given and what it resolved to on the data."""

    config: TrainConfig
    data: DataInfo
    model: ModelInfo
    budget: Budget
    lr: LrInfo
    training: TrainingInfo
    seeds: TrainSeeds
    versions: dict[str, str]
    command: str = "iht train"


@dataclass(frozen=True)
class LayerMetrics:
    """Nonzeros of one layer at the end (``budget`` is its own budget, per-layer runs only;
    with a neuron/channel budget it counts rows, and ``rows`` / ``kept_rows`` say how many
    the layer has and keeps)."""

    name: str
    kind: str
    size: int
    nonzeros: int
    budgeted_size: int
    budgeted_nonzeros: int
    budget: int | None
    rows: int | None = None
    kept_rows: int | None = None


@dataclass(frozen=True)
class DenseReference:
    """The same model from the same initialisation trained densely (GD, the same steps).
    The score is the task's: accuracy, or R^2 for a regression (the accuracies are then None)."""

    lr: float
    l2s_estimate: float | None
    train_loss: float
    train_accuracy: float | None
    test_loss: float
    test_accuracy: float | None
    train_r2: float | None = None
    test_r2: float | None = None


@dataclass(frozen=True)
class Timings:
    """Wall times in seconds."""

    lr_estimate: float
    training: float
    dense_reference: float | None
    total: float


@dataclass(frozen=True)
class ExportCost:
    """What the trained model costs on disk: the dense ``model.pt`` against its export
    (``model_shrunk.pt``, the smaller dense model of a neuron/channel run, else the sparse
    tensors of ``model_sparse.pt``), in bytes and in stored parameters."""

    file: str
    bytes: int
    dense_bytes: int
    params: int
    dense_params: int


@dataclass(frozen=True)
class TrainMetrics:
    """A run's ``metrics.json``: where training ended.

    A classification run reports accuracies; a regression run R^2 and the RMSE in the
    target's own units (its loss is the MSE of the standardised target), accuracies None.
    """

    status: str
    steps: int
    train_loss: float
    train_accuracy: float | None
    test_loss: float
    test_accuracy: float | None
    nonzeros: int
    budgeted_nonzeros: int
    n_params: int
    sparsity: int
    density: float
    layers: tuple[LayerMetrics, ...]
    lr: float
    dense: DenseReference | None
    time_s: Timings
    task: str = "classification"
    train_r2: float | None = None
    test_r2: float | None = None
    train_rmse: float | None = None
    test_rmse: float | None = None
    export: ExportCost | None = None

    @property
    def test_score(self) -> float:
        """The task's test score: accuracy, or R^2."""
        return cast(float, self.test_r2 if self.task == "regression" else self.test_accuracy)

    @property
    def train_score(self) -> float:
        """The task's training score: accuracy, or R^2."""
        return cast(float, self.train_r2 if self.task == "regression" else self.train_accuracy)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_train` did and wrote (the same as :func:`read_train_run` reads back)."""

    directory: Path
    record: TrainRecord
    metrics: TrainMetrics
    certificate: dict[str, Any]
    history: pd.DataFrame


def _seeds(seed: int) -> TrainSeeds:
    states = np.random.SeedSequence(seed).generate_state(len(_SEED_NAMES))
    return TrainSeeds(seed, *(int(v) for v in states))


def default_out(config: TrainConfig) -> Path:
    """``results/train-DATA-MODEL-sSPARSITY-seedSEED`` for a run of ``config``."""
    if config.model == "cnn":  # a CNN's --hidden is its channels (default 25)
        model = "cnn" + "-".join(str(w) for w in config.hidden)
    else:
        model = "h" + "-".join(str(w) for w in config.hidden) if config.hidden else "linear"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(config.data).stem) or "data"
    sparsity = re.sub(r"[^A-Za-z0-9.]+", "_", str(config.sparsity).strip())
    return Path("results") / f"train-{name}-{model}-s{sparsity}-seed{config.seed}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_train(
    config: TrainConfig,
    *,
    out: Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = _stderr,
) -> TrainResult:
    """Train, certify and save one run of ``config`` (see the module docstring for the files).

    Args:
        config: the run.
        out: the output directory (default :func:`default_out`); refused when not empty
            unless ``overwrite``, which moves its contents to ``out/replaced-TIMESTAMP/``.
        overwrite: see ``out``.
        progress: show a progress bar over the steps.
        log: where warnings go (a layer with a budget of 0, moved contents).

    Returns:
        The :class:`TrainResult`.

    Raises:
        DataError, InvalidValueError, StoreError: bad settings, data or output directory
            (one line each), raised before anything is written.
        EstimateError: no learning rate follows from the L_2s estimate.
        NonFiniteError: training met a NaN/inf; ``config.json`` and the history of the
            finished steps are kept in the output directory.
    """
    started = time.perf_counter()
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    seeds = _seeds(config.seed)
    data = load_dataset(config.data, target=config.target, task=config.task)
    task = Task(data.task)
    plan = recipe(config)
    n = len(data.y)
    if data.split is not None:  # the data set's own split (MNIST-1D's 4,000 / 1,000)
        train_idx, test_idx = data.split
    else:
        n_test = n_test_rows(n, config.test_fraction)
        train_idx, test_idx = random_split(n, n - n_test, seed=seeds.data)
    features = torch.tensor(standardise(data.X, train_idx), dtype=dtype)
    scale = _target_scale(data, train_idx)
    if scale is not None:  # a regression target, standardised like the features
        labels = task.targets((data.y - scale[0]) / scale[1], dtype)
    else:
        labels = task.targets(data.y, dtype)
    train = features[train_idx], labels[train_idx]
    test = features[test_idx], labels[test_idx]

    # Parameters are drawn later from the init seed; fork_rng leaves the global RNG untouched
    # by the construction's own (discarded) draws.
    with torch.random.fork_rng(devices=[]):
        model = build_model(
            data.n_features,
            data.n_outputs,
            config.hidden,
            activation=config.activation,
            kind=config.model,
            input_shape=data.input_shape,
        )
    model = model.to(dtype)
    if config.structure != "entry":
        budget = plan_structured_budget(model, config.structure, config.sparsity)
    else:
        assert config.sparsity is not None  # TrainConfig requires it for entry budgets
        total = budgeted_size(model, exclude_biases=config.exclude_biases)
        budget = plan_budget(
            model,
            parse_sparsity(config.sparsity, total),
            per_layer=config.per_layer,
            exclude_biases=config.exclude_biases,
        )
    starved = [pool.name for pool in budget.pools if not pool.dense and pool.sparsity == 0]
    if starved:
        log(
            f"warning: layer(s) {', '.join(starved)} get a budget of 0 (s = {budget.sparsity} "
            "is too small to share per layer): they will stay zero"
        )
    n_train = len(train_idx)
    batch = plan.batch_size if plan.batch_size is not None else n_train
    steps_per_epoch = math.ceil(n_train / batch)
    steps = config.epochs * steps_per_epoch if config.epochs is not None else plan.steps
    directory = out or default_out(config)
    if overwrite or not _unfinished(directory):  # an unfinished run of this config resumes
        check_output_dir(directory, overwrite=overwrite)

    make_dir(directory)
    lock = lock_directory(directory)  # one writer at a time, until the run is stored
    try:
        with torch_threads(config.threads):
            return _train(
                config,
                plan,
                data,
                budget,
                model,
                seeds=seeds,
                train=train,
                test=test,
                steps=steps,
                steps_per_epoch=steps_per_epoch,
                directory=directory,
                overwrite=overwrite,
                progress=progress,
                started=started,
                log=log,
                scale=scale,
            )
    finally:
        if lock is not None:
            lock.close()


def _train(
    config: TrainConfig,
    plan: Recipe,
    data: Dataset,
    budget: Budget,
    model: nn.Sequential,
    *,
    seeds: TrainSeeds,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    steps: int,
    steps_per_epoch: int,
    directory: Path,
    overwrite: bool,
    progress: bool,
    started: float,
    log: Callable[[str], None],
    scale: tuple[float, float] | None = None,
) -> TrainResult:
    X, y = train
    task = Task(data.task)

    def loss_fn(m: nn.Module) -> Tensor:
        return task.loss(m(X), y)

    reset_parameters_(model, generator=torch.Generator().manual_seed(seeds.init))
    dense_init = {k: v.clone() for k, v in model.state_dict().items()}

    lr_start = time.perf_counter()
    if plan.lr is None:
        # The iterates have at most s + (dense parameters) nonzeros, so that is the sparsity
        # the estimate draws its supports with (= s under the paper's global budget).
        # A structured budget's supports are drawn in its own shape (rows, N:M patterns).
        structured = budget.structure != "entry"
        estimate = estimate_l2s(
            model,
            loss_fn,
            sparsity=None if structured else budget.max_nonzeros,
            budget=budget if structured else None,
            n_samples=config.n_monte,
            generator=torch.Generator().manual_seed(seeds.monte_carlo),
        )
        lr = estimate.lr
    else:
        estimate, lr = None, plan.lr
    lr_time = time.perf_counter() - lr_start

    mini_batch = plan.batch_size is not None and plan.batch_size < len(y)
    record = TrainRecord(
        config=config,
        data=DataInfo(
            source=config.data,
            name=data.name,
            target=config.target,
            n_rows=len(data.y),
            n_features=data.n_features,
            n_classes=data.n_classes,
            class_names=tuple(data.class_names),
            test_fraction=config.test_fraction,
            n_train=len(y),
            n_test=len(test[1]),
            task=task.name,
            target_mean=None if scale is None else scale[0],
            target_std=None if scale is None else scale[1],
        ),
        model=ModelInfo(
            hidden=config.hidden,
            activation=config.activation,
            dtype=config.dtype,
            n_params=sum(p.numel() for p in model.parameters()),
            layers=tuple(
                LayerInfo(name, tuple(n for n, _ in own), sum(p.numel() for _, p in own))
                for name, own in layers_of(model)
            ),
        ),
        budget=budget,
        lr=LrInfo(
            value=lr,
            l2s_estimate=None if estimate is None else estimate.estimate,
            n_monte=config.n_monte if estimate is not None else None,
            estimated_with_sparsity=budget.max_nonzeros if estimate is not None else None,
            source="auto"
            if estimate is not None
            else "given"
            if config.lr is not None
            else "recipe",
        ),
        training=TrainingInfo(
            algorithm=_algorithm(plan, mini_batch),
            steps=steps,
            steps_per_epoch=steps_per_epoch,
            optimizer=plan.optimizer,
            schedule=plan.schedule,
            batch_size=plan.batch_size,
            selection=plan.selection,
        ),
        seeds=seeds,
        versions={"iht": __version__, "torch": torch.__version__},
    )

    resume = not overwrite and _unfinished(directory)
    if resume:
        stored = read_bounded(directory / "config.json", 1 << 20)
        if stored != json_text(to_dict(record)).encode():
            raise StoreError(
                f"{directory} holds an unfinished run of another config; use --overwrite to "
                "move it aside, or another --out"
            )
    else:
        moved = move_aside(directory) if overwrite else None
        if moved is not None:
            log(f"moved the earlier contents of {directory} to {moved}")
        write_json(directory / "config.json", to_dict(record))

    # The paper's start: a random support of the budget. A structured budget starts dense:
    # its first projection keeps the rows of largest norm (a ReLU neuron dropped with its
    # bias has a zero gradient, so a random pick of neurons would never be revised).
    if plan.schedule == "constant" and budget.structure == "entry":
        budget.sparse_init_(model, generator=torch.Generator().manual_seed(seeds.support))
    # (a schedule that starts dense starts from the dense initialisation)
    history = History(score=task.score_name)
    # Built before the clock starts: torch's first optimizer imports torch._dynamo (~1 s).
    optimizer = _make_optimizer(plan, budget, model, lr, steps)
    shuffle = torch.Generator().manual_seed(seeds.shuffle)
    checkpoint = read_checkpoint(directory, model, steps=steps) if resume else None
    if checkpoint is not None:
        restore(checkpoint, directory / CHECKPOINT_FILE, model, optimizer, shuffle, steps_per_epoch)
        history = checkpoint.history
        log(f"resuming: {checkpoint.steps_done} of {steps} steps done in {directory}")
    saver = _Checkpointer(
        directory, model, optimizer, shuffle, history, steps_per_epoch, plan.batch_size is not None
    )
    if checkpoint is not None:
        saver.epoch_start = checkpoint.steps_done - checkpoint.epoch_position
    bar = StepProgress(steps, record.training.algorithm.split(" ")[0], enabled=progress)
    bar.bar.update(len(history))
    train_start = time.perf_counter()
    stop = StopAtStep()

    def on_step(k: int, hist: History) -> None:
        saver.after_step()  # first: the state it tracks must follow every recorded step
        bar(k, hist)
        stop.check()  # a stop request is taken here, between two steps

    try:
        with stop:
            fit(
                model,
                X,
                y,
                optimizer=optimizer,
                steps=steps - len(history),
                batch_size=plan.batch_size,
                generator=shuffle,
                on_step=on_step,
                test=test,
                eval_every=plan.eval_every,
                task=task,
                history=history,
                skip_batches=saver.position(),
            )
    except (NonFiniteError, KeyboardInterrupt) as exc:
        bar.close()
        _write_history(directory, history)
        if isinstance(exc, NonFiniteError):
            raise NonFiniteError(
                f"{exc}; the {len(history)} finished steps are in {directory / 'history.parquet'}"
            ) from exc
        saver.save()
        log(
            f"stopped after {len(history)} of {steps} steps; the run's state is in "
            f"{directory / CHECKPOINT_FILE}"
        )
        raise
    bar.close()
    train_time = time.perf_counter() - train_start

    dense: DenseReference | None = None
    dense_time: float | None = None
    if config.dense_reference:
        dense_start = time.perf_counter()
        dense = _dense_reference(
            model, dense_init, config, plan, loss_fn, train, test, steps, seeds, progress, task
        )
        dense_time = time.perf_counter() - dense_start

    certificate = certify_budget(
        model,
        loss_fn,
        lr=lr,
        budget=budget,
        grad_tol=config.grad_tol,
        dense_loss=None if dense is None else dense.train_loss,
        inputs=X,
        constant_loss=task.constant_loss(y),
    )
    timings = Timings(lr_time, train_time, dense_time, math.nan)
    metrics = _metrics(model, budget, history, train, test, lr, dense, timings, task, scale)
    frame = _write_history(directory, history)
    atomic_write_bytes(directory / "model.pt", torch_bytes(model.state_dict()))
    masks = {name: (p.detach() != 0) for name, p in model.named_parameters()}
    atomic_write_bytes(directory / "mask.pt", torch_bytes(masks))
    sparse_bytes = torch_bytes(sparse_payload(model))
    atomic_write_bytes(directory / "model_sparse.pt", sparse_bytes)
    metrics = replace(metrics, export=_export(directory, model, budget, sparse_bytes))
    write_json(directory / "certificate.json", certificate)
    metrics = replace(metrics, time_s=replace(metrics.time_s, total=time.perf_counter() - started))
    write_json(directory / "metrics.json", to_dict(metrics))  # last: the run is finished
    (directory / CHECKPOINT_FILE).unlink(missing_ok=True)
    return TrainResult(directory, record, metrics, certificate, frame)


def _unfinished(directory: Path) -> bool:
    """Whether ``directory`` holds a train run that has not finished (no metrics.json)."""
    return (
        directory.is_dir()
        and (directory / "config.json").is_file()
        and not (directory / "metrics.json").exists()
    )


class _Checkpointer:
    """Saves the run's state every ``CHECKPOINT_SECONDS`` and on demand (see checkpoint.py).

    Tracks the shuffling generator's state at the start of each epoch and the batches taken
    since, which with the model and optimizer state is all the next step depends on.
    """

    def __init__(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        shuffle: torch.Generator,
        history: History,
        steps_per_epoch: int,
        mini_batch: bool,
    ) -> None:
        self.directory, self.model, self.optimizer = directory, model, optimizer
        self.shuffle, self.history = shuffle, history
        self.steps_per_epoch, self.mini_batch = steps_per_epoch, mini_batch
        self.epoch_state = shuffle.get_state()
        #: The step at which the current epoch started.
        self.epoch_start = len(history)
        self.last = time.perf_counter()

    def position(self) -> int:
        """Batches of the current epoch already taken."""
        return len(self.history) - self.epoch_start

    def after_step(self) -> None:
        if self.position() == self.steps_per_epoch:  # the next step draws a new epoch
            self.epoch_state, self.epoch_start = self.shuffle.get_state(), len(self.history)
        if time.perf_counter() - self.last >= CHECKPOINT_SECONDS:
            self.save()

    def save(self) -> None:
        write_checkpoint(
            self.directory,
            Checkpoint(
                steps_done=len(self.history),
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                epoch_generator=self.epoch_state if self.mini_batch else None,
                epoch_position=self.position() if self.mini_batch else 0,
                history=self.history,
            ),
        )
        _write_history(self.directory, self.history)
        self.last = time.perf_counter()


#: Seconds between two checkpoints of a running ``iht train``.
CHECKPOINT_SECONDS = 30.0


def _write_history(directory: Path, history: History) -> pd.DataFrame:
    frame = pd.DataFrame(history.columns())
    atomic_write_bytes(directory / "history.parquet", parquet_bytes(frame))
    return frame


def _metrics(
    model: nn.Module,
    budget: Budget,
    history: History,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    lr: float,
    dense: DenseReference | None,
    timings: Timings,
    task: Task,
    scale: tuple[float, float] | None,
) -> TrainMetrics:
    """Where training ended. Classification: losses and accuracies. Regression: the losses
    (MSE of the standardised target), R^2, and the RMSE in the target's own units."""
    train_loss, train_score = evaluate(model, *train, task=task)
    test_loss, test_score = evaluate(model, *test, task=task)
    pool_budget = {p.name: p.sparsity for p in budget.pools if budget.mode == "per_layer"}
    grouped = {p.name: p for p in budget.pools if p.structure in ("group", "group+bias")}
    dense_params = {n for pool in budget.pools if pool.dense for n in pool.params}
    layers = tuple(
        LayerMetrics(
            name=name,
            kind=_describe_layer(model, name),
            size=sum(p.numel() for _, p in own),
            nonzeros=sum(int((p != 0).sum()) for _, p in own),
            budgeted_size=sum(p.numel() for n, p in own if n not in dense_params),
            budgeted_nonzeros=sum(int((p != 0).sum()) for n, p in own if n not in dense_params),
            budget=pool_budget.get(name),
            rows=grouped[name].units if name in grouped else None,
            kept_rows=_kept_rows(own) if name in grouped else None,
        )
        for name, own in layers_of(model)
    )
    nonzeros = sum(layer.nonzeros for layer in layers)
    n_params = sum(p.numel() for p in model.parameters())
    pool_nonzeros = budget.nonzeros(model)
    regression = task.regression
    std = 1.0 if scale is None else scale[1]
    return TrainMetrics(
        status="finished",
        steps=len(history),
        train_loss=train_loss,
        train_accuracy=None if regression else train_score,
        test_loss=test_loss,
        test_accuracy=None if regression else test_score,
        nonzeros=nonzeros,
        budgeted_nonzeros=sum(pool_nonzeros[p.name] for p in budget.pools if not p.dense),
        n_params=n_params,
        sparsity=budget.sparsity,
        density=nonzeros / n_params,
        layers=layers,
        lr=lr,
        dense=dense,
        time_s=timings,
        task=task.name,
        train_r2=train_score if regression else None,
        test_r2=test_score if regression else None,
        train_rmse=math.sqrt(train_loss) * std if regression else None,
        test_rmse=math.sqrt(test_loss) * std if regression else None,
    )


def _export(directory: Path, model: nn.Module, budget: Budget, sparse_bytes: bytes) -> ExportCost:
    """Write the shrunk model of a neuron/channel run; the cost of the run's export."""
    dense_bytes = (directory / "model.pt").stat().st_size
    dense_params = sum(p.numel() for p in model.parameters())
    if budget.structure in ("group", "group+bias") and isinstance(model, nn.Sequential):
        shrunk = shrink(model)
        raw = torch_bytes(shrunk.state_dict())  # tensors only: loads with weights_only
        atomic_write_bytes(directory / "model_shrunk.pt", raw)
        params = sum(p.numel() for p in shrunk.parameters())
        return ExportCost("model_shrunk.pt", len(raw), dense_bytes, params, dense_params)
    nonzeros = sum(int(p.count_nonzero()) for p in model.parameters())
    return ExportCost("model_sparse.pt", len(sparse_bytes), dense_bytes, nonzeros, dense_params)


def _kept_rows(own: list[tuple[str, nn.Parameter]]) -> int:
    """Rows (neurons, channels) of a layer with a nonzero weight or bias entry."""
    weight = next(p for n, p in own if n.endswith("weight")).detach()
    alive = (weight.reshape(weight.shape[0], -1) != 0).any(dim=1)
    for n, p in own:
        if n.endswith("bias") and p.shape == (weight.shape[0],):
            alive |= p.detach() != 0
    return int(alive.sum())


def _target_scale(data: Dataset, train_idx: NDArray[np.int64]) -> tuple[float, float] | None:
    """(mean, population std) of a regression target on the training rows; None for classes."""
    if data.task != "regression":
        return None
    values = data.y[train_idx].astype(np.float64)
    std = float(values.std())
    if not std > 0:
        raise DataError(
            f"the regression target of {data.name} is constant on the training rows; there is "
            "nothing to regress"
        )
    return float(values.mean()), std


def _describe_layer(model: nn.Module, name: str) -> str:
    """E.g. "Linear 64->10" for an ``nn.Linear``, else the module's class name."""
    module = model if name == "(root)" else model.get_submodule(name)
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    return type(module).__name__


def _algorithm(plan: Recipe, mini_batch: bool) -> str:
    """E.g. "IHT (full batch)", "SIHT (mini-batch IHT)", "Adam + H_s, cubic schedule (mini-batch)"."""
    if plan.optimizer == "iht":
        return "SIHT (mini-batch IHT)" if mini_batch else "IHT (full batch)"
    names = {"sgd": "SGD", "momentum": "SGD momentum 0.9", "adam": "Adam", "adamw": "AdamW"}
    schedule = "" if plan.schedule == "constant" else f", {plan.schedule} schedule"
    projection = "Fisher projection" if plan.selection == "fisher" else "H_s"
    batches = "mini-batch" if mini_batch else "full batch"
    return f"{names[plan.optimizer]} + {projection}{schedule} ({batches})"


def _base_optimizer(name: str, lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    """The torch optimizer a run's ``optimizer`` names, as a function of its param groups."""
    makers: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
        "sgd": lambda groups: torch.optim.SGD(groups, lr=lr),
        "momentum": lambda groups: torch.optim.SGD(groups, lr=lr, momentum=0.9),
        "adam": lambda groups: torch.optim.Adam(groups, lr=lr),
        "adamw": lambda groups: torch.optim.AdamW(groups, lr=lr),
    }
    return makers[name]


def _make_optimizer(
    plan: Recipe, budget: Budget, model: nn.Module, lr: float, steps: int
) -> torch.optim.Optimizer:
    """IHT itself, or the recipe's base optimizer with the budget projected after each step."""
    if plan.optimizer == "iht":
        return budget.optimizer(model, lr=lr)
    return budget.wrap(
        model,
        _base_optimizer(plan.optimizer, lr),
        schedule=schedule_named(plan.schedule, steps),
        selection=plan.selection,
    )


def _dense_reference(
    model: nn.Module,
    dense_init: dict[str, Tensor],
    config: TrainConfig,
    plan: Recipe,
    loss_fn: Callable[[nn.Module], Tensor],
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    steps: int,
    seeds: TrainSeeds,
    progress: bool,
    task: Task,
) -> DenseReference:
    """The same model from the same (dense) initialisation, trained without a budget: GD
    (Alg. 2) for IHT, else the same base optimizer."""
    dense_model = copy.deepcopy(model)
    dense_model.load_state_dict(dense_init)
    if plan.lr is None:
        estimate = estimate_l2s(
            dense_model,
            loss_fn,
            sparsity=None,
            n_samples=config.n_monte,
            generator=torch.Generator().manual_seed(seeds.monte_carlo),
        )
        lr = estimate.lr
    else:
        estimate, lr = None, plan.lr
    bar = StepProgress(steps, "dense", enabled=progress)
    if plan.optimizer == "iht":
        optimizer: torch.optim.Optimizer = IHT(dense_model.parameters(), lr=lr, sparsity=None)
    else:
        optimizer = _base_optimizer(plan.optimizer, lr)(list(dense_model.parameters()))
    try:
        fit(
            dense_model,
            train[0],
            train[1],
            optimizer=optimizer,
            steps=steps,
            batch_size=plan.batch_size,
            generator=torch.Generator().manual_seed(seeds.shuffle),
            on_step=bar,
            task=task,
        )
    except NonFiniteError as exc:
        raise NonFiniteError(f"dense reference: {exc}") from exc
    finally:
        bar.close()
    train_loss, train_score = evaluate(dense_model, *train, task=task)
    test_loss, test_score = evaluate(dense_model, *test, task=task)
    regression = task.regression
    return DenseReference(
        lr=lr,
        l2s_estimate=None if estimate is None else estimate.estimate,
        train_loss=train_loss,
        train_accuracy=None if regression else train_score,
        test_loss=test_loss,
        test_accuracy=None if regression else test_score,
        train_r2=train_score if regression else None,
        test_r2=test_score if regression else None,
    )


def read_train_run(directory: str | Path) -> TrainResult:
    """A finished run's stored files, read back typed (what :func:`run_train` returned).

    Raises:
        StoreError: a file is missing, unreadable or not what ``iht train`` writes.
    """
    directory = Path(directory)
    with reading_stored(directory, "a finished train run"):
        record = from_dict(TrainRecord, read_json(directory / "config.json"), where="config.json")
        metrics = from_dict(
            TrainMetrics, read_json(directory / "metrics.json"), where="metrics.json"
        )
        certificate = read_json(directory / "certificate.json")
        history = read_parquet(directory / "history.parquet", max_rows=record.training.steps)
    why = _history_problem(history, record) or _certificate_problem(certificate)
    if why is not None:
        raise StoreError(f"{directory} is not a finished train run: {why}")
    return TrainResult(directory, record, metrics, certificate, history)


def _history_problem(history: pd.DataFrame, record: TrainRecord) -> str | None:
    """Why a stored history is not one of ``record``'s run (None when it is)."""
    score = Task(record.data.task).score_name
    wanted = [c for c in History(score=score).columns() if c not in history.columns]
    if wanted:
        return f"history.parquet lacks the column(s) {', '.join(wanted)}"
    for name in history.columns:
        if not pd.api.types.is_numeric_dtype(history[name]) or pd.api.types.is_bool_dtype(
            history[name]
        ):
            return f"history.parquet's column {str(name)[:40]!r} is not numeric"
    steps = history["step"].to_numpy()
    if len(steps) != record.training.steps or not np.array_equal(steps, np.arange(len(steps))):
        return f"history.parquet does not hold the steps 0..{record.training.steps - 1}"
    return None


def _certificate_problem(certificate: object) -> str | None:
    if not isinstance(certificate, dict):
        return "certificate.json is not a certificate (not a JSON object)"
    if not isinstance(certificate.get("stable"), bool):
        return "certificate.json has no stable: true/false"
    return None
