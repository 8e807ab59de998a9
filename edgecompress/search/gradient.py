"""The loop every gradient-based search shares (TAS, SNAS, SCAS): `run_gradient_search(...)`.

AMC and its baselines evaluate one candidate per episode (`runner.run_search`); these
searches instead train a relaxed network for `epochs` passes, the architecture
parameters and the weights together, with the resource cost inside the loss. After every
epoch the current most likely architecture (the child) is derived, scored without
fine-tuning (the same `evaluate` as AMC: BN re-estimated, top-1 on held-out images),
counted (MACs, params) and timed by the latency source, so the search log, the Pareto
plot and the summary read exactly as AMC's. The answer is the child of the last epoch,
when the temperature is lowest and the distribution has converged.

Files in `out_dir` (atomic, after every epoch):
- search_state.pt: strategy state (weights, architecture parameters, optimizers),
  torch/numpy/python RNG states, the log; `resume=True` continues after the last
  finished epoch with the same result as an uninterrupted run (same settings and
  epochs: the temperature and learning-rate schedules span the whole search);
- search_log.json: meta and one record per epoch (arch, accuracy, latency ms, MACs,
  params, feasible, the epoch's losses, expected cost and temperature);
- best_arch.json: the last epoch's architecture and its record;
- search.png: accuracy against latency (or MACs) of the epochs' children.

A loss that turns NaN or infinite stops the search with a UserError saying which loss
diverged, in which epoch and step; the checkpoint of the last good epoch is kept.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecompress.devices.base import DeviceUnavailableError
from edgecompress.errors import UserError
from edgecompress.fsutil import atomic_write_json
from edgecompress.search.runner import (FORMAT, LOG_FILE, PLOT_FILE, STATE_FILE, SearchPaused, SearchProgress,
                                        SearchResult, _latency_hit, _parse_budget, _save_state, load_resumable,
                                        plot_search)
from edgecompress.train.seed import rng_states, set_rng_states

ARCH_FILE = "best_arch.json"
#: reward of a child over a hard budget (as runner.INFEASIBLE_REWARD)
INFEASIBLE_REWARD = -1.0


class Diverged(RuntimeError):
    """A search loss became NaN or infinite."""

    def __init__(self, what: str, epoch: int, step: int, value: float) -> None:
        super().__init__(f"the {what} loss is {value} at epoch {epoch + 1}, step {step + 1}")
        self.what, self.epoch, self.step, self.value = what, epoch, step, value


def check_finite(what: str, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Raise Diverged unless `loss` is finite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise Diverged(what, epoch, step, value)


@dataclass
class SearchData:
    """The images a gradient search learns from: `weights` trains the network weights,
    `arch` the architecture parameters (disjoint halves of the training split, as in
    DARTS and TAS; strategies that update both on one batch use `weights` only)."""

    weights: Dataset
    arch: Dataset
    batch_size: int = 128
    seed: int = 0

    def loader(self, which: str, epoch: int) -> DataLoader:
        """A shuffled loader whose order depends only on (seed, epoch, which): resume-exact."""
        data = {"weights": self.weights, "arch": self.arch}[which]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 2 + (which == "arch"))
        return DataLoader(data, batch_size=self.batch_size, shuffle=True, generator=gen, drop_last=True)

    @classmethod
    def halves(cls, train: Dataset, *, batch_size: int = 128, seed: int = 0, samples: int | None = None) -> SearchData:
        """Split `train` into two random halves (at most `samples` images in all)."""
        from torch.utils.data import Subset

        n = len(train)  # type: ignore[arg-type]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        if samples is not None:
            if not (isinstance(samples, int) and samples >= 2 * batch_size):
                raise UserError(f"samples = {samples!r}: a search needs at least two batches ({2 * batch_size} "
                                "images) to split between weights and architecture")
            perm = perm[:samples]
        half = len(perm) // 2
        return cls(Subset(train, sorted(perm[:half])), Subset(train, sorted(perm[half:])), batch_size, seed)


@dataclass
class Derived:
    """A child network derived from the search: the model (eval mode), its architecture as
    plain data, and how to rebuild it (`spec`/`kwargs` for `save_checkpoint`; `removed`:
    modules replaced by nn.Identity, e.g. blocks a depth search dropped). `macs`/`params`,
    when set, are what the log reports and the budget is checked against instead of the
    dense counts of `analyze` (a sparse child: sparse MACs, nonzero params)."""

    model: nn.Module
    arch: dict[str, Any]
    spec: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    macs: int | None = None
    params: int | None = None


@dataclass(frozen=True)
class Budget:
    """The search's resource target in absolute terms: `metric` ("macs", "params" or
    "latency"), `limit` (MACs, params or ms) and `reference` (the same quantity of the
    model the target is a fraction of; ms measured on the device for latency)."""

    metric: str
    limit: float
    reference: float

    @property
    def fraction(self) -> float:
        return self.limit / self.reference


class GradientStrategy(abc.ABC):
    """What `run_gradient_search` drives. Built by its module's `build(options, ...)`;
    `setup(data, budget)` runs once on a fresh start (after seeding; budget None when the
    search has no target), `load_state_dict` replaces it on resume."""

    name = ""

    @abc.abstractmethod
    def setup(self, data: SearchData, budget: Budget | None) -> None: ...

    @abc.abstractmethod
    def steps_per_epoch(self) -> int: ...

    @abc.abstractmethod
    def train_epoch(self, epoch: int, epochs: int, tick: Callable[[int, str], None]) -> dict[str, float]:
        """One pass; `tick(steps_done, info)` after each step; Diverged on a non-finite loss.
        Returns the epoch's mean losses and what describes the relaxation now (tau, expected cost)."""

    @abc.abstractmethod
    def derive(self) -> Derived: ...

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The settings that must match for a resume (JSON)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any], data: SearchData) -> None: ...


