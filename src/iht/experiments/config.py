"""What the experiments are asked: the configs of ``iht train`` and ``iht compare``.

Each is a frozen dataclass, validated when made; its defaults are the commands' defaults (the
command line reads them from here), and it is stored, as given, in the run's ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from ..budget import check_sparsity_form, check_sparsity_list_form
from ..certify import DEFAULT_GRAD_TOL
from ..errors import InvalidValueError
from ..lipschitz import DEFAULT_N_SAMPLES
from ..models import ACTIVATIONS, MODELS
from ..schedules import SCHEDULES
from ..sparse_optimizer import SELECTIONS
from ..structured import parse_nm
from ..tasks import TASKS

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "DTYPES",
    "LABELS",
    "METHODS",
    "OPTIMIZERS",
    "SPARSE_METHODS",
    "CompareConfig",
    "Recipe",
    "TrainConfig",
    "default_selection",
    "optimizer_of",
    "parse_methods",
    "recipe",
]

#: The optimizers a run can take (see :attr:`TrainConfig.optimizer`).
OPTIMIZERS = ("iht", "sgd", "momentum", "adam", "adamw")
#: The step sizes used when none is given (absent: 1 / L_hat_2s, the paper's).
DEFAULT_LR = {"momentum": 0.05, "adam": 1e-2, "adamw": 1e-2}

#: Steps when neither ``steps`` nor ``epochs`` is given.
DEFAULT_STEPS = 2000
#: The precisions a model can be trained in.
DTYPES = ("float32", "float64")
#: The methods, in table order; all but ``dense`` end with at most s nonzeros.
METHODS: tuple[str, ...] = ("dense", "oneshot", "gmp", "l1", "rigl", "iht")
SPARSE_METHODS: tuple[str, ...] = METHODS[1:]
LABELS = {
    "dense": "dense (GD)",
    "oneshot": "one-shot prune + fine-tune",
    "gmp": "gradual magnitude pruning",
    "l1": "L1 + prune + fine-tune",
    "rigl": "RigL (drop and grow)",
    "iht": "IHT",
}


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one ``iht train`` run: everything that decides its numbers.

    Attributes:
        data: a built-in data set (:data:`iht.data.BUILTIN_DATASETS`) or a CSV path.
        sparsity: the budget s: a count, a fraction or a percentage of the budgeted
            parameters (:func:`iht.budget.parse_sparsity`).
        target: the class-label column of a CSV file.
        test_fraction: share of the rows held out for testing, in (0, 1).
        seed: the master seed of the split, initialisation, support, L_2s draws and shuffling.
        hidden: hidden layer widths; () is a linear model.
        activation: the hidden layers' activation (:data:`iht.models.ACTIVATIONS`).
        per_layer: every layer gets its own budget, proportional to its size.
        exclude_biases: biases are dense and outside the budget.
        lr: the step size, or None for 1 / L_hat_2s (the Monte Carlo estimate).
        n_monte: Monte Carlo draws of the estimate.
        steps: IHT steps (:data:`DEFAULT_STEPS` when neither steps nor epochs is given).
        epochs: instead of steps: passes over the training rows.
        batch_size: rows per mini-batch (SIHT); None for full-batch IHT.
        eval_every: evaluate the test rows (and with mini-batches the loss over every training
            row) every k steps and at the last; None: the recipe's (every step; 100 for a CNN).
        dtype: ``float32`` or ``float64``.
        grad_tol: |grad| at or below this counts as zero in the certificate.
        dense_reference: also train the same model densely (GD, same steps) for epsilon.
        threads: torch CPU threads while training (None: leave torch's setting alone).
        model: ``mlp`` (a linear model when ``hidden`` is empty) or ``cnn``
            (:func:`iht.models.build_cnn`; ``hidden[0]`` channels).
        optimizer: ``iht`` (the paper's step), ``sgd`` (the same, through
            :class:`iht.SparseOptimizer`), ``momentum``, ``adam`` or ``adamw`` (their step,
            then the projection), or None for the model's recipe (:func:`recipe`).
        schedule: the budget's schedule (:data:`iht.schedules.SCHEDULES`), or None for the
            recipe's.
        task: ``classification`` or ``regression`` (:mod:`iht.tasks`); None: the data set's
            own (a CSV target of many distinct numbers is then an error that asks for it).
        structure: the budget's shape: ``entry`` (H_s over entries), ``neuron`` / ``channel``
            (whole rows of the hidden layers; ``sparsity`` counts rows) or an N:M pattern
            such as ``2:4`` (no ``sparsity``: the pattern is the budget); see
            :func:`iht.budget.plan_structured_budget`.
        selection: how the projection after a base optimizer's step picks the support:
            ``magnitude`` (H_s) or ``fisher`` (the s largest F_i theta_i^2, the projection in
            the diagonal Fisher norm; :class:`iht.SparseOptimizer`); None: the recipe's
            (:func:`default_selection`).
    """

    data: str
    sparsity: str | int | float | None
    target: str | None = None
    test_fraction: float = 0.2
    seed: int = 0
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    per_layer: bool = False
    exclude_biases: bool = False
    lr: float | None = None
    n_monte: int = DEFAULT_N_SAMPLES
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    dtype: str = "float32"
    grad_tol: float = DEFAULT_GRAD_TOL
    dense_reference: bool = False
    threads: int | None = 1
    model: str = "mlp"
    optimizer: str | None = None
    schedule: str | None = None
    task: str | None = None
    structure: str = "entry"
    selection: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data.strip():
            raise InvalidValueError(f"data must name a data set or a CSV file, got {self.data!r}")
        check_structure(self.structure, self.sparsity)
        if self.structure != "entry" and (self.per_layer or self.exclude_biases):
            raise InvalidValueError(
                "--per-layer and --exclude-biases shape entry budgets; a structured budget is "
                "per layer already, with biases and the output layer dense"
            )
        if self.sparsity is not None:
            check_sparsity_form(self.sparsity)  # the range of a count needs the model
        if self.task is not None and self.task not in TASKS:
            raise InvalidValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.model not in MODELS:
            raise InvalidValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise InvalidValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise InvalidValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        check_selection(self.selection, optimizer_of(self), self.structure)
        if not 0 < self.test_fraction < 1:
            raise InvalidValueError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        if self.seed < 0:
            raise InvalidValueError(f"seed must be an integer >= 0, got {self.seed}")
        if any(w < 1 for w in self.hidden):
            raise InvalidValueError(f"hidden sizes must be positive integers, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise InvalidValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidValueError(f"lr must be 'auto' or a positive number, got {self.lr}")
        if self.steps is not None and self.epochs is not None:
            raise InvalidValueError("give steps or epochs, not both")
        for name in ("n_monte", "steps", "epochs", "batch_size", "eval_every", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidValueError(f"{name} must be an integer >= 1, got {value}")
        if self.dtype not in DTYPES:
            raise InvalidValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (self.grad_tol >= 0 and math.isfinite(self.grad_tol)):
            raise InvalidValueError(f"grad_tol must be a finite number >= 0, got {self.grad_tol}")


def check_structure(structure: object, sparsity: object) -> bool:
    """Refuse an unknown budget shape, or a sparsity that does not go with it; True for an
    N:M pattern (whose budget is the pattern itself)."""
    nm = isinstance(structure, str) and ":" in structure
    if nm:
        parse_nm(cast(str, structure))
        if sparsity is not None:
            raise InvalidValueError(
                f"an N:M pattern fixes the budget ({structure}: N of every M weights); "
                "leave out --sparsity"
            )
    elif structure not in ("entry", "neuron", "channel"):
        raise InvalidValueError(
            f"structure must be entry, neuron, channel or an N:M pattern such as 2:4, got "
            f"{structure!r}"
        )
    elif sparsity is None:
        raise InvalidValueError("--sparsity is required (a count, a fraction or a percentage)")
    return nm


def check_selection(selection: str | None, optimizer: str, structure: str) -> None:
    """Refuse an unknown selection, or the Fisher one where it does not apply."""
    if selection is None:
        return
    if selection not in SELECTIONS:
        raise InvalidValueError(
            f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}"
        )
    if selection == "fisher" and optimizer in ("iht", "gd"):
        raise InvalidValueError(
            f"--selection fisher projects after a base optimizer's step; --optimizer {optimizer} "
            "is the paper's step (use sgd, momentum, adam or adamw)"
        )
    if selection == "fisher" and structure != "entry":
        raise InvalidValueError(
            f"--selection fisher takes budgets of entries, not --structure {structure}"
        )


def default_selection(selection: str | None, optimizer: str, structure: str) -> str:
    """The selection a run takes when none is given: ``fisher`` after momentum, Adam and
    AdamW on entry budgets (measured on MNIST-1D's CNN: magnitude selection collapses at 95%
    sparsity), ``magnitude`` otherwise (the paper's H_s; plain SGD + H_s is IHT itself)."""
    if selection is not None:
        return selection
    if optimizer in ("momentum", "adam", "adamw") and structure == "entry":
        return "fisher"
    return "magnitude"


#: The methods of ``iht compare`` that have a structured form, by structure kind.
STRUCTURED_METHODS: dict[str, tuple[str, ...]] = {
    "group": ("dense", "oneshot", "gmp", "iht"),
    "nm": ("dense", "oneshot", "iht"),
}


@dataclass(frozen=True)
class Recipe:
    """What a train run does where its config is silent (see :func:`recipe`)."""

    optimizer: str
    schedule: str
    selection: str
    lr: float | None  # None: 1 / L_hat_2s
    steps: int
    batch_size: int | None
    eval_every: int


def optimizer_of(config: TrainConfig) -> str:
    """The optimizer a run takes: as given, else Adam for a CNN and IHT otherwise."""
    return config.optimizer or ("adam" if config.model == "cnn" else "iht")


def recipe(config: TrainConfig) -> Recipe:
    """The defaults of a run, by model: the paper's IHT for linear models and MLPs (full
    batch, 1 / L_hat_2s, the budget from the start), and for a CNN the recipe measured on
    MNIST-1D: Adam (lr 1e-2), batches of 100, 6,000 steps, the budget reached by a cubic
    schedule from dense (Adam with the budget from the start stayed at chance level there),
    and the Fisher selection (:func:`default_selection`). Anything the config sets wins."""
    cnn = config.model == "cnn"
    optimizer = optimizer_of(config)
    schedule = config.schedule or ("constant" if optimizer in ("iht", "sgd") else "cubic")
    lr = config.lr if config.lr is not None else DEFAULT_LR.get(optimizer)
    steps = config.steps if config.steps is not None else (6000 if cnn else DEFAULT_STEPS)
    batch = config.batch_size if config.batch_size is not None else (100 if cnn else None)
    every = config.eval_every if config.eval_every is not None else (100 if cnn else 1)
    selection = default_selection(config.selection, optimizer, config.structure)
    return Recipe(optimizer, schedule, selection, lr, steps, batch, every)


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Everything that decides a comparison's numbers (stored as ``config.json``).

    Attributes:
        data: a built-in data set name (``iris``, ``wine``, ``breast_cancer``, ``digits``) or a
            CSV path (with ``target``).
        sparsity: the budgets s: comma-separated counts, ranges of counts, fractions or
            percentages of P (biases counted), as :func:`iht.budget.parse_sparsity_list`
            reads them (``"3,5,8"``, ``"1-5"``, ``"10%,0.5"``), or the counts themselves.
        target: the label column of a CSV file.
        hidden: hidden layer widths; () is a linear model.
        activation: the hidden layers' activation.
        methods: which of :data:`METHODS` to run.
        steps: full-batch gradient evaluations per method (>= 2).
        seeds: seeds 0..seeds-1; each is a new split, initialisation and support.
        test_fraction: share of the rows held out for testing.
        l1: lambda of the L1 method.
        lr: one step size for every method, or None for 1/L_hat (dense) and 1/L_hat_2s (IHT).
        n_monte: Monte Carlo draws of each L_hat estimate.
        pretrain_fraction: share of ``steps`` before pruning in the one-shot and L1 methods.
        gmp_start, gmp_end: the GMP schedule runs from ``steps * gmp_start`` to at most
            ``steps * gmp_end`` (then fine-tuning with the mask fixed).
        gmp_events: about how many pruning events the GMP schedule has.
        threads: torch CPU threads while training (None: leave torch's setting alone).
        optimizer: the base optimizer of every method: ``gd`` (plain gradient steps, the
            default: 1 / L_hat for the dense network's methods, 1 / L_hat_2s for IHT, as the
            paper), or ``sgd``, ``momentum``, ``adam``, ``adamw`` (one lr for every method).
        batch_size: rows per step (None: full batch); every method sees the same batches.
        model: ``mlp`` or ``cnn``.
        schedule: IHT's budget schedule (None: ``constant`` for gd and sgd, ``cubic`` else).
        selection: IHT's support selection after a base optimizer's step (``magnitude`` or
            ``fisher``; None: :func:`default_selection`).
        dtype: the models' precision.
        validation_fraction: when set, the methods are scored on a validation split carved
            from the training rows (for choosing hyperparameters); the test rows are not
            touched.
        rigl_every, rigl_fraction, rigl_end: RigL's mask update every ``rigl_every`` steps,
            dropping and growing ``rigl_fraction`` (cosine-decayed) of each layer's
            connections, until ``rigl_end`` of the run.
        structure: the budget's shape (:func:`iht.budget.plan_structured_budget`):
            ``entry``, ``neuron`` / ``channel`` (the levels count hidden rows; methods
            dense, oneshot, gmp and iht, each keeping whole rows) or an N:M pattern (no
            levels: the pattern is the budget; dense, oneshot and iht). The default methods
            are then the ones the structure has; naming another is an error.
    """

    data: str = "iris"
    sparsity: str | tuple[int, ...]
    target: str | None = None
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    methods: tuple[str, ...] = METHODS
    steps: int = 2000
    seeds: int = 5
    test_fraction: float = 0.2
    l1: float = 1e-3
    lr: float | None = None
    n_monte: int = DEFAULT_N_SAMPLES
    pretrain_fraction: float = 0.5
    gmp_start: float = 1 / 6
    gmp_end: float = 2 / 3
    gmp_events: int = 100
    threads: int | None = 1
    optimizer: str = "gd"
    batch_size: int | None = None
    model: str = "mlp"
    schedule: str | None = None
    dtype: str = "float64"
    validation_fraction: float | None = None
    rigl_every: int = 100
    rigl_fraction: float = 0.3
    rigl_end: float = 0.75
    structure: str = "entry"
    selection: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data.strip():
            raise InvalidValueError(f"data must name a data set or a CSV file, got {self.data!r}")
        nm = check_structure(self.structure, self.sparsity or None)
        if not self.sparsity and not nm:
            raise InvalidValueError("give at least one sparsity level with --sparsity")
        if self.sparsity:
            check_sparsity_list_form(self.levels_text)  # the range of a count needs the model
        parse_methods(",".join(self.methods))
        if self.structure != "entry":
            allowed = STRUCTURED_METHODS["nm" if nm else "group"]
            if self.methods == METHODS:  # the default: the methods the structure has
                object.__setattr__(self, "methods", allowed)
            extra = [m for m in self.methods if m not in allowed]
            if extra:
                raise InvalidValueError(
                    f"method(s) {', '.join(extra)} have no {self.structure} form here; with "
                    f"--structure {self.structure} choose from {', '.join(allowed)}"
                )
        if self.steps < 2:
            raise InvalidValueError(
                f"steps must be >= 2 (pre-training and fine-tuning), got {self.steps}"
            )
        if self.seeds < 1:
            raise InvalidValueError(f"seeds must be >= 1, got {self.seeds}")
        if not 0 < self.test_fraction < 1:
            raise InvalidValueError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise InvalidValueError(f"--l1 must be a finite number >= 0, got {self.l1}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidValueError(f"--lr must be a positive finite number, got {self.lr}")
        if self.n_monte < 1:
            raise InvalidValueError(f"n_monte must be >= 1, got {self.n_monte}")
        if not 0 < self.pretrain_fraction < 1:
            raise InvalidValueError(
                f"pretrain_fraction must be in (0, 1), got {self.pretrain_fraction}"
            )
        if not 0 <= self.gmp_start <= self.gmp_end <= 1:
            raise InvalidValueError(
                f"need 0 <= gmp_start <= gmp_end <= 1, got {self.gmp_start}, {self.gmp_end}"
            )
        if self.threads is not None and self.threads < 1:
            raise InvalidValueError(f"threads must be an integer >= 1, got {self.threads}")
        if self.optimizer not in ("gd", *OPTIMIZERS[1:]):
            raise InvalidValueError(
                f"optimizer must be one of gd, {', '.join(OPTIMIZERS[1:])}, got {self.optimizer!r}"
            )
        if self.model not in MODELS:
            raise InvalidValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise InvalidValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.dtype not in DTYPES:
            raise InvalidValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidValueError(f"batch_size must be an integer >= 1, got {self.batch_size}")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise InvalidValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )
        if self.rigl_every < 1 or not 0 < self.rigl_fraction < 1 or not 0 < self.rigl_end <= 1:
            raise InvalidValueError(
                "RigL needs rigl_every >= 1, rigl_fraction in (0, 1) and rigl_end in (0, 1], got "
                f"{self.rigl_every}, {self.rigl_fraction}, {self.rigl_end}"
            )
        if self.gmp_events < 1:
            raise InvalidValueError(f"gmp_events must be >= 1, got {self.gmp_events}")
        check_selection(self.selection, self.optimizer, self.structure)
        if self.activation not in ACTIVATIONS:
            raise InvalidValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    @property
    def levels_text(self) -> str:
        """The budgets as :func:`iht.budget.parse_sparsity_list` text."""
        if isinstance(self.sparsity, str):
            return self.sparsity
        return ",".join(str(s) for s in self.sparsity)

    @property
    def iht_schedule(self) -> str:
        """IHT's budget schedule: as given, else constant for gd and sgd, cubic otherwise."""
        if self.schedule is not None:
            return self.schedule
        return "constant" if self.optimizer in ("gd", "sgd") else "cubic"

    @property
    def iht_selection(self) -> str:
        """IHT's support selection after a base optimizer's step (:func:`default_selection`)."""
        return default_selection(self.selection, self.optimizer, self.structure)

    @property
    def pretrain_steps(self) -> int:
        """Steps before pruning in the one-shot and L1 methods (at least 1, at most steps-1)."""
        return min(max(int(self.steps * self.pretrain_fraction), 1), self.steps - 1)


def parse_methods(text: str) -> tuple[str, ...]:
    """Parse ``--methods`` ("dense,iht"); kept in :data:`METHODS` order.

    Raises:
        ValueError: an unknown name, or no name at all.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise InvalidValueError(
            f"unknown method {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {', '.join(METHODS)}"
        )
    return tuple(m for m in METHODS if m in names)