def reference_costs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) of `model` at `input_shape` (C, H, W)."""
    from edgecompress.graph.cost import analyze

    report = analyze(model.eval(), tuple(input_shape))
    return int(report.total_macs), int(report.total_params)


def run_gradient_search(
    strategy: GradientStrategy,
    data: SearchData,
    evaluate: Callable[[nn.Module], float],
    *,
    reference: nn.Module,
    input_shape: tuple[int, int, int],
    budget: Any = None,
    latency_source: Any = None,
    epochs: int = 10,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | str = True,
) -> SearchResult:
    """Train `strategy` for `epochs`, deriving, scoring and timing its child after each.

    reference: the model the budget is a fraction of ("macs=0.5": half its MACs;
    "latency=0.6": 0.6 of its latency measured by `latency_source`). The result's `model`
    is the last epoch's child, `arch` its description, `best` its record.
    """
    if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1):
        raise UserError(f"epochs = {epochs!r}: a gradient search needs at least 1 epoch")
    target = _parse_budget(budget) if budget is not None else None
    if target is not None and target.metric == "latency" and latency_source is None:
        raise UserError(f"budget {target} needs a latency source (a device, a latency table or a predictor)")
    if resume and out_dir is None:
        raise UserError("resume=True needs the out_dir of the search to continue")
    out = Path(out_dir) if out_dir is not None else None
    state_path = out / STATE_FILE if out is not None else None
    meta: dict[str, Any] = {
        "format": FORMAT, "strategy": strategy.name, "kind": "gradient", "budget": str(target) if target else None,
        "seed": seed, "config": strategy.config(), "input_shape": list(input_shape), "epochs": epochs,
        "latency_source": getattr(latency_source, "name", None), "notes": [],
    }
    log: list[dict[str, Any]] = []
    if resume:
        # the schedules span `epochs`, so a resume needs the same number
        saved = load_resumable(state_path, meta, ("strategy", "budget", "seed", "config", "epochs"), weights_only=False)
        meta = saved["meta"]
        log = saved["log"]
        strategy.load_state_dict(saved["strategy"], data)
        set_rng_states(saved["rng"])
    elif state_path is not None and state_path.exists():
        raise UserError(f"{str(out)!r} already holds a search ({STATE_FILE}); pass resume=True to continue it "
                        "or choose another out_dir")
    else:
        torch.manual_seed(seed)
        macs, params = reference_costs(reference, input_shape)
        meta.update(reference_macs=macs, reference_params=params)
        if latency_source is not None:
            meta["reference_latency_ms"] = float(latency_source.latency_ms(reference.eval(), input_shape))
        if target is not None:
            whole = {"macs": macs, "params": params, "latency": meta.get("reference_latency_ms")}[target.metric]
            meta["limit"] = float(target.value * whole if target.fraction else target.value)
            meta["target_fraction"] = meta["limit"] / whole
        strategy.setup(data, Budget(target.metric, meta["limit"], float(whole)) if target is not None else None)

    def checkpoint() -> None:
        if out is None:
            return
        _save_state(state_path, {"meta": meta, "log": log, "strategy": strategy.state_dict(),  # type: ignore[arg-type]
                                 "rng": rng_states()})
        atomic_write_json(out / LOG_FILE, {"meta": meta, "best": log[-1] if log else None, "episodes": log})
        if log:
            atomic_write_json(out / ARCH_FILE, {"strategy": strategy.name, "arch": log[-1]["arch"], "record": log[-1]})

    if out is not None and not resume:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint()

    steps = strategy.steps_per_epoch()
    with SearchProgress(progress, f"search {strategy.name}", epochs * steps, len(log) * steps, out, "epochs") as bar:
        bar.done = len(log)
        for epoch in range(len(log), epochs):
            t0 = time.perf_counter()

            def tick(done: int, info: str, epoch: int = epoch) -> None:
                bar.update(epoch * steps + done, f"epoch {epoch + 1}/{epochs} {info}")

            try:
                stats = strategy.train_epoch(epoch, epochs, tick)
            except Diverged as exc:
                done = f"epochs 1-{len(log)}" if log else "no finished epoch yet"
                kept = (f"the checkpoint {state_path} holds {done}" if state_path is not None
                        else "no checkpoint was kept (no out_dir)")
                raise UserError(f"search {strategy.name} diverged: {exc}; stopped there, {kept}. Lower the learning "
                                "rates in the strategy options (lr, arch_lr) and continue with resume, or "
                                "start again") from None
            derived = strategy.derive()
            try:
                record = _score_child(derived, evaluate, latency_source, input_shape, meta, target)
            except DeviceUnavailableError as exc:
                raise SearchPaused(f"search paused after epoch {epoch + 1} of {epochs}: the device became "
                                   f"unavailable ({exc}); continue with --resume once it is back") from exc
            record.update(episode=epoch + 1, epoch=epoch + 1, train={k: round(float(v), 6) for k, v in stats.items()},
                          wall_s=round(time.perf_counter() - t0, 3), reused=False, strategy={"tau": stats.get("tau")})
            log.append(record)
            checkpoint()
            line = (f"child acc {record['accuracy']:.2%} MACs {record['macs']:,} "
                    f"lat {'-' if record['latency_ms'] is None else format(record['latency_ms'], '.4g') + ' ms'}")
            bar.done = len(log)
            bar.update((epoch + 1) * steps, f"epoch {epoch + 1}/{epochs} {line}",
                       f"search {strategy.name} epoch {epoch + 1}/{epochs}: {line}")

    derived = strategy.derive()
    files: dict[str, str] = {}
    if out is not None:
        checkpoint()
        files = {"state": str(out / STATE_FILE), "log": str(out / LOG_FILE), "arch": str(out / ARCH_FILE)}
        files["plot"] = str(plot_search(log, out / PLOT_FILE, limit=meta.get("limit"),
                                        metric=target.metric if target else None, best=len(log) - 1))
    return SearchResult(best=log[-1], best_policy=None, log=log, meta=meta, out_dir=out, files=files,
                        model=derived.model, derived=derived)


def _score_child(derived: Derived, evaluate: Callable[[nn.Module], float], source: Any,
                 input_shape: tuple[int, ...], meta: Mapping[str, Any], target: Any) -> dict[str, Any]:
    macs, params = derived.macs, derived.params
    if macs is None or params is None:
        dense_macs, dense_params = reference_costs(derived.model, input_shape)
        macs, params = dense_macs if macs is None else macs, dense_params if params is None else params
    accuracy = float(evaluate(derived.model))
    if not (math.isfinite(accuracy) and 0 <= accuracy <= 1):
        raise UserError(f"the accuracy function returned {accuracy!r}; it must return top-1 as a fraction in [0, 1]")
    latency = hit = None
    if source is not None:
        latency = float(source.latency_ms(derived.model.eval(), input_shape))
        hit = _latency_hit(source)
    values = {"macs": macs, "params": params, "latency": latency}
    feasible = True if target is None else values[target.metric] <= meta["limit"] * (1 + 1e-9)
    return {"arch": derived.arch, "accuracy": accuracy, "macs": macs, "params": params, "latency_ms": latency,
            "feasible": bool(feasible), "reward": -(1 - accuracy) if feasible else INFEASIBLE_REWARD,
            "latency_cache_hit": hit, "widths": derived.arch.get("widths", [])}


#: gradient strategies by name -> the module whose `build(options, ...)` makes one
GRADIENT_STRATEGIES = {"tas": "edgecompress.search.tas", "snas": "edgecompress.search.snas",
                       "scas": "edgecompress.search.scas"}


def all_strategies() -> list[str]:
    """Every search strategy: AMC and its baselines (by episode) and the gradient searches."""
    from edgecompress.search.runner import list_strategies

    return sorted({*list_strategies(), *GRADIENT_STRATEGIES})


def build_gradient(name: str, options: Mapping[str, Any], *, reference: nn.Module, input_shape: tuple[int, int, int],
                   num_classes: int | None = None, latency_source: Any = None, seed: int = 0) -> GradientStrategy:
    """A gradient strategy by name ("tas", "snas", "scas") with its options; UserError if unknown."""
    import importlib

    from edgecompress.errors import suggest

    if name not in GRADIENT_STRATEGIES:
        raise UserError(f"unknown gradient search {name!r}{suggest(str(name), GRADIENT_STRATEGIES)}; "
                        f"valid: {', '.join(sorted(GRADIENT_STRATEGIES))}")
    module = importlib.import_module(GRADIENT_STRATEGIES[name])
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(reference.eval()(torch.zeros(1, *input_shape)).shape[-1])
    return module.build(dict(options), reference=reference, input_shape=input_shape, num_classes=num_classes,
                        latency_source=latency_source, seed=seed)
