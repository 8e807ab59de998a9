"""The loop every search strategy shares: `run_search(...)`.

Per episode: the strategy proposes a policy (`ask`), the model is pruned to it, scored
without fine-tuning (`evaluate(pruned) -> top-1 in [0, 1]`), timed by the latency source,
rewarded, and the strategy learns from it (`tell`). The same evaluation budget
(`episodes`), reward and budget apply to every strategy, so their logs compare directly.

Files in `out_dir` (all written atomically after every episode):
- search_state.pt: everything needed to continue exactly (strategy state: agent weights,
  replay buffer, RNG; torch/numpy/python RNG states; the latency model; the log);
- search_log.json: meta (strategy, reward, budget, space), one record per episode
  (policy, widths, rank ratios in a joint space, reward, accuracy, latency ms, MACs,
  params, feasible, wall time, whether the latency came from the latency cache) and the
  best record;
- best_policy.json: the best policy (within budget), `Policy.from_json` reads it back;
- search.png: accuracy against latency (or MACs), Pareto front highlighted (at the end).

`resume=True` continues a search from its checkpoint (after an interruption, or with a
larger `episodes`); the result is the same as an uninterrupted run whenever evaluation
and latency are deterministic. A KeyboardInterrupt leaves the last episode's checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from edgecompress.devices.base import DeviceUnavailableError
from edgecompress.errors import UserError, suggest
from edgecompress.fsutil import atomic_write_bytes, atomic_write_json
from edgecompress.search.reward import Outcome, Reward, make_reward
from edgecompress.search.space import Constraint, LinearLatencyModel, Policy, SearchSpace
from edgecompress.train.seed import rng_states, set_rng_states

FORMAT = "edgecompress.search/1"
#: the reward of a candidate measured over a hard budget (the error reward's value at accuracy 0)
INFEASIBLE_REWARD = -1.0
STATE_FILE, LOG_FILE, BEST_FILE, PLOT_FILE = "search_state.pt", "search_log.json", "best_policy.json", "search.png"


class Strategy(Protocol):
    """What the loop drives: propose, learn, and save/restore for resume."""

    name: str
    finished: bool  # set by ask() when it has nothing new: that policy is not evaluated, the loop stops

    def ask(self, constraint: Constraint | None) -> Policy: ...

    def tell(self, policy: Policy, reward: float, outcome: Outcome | None = None) -> None: ...

    def info(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _amc(space: SearchSpace, seed: int, **options: Any) -> Strategy:
    from edgecompress.search.amc import AMCAgent, AMCConfig

    return AMCAgent(space, AMCConfig(**options), seed=seed)


def _baseline(cls_name: str) -> Callable[..., Strategy]:
    def make(space: SearchSpace, seed: int, **options: Any) -> Strategy:
        from edgecompress.search import baselines

        return getattr(baselines, cls_name)(space, seed=seed, **options)

    return make


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "amc": _amc,
    "uniform": _baseline("UniformStrategy"),
    "random": _baseline("RandomStrategy"),
    "evolution": _baseline("EvolutionStrategy"),
}


def list_strategies() -> list[str]:
    return sorted(STRATEGIES)


def amc_warmup(episodes: int) -> tuple[int, str | None]:
    """AMC's warm-up for a run of `episodes`: the paper's 100 random episodes when the run
    has room for them (at least 4x), else a quarter of the run (the paper's proportion,
    100 of 400), with a note saying so; a run shorter than its warm-up never learns."""
    from edgecompress.search.amc import AMCConfig

    paper = AMCConfig.warmup
    if episodes >= 4 * paper:
        return paper, None
    warmup = max(1, episodes // 4)
    return warmup, (f"AMC warm-up: {warmup} random episodes of {episodes} (the paper's {paper} do not fit a run "
                    f"this short; the agent learns from the other {episodes - warmup}); set warmup to choose")


def make_strategy(name: str, space: SearchSpace, *, seed: int = 0, **options: Any) -> Strategy:
    """A strategy by name with its options (AMCConfig fields for "amc"); UserError if unknown."""
    if name not in STRATEGIES:
        raise UserError(f"unknown search strategy {name!r}{suggest(str(name), STRATEGIES)}; "
                        f"valid: {', '.join(list_strategies())}")
    try:
        return STRATEGIES[name](space, seed, **options)
    except TypeError as exc:
        raise UserError(f"search strategy {name!r} does not take options {sorted(options)} ({exc})") from None
    except ValueError as exc:
        raise UserError(f"search strategy {name!r}: {exc}") from None


@dataclass
class SearchResult:
    """What a search found: the best record (None if no candidate met the budget), its policy, the log."""

    best: dict[str, Any] | None
    best_policy: Policy | None
    log: list[dict[str, Any]]
    meta: dict[str, Any]
    out_dir: Path | None = None
    stopped_early: bool = False
    files: dict[str, str] = field(default_factory=dict)
    #: gradient searches (TAS, SNAS, SCAS): the derived child network and its description
    model: nn.Module | None = None
    derived: Any = None

    def latency_cache_counts(self) -> dict[str, int]:
        """Candidates timed on the device (misses), served by the latency cache (hits), and
        scored again from this search's own log (reused: a policy it had already evaluated)."""
        hits = [r.get("latency_cache_hit") for r in self.log]
        return {"hits": hits.count(True), "misses": hits.count(False),
                "reused": sum(bool(r.get("reused")) for r in self.log)}

    def summary(self, total_macs: float) -> dict[str, Any]:
        """The best candidate and the cost of the search, for reports (`total_macs`: the unpruned model's)."""
        best = self.best or {}
        return {
            "episodes": len(self.log), "stopped_early": self.stopped_early,
            "best": {k: best.get(k) for k in ("episode", "reward", "accuracy", "latency_ms", "macs", "params", "widths")},
            "best_policy": self.best_policy.to_dict() if self.best_policy else None,
            "macs_ratio": best["macs"] / total_macs if best else None,
            "latency_cache": self.latency_cache_counts(),
            "wall_s": round(sum(r.get("wall_s", 0.0) for r in self.log), 3),
        }


def _parse_budget(budget: Any) -> Any:
    from edgecompress.prune.structured import Target

    if isinstance(budget, Target):
        return budget
    try:
        return Target.parse(budget)
    except ValueError as exc:
        raise UserError(f"search budget: {exc}") from None


def _latency_hit(source: Any) -> bool | None:
    """Whether the source's latest call was served by the latency cache (None: it does not say)."""
    last = getattr(source, "last_result", None)
    info = getattr(last, "runtime_info", None)
    if isinstance(info, Mapping) and info.get("cache") in ("hit", "miss"):
        return info["cache"] == "hit"
    return None



def load_resumable(state_path: Path | None, meta: Mapping[str, Any], keys: tuple[str, ...], *,
                   weights_only: bool = True) -> dict[str, Any]:
    """The checkpoint a search resumes from; UserError if there is none, or if it was saved
    by a search whose `keys` of meta differ from this one's (naming the first)."""
    out = state_path.parent if state_path is not None else None
    if state_path is None or not state_path.exists():
        raise UserError(f"nothing to resume in {str(out)!r}: no {STATE_FILE}; start the search without resume")
    saved = torch.load(state_path, map_location="cpu", weights_only=weights_only)
    for key in keys:
        if saved["meta"].get(key) != meta[key]:
            raise UserError(f"cannot resume {str(out)!r}: it was a search with {key} {saved['meta'].get(key)!r}, "
                            f"this one has {meta[key]!r}; use the same settings or another out_dir")
    return saved


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.4g}{unit}"


class SearchProgress:
    """A search's progress: a rich bar on a terminal (else a line now and then), and on
    Ctrl-C the bar stopped and a line saying how to resume. Use as a context manager;
    `update(completed, info, line)` moves the bar, or prints `line` when given and there
    is no bar; `done` is what the resume hint counts (episodes, epochs)."""

    def __init__(self, progress: bool | str, title: str, total: int, completed: int, out: Path | None,
                 unit: str) -> None:
        from edgecompress.train.progress import make_console, make_progress, progress_enabled

        self.progress, self.title, self.total, self.out, self.unit = progress, title, total, out, unit
        self.console = make_console(progress)
        self.bars = make_progress(self.console) if progress_enabled(progress) else None
        self.completed = completed
        self.done = 0

    def __enter__(self) -> SearchProgress:
        if self.bars is not None:
            self.bars.start()
            self.task = self.bars.add_task(self.title, total=self.total, completed=self.completed, info="")
        return self

    def update(self, completed: int, info: str, line: str | None = None) -> None:
        if self.bars is not None:
            self.bars.update(self.task, completed=completed, info=info)
        elif self.progress is not False and line is not None:
            self.console.print(line, markup=False, highlight=False)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.bars is not None:
            self.bars.stop()
        if exc_type is KeyboardInterrupt and self.out is not None:
            print(f"search interrupted after {self.done} {self.unit}; continue it with resume=True "
                  f"(checkpoint {self.out / STATE_FILE})", file=sys.stderr)


def run_search(
    strategy: str | Strategy,
    space: SearchSpace,
    evaluate: Callable[[nn.Module], float],
    latency_source: Any = None,
    budget: Any = None,
    episodes: int = 100,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | str = True,
    *,
    reward: str | Reward = "error",
    reward_options: Mapping[str, Any] | None = None,
    strategy_options: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Search per-group keep ratios (and a joint space's rank ratios) of `space.model` for `episodes` evaluations.

    strategy: "amc", "uniform", "random", "evolution" (options: `strategy_options`, e.g.
        AMCConfig fields) or a Strategy object.
    evaluate: pruned model -> top-1 accuracy in [0, 1] (e.g. reward.Evaluator); a failure
        becomes a UserError naming the candidate policy.
    latency_source: anything with `latency_ms(model, input_shape) -> ms` (and `name`);
        needed for latency budgets, optional otherwise (then the log has no latency).
    budget: "macs=0.5", "params=1.2M", "latency=0.6" (of the unpruned model) or
        "latency=3ms"; a hard constraint for the "error" reward, the target T of
        "mnasnet", refused by "error_log_macs" (which has no budget).
    seed: seeds the strategy and, on a fresh start, torch's global RNG.
    out_dir: where the checkpoint, log, best policy and plot go (None: nothing written,
        no resume). resume: continue the search saved there.
    progress: True (bar on a terminal, a line every tenth of the run in logs), False, "always".
    """
    if not (isinstance(episodes, int) and not isinstance(episodes, bool) and episodes >= 1):
        raise UserError(f"episodes = {episodes!r}: a search needs at least 1 episode (one evaluated candidate)")
    rew = make_reward(reward, **dict(reward_options or {}))
    notes: list[str] = []
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise UserError(f"unknown search strategy {strategy!r}{suggest(strategy, STRATEGIES)}; "
                            f"valid: {', '.join(list_strategies())}")
        options = dict(strategy_options or {})
        if strategy == "amc" and "warmup" not in options:
            options["warmup"], note = amc_warmup(episodes)
            if note:
                notes.append(note)
                if progress is not False:
                    print(f"note: {note}", file=sys.stderr)
        strat = make_strategy(strategy, space, seed=seed, **options)
    elif strategy_options:
        raise UserError(f"strategy_options {sorted(strategy_options)} apply to a strategy given by name; "
                        f"configure the {type(strategy).__name__} object itself")
    else:
        strat = strategy
    if rew.needs_budget and budget is None:
        raise UserError(f"the {rew.name!r} reward needs a budget, e.g. macs=0.5 or latency=3ms")
    if budget is not None and not rew.takes_budget:
        raise UserError(f"the {rew.name!r} reward takes no budget (got {budget}); use the 'error' reward "
                        "for a hard budget or 'mnasnet' for a soft one")
    if strat.name == "uniform" and budget is None:
        raise UserError("the uniform baseline needs a budget to aim at, e.g. macs=0.5")
    target = _parse_budget(budget) if budget is not None else None
    if target is not None and target.metric == "latency" and latency_source is None:
        raise UserError(f"budget {target} needs a latency source (a device, a latency table or a predictor)")
    if resume and out_dir is None:
        raise UserError("resume=True needs the out_dir of the search to continue")

    out = Path(out_dir) if out_dir is not None else None
    meta = {
        "format": FORMAT, "strategy": strat.name, "reward": rew.to_dict(), "budget": str(target) if target else None,
        "seed": seed, "space": space.signature(), "groups": len(space.groups), "input_shape": list(space.input_shape),
        "latency_source": getattr(latency_source, "name", None) if latency_source is not None else None,
        "notes": notes,
        **({"lowrank": space.lowrank, "rank_layers": len(space.ranks)} if space.ranks else {}),
    }
    log: list[dict[str, Any]] = []
    cache: dict[tuple, dict[str, Any]] = {}  # (widths, rank ratios) -> the record that scored them
    latency_model: LinearLatencyModel | None = None
    state_path = out / STATE_FILE if out is not None else None

    if resume:
        saved = load_resumable(state_path, meta, ("strategy", "reward", "budget", "seed", "space"))
        meta = saved["meta"]
        log = saved["log"]
        cache = {_key(r): r for r in log}
        strat.load_state_dict(saved["strategy"])
        if saved.get("latency_model") is not None:
            latency_model = LinearLatencyModel.from_dict(space, saved["latency_model"])
        set_rng_states(saved["rng"])
    elif state_path is not None and state_path.exists():
        raise UserError(f"{str(out)!r} already holds a search ({STATE_FILE}); pass resume=True to continue it "
                        "or choose another out_dir")
    else:
        torch.manual_seed(seed)

    def latency_of(policy: Policy) -> float:
        return float(latency_source.latency_ms(space.apply(policy), space.input_shape))

    constraint: Constraint | None = None
    if target is not None:
        hard = rew.hard
        if not resume:
            meta.update(_setup_budget(space, target, latency_source, latency_of, hard or strat.name == "uniform"))
            if "latency_model" in meta:
                latency_model = LinearLatencyModel.from_dict(space, meta.pop("latency_model"))
        limit = meta["limit"]
        estimate = latency_model.estimate_units if latency_model is not None else None
        if target.metric == "latency" and estimate is None:
            constraint = None  # soft latency target with no estimate needed (AMC/random/evolution explore freely)
        else:
            constraint = Constraint(space, target.metric, limit, hard=hard, estimate=estimate)
        meta["constraint"] = constraint.describe() if constraint is not None else f"latency target {limit:.4g} ms"

    def checkpoint() -> None:
        if out is None:
            return
        best = _best(log, rew, meta)
        state = {"meta": meta, "log": log, "strategy": strat.state_dict(), "rng": rng_states(),
                 "latency_model": latency_model.to_dict() if latency_model is not None else None}
        _save_state(state_path, state)  # type: ignore[arg-type]
        atomic_write_json(out / LOG_FILE, {"meta": meta, "best": best, "episodes": log})
        if best is not None:
            ranks = {"rank": best["rank"], "rank_layers": list(space.rank_names),
                     "lowrank": space.lowrank} if space.ranks else {}
            atomic_write_json(out / BEST_FILE, {"policy": best["policy"], "groups": list(space.names), **ranks,
                                                "widths": best["widths"], "episode": best["episode"],
                                                "reward": best["reward"], "accuracy": best["accuracy"],
                                                "latency_ms": best["latency_ms"], "macs": best["macs"]})

    if out is not None and not resume:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint()

    every = max(1, episodes // 10)
    stopped_early = False
    with SearchProgress(progress, f"search {strat.name}", episodes, len(log), out, "episodes") as bar:
        bar.done = len(log)
        while len(log) < episodes:
            if strat.finished:
                stopped_early = True
                break
            t0 = time.perf_counter()
            policy = strat.ask(constraint)
            if strat.finished:  # ask had nothing new to propose
                stopped_early = True
                break
            widths = space.widths(policy)
            ranks = {"rank": [round(r, 6) for r in policy.rank]} if space.ranks else {}
            hit = cache.get(_key({"widths": widths, **ranks}))
            if hit is not None:
                outcome = Outcome(hit["accuracy"], hit["macs"], hit["params"], hit["latency_ms"])
                cache_hit, reused = None, True
            else:
                try:
                    outcome, cache_hit = _score(space, policy, evaluate, latency_source)
                except DeviceUnavailableError as exc:
                    raise SearchPaused(_paused_message(exc, len(log), episodes, state_path)) from exc
                reused = False
            feasible = True if target is None else outcome.metric(target.metric) <= meta["limit"] * (1 + 1e-9)
            value = rew(outcome, target.metric if target else None, meta.get("limit"))
            if rew.hard and not feasible:
                # The clamp's estimate said it fits, the measurement says no: the strategy must
                # not learn that going over the budget pays, so it gets accuracy 0's reward.
                value = INFEASIBLE_REWARD
            strat.tell(policy, value, outcome)
            if latency_model is not None and outcome.latency_ms is not None and not reused:
                latency_model.observe(policy, outcome.latency_ms)
            record = {
                "episode": len(log) + 1, "policy": [round(k, 6) for k in policy.keep], "widths": widths, **ranks,
                "reward": value, "accuracy": outcome.accuracy, "latency_ms": outcome.latency_ms,
                "macs": int(outcome.macs), "params": int(outcome.params), "feasible": bool(feasible),
                "wall_s": round(time.perf_counter() - t0, 4), "latency_cache_hit": cache_hit, "reused": reused,
                "strategy": strat.info(),
            }
            log.append(record)
            cache.setdefault(_key(record), record)
            checkpoint()
            best = _best(log, rew, meta)
            line = (f"best R {best['reward']:.4f} acc {best['accuracy']:.2%} lat {_fmt(best['latency_ms'], ' ms')} "
                    f"MACs {_fmt(best['macs'])}") if best else "no candidate within budget yet"
            bar.done = len(log)
            bar.update(len(log), line, f"search {strat.name} {len(log)}/{episodes}: {line}"
                       if len(log) % every == 0 else None)

    best = _best(log, rew, meta)
    files: dict[str, str] = {}
    if out is not None:
        checkpoint()
        files = {"state": str(out / STATE_FILE), "log": str(out / LOG_FILE)}
        if best is not None:
            files["best"] = str(out / BEST_FILE)
        files["plot"] = str(plot_search(log, out / PLOT_FILE, limit=meta.get("limit"),
                                        metric=target.metric if target else None))
    return SearchResult(best=best, best_policy=_policy(best, space.names, space.rank_names, space.lowrank)
                        if best else None, log=log, meta=meta, out_dir=out, stopped_early=stopped_early, files=files)


def _key(record: Mapping[str, Any]) -> tuple:
    """What identifies a candidate's model: its widths and (a joint space) its rank ratios."""
    return tuple(record["widths"]), tuple(record.get("rank", ()))


def _policy(record: Mapping[str, Any], names: tuple[str, ...], rank_names: tuple[str, ...],
            lowrank: str | None) -> Policy:
    return Policy(tuple(record["policy"]), names, tuple(record.get("rank", ())), rank_names,
                  lowrank if record.get("rank") else None)


class SearchPaused(DeviceUnavailableError):
    """The device went away mid-search; everything up to the last finished episode is checkpointed."""


def _paused_message(exc: Exception, done: int, episodes: int, state_path: Path | None) -> str:
    where = (f"the checkpoint {state_path} holds episodes 1-{done}; once the device is back (`edgecompress devices` "
             "lists it as 'device'), continue with --resume (a compress run: re-run the same command)"
             if state_path is not None else "no checkpoint was kept (no out_dir): re-run the search once it is back")
    return f"search paused in episode {done + 1} of {episodes}: the device became unavailable ({exc}); {where}"


def _setup_budget(space: SearchSpace, target: Any, source: Any, latency_of: Callable[[Policy], float],
                  needs_model: bool) -> dict[str, Any]:
    """The absolute limit, the reachable minimum (UserError if the limit is below it), and for
    latency the measured base and (if the clamp or the uniform baseline needs it) the latency model."""
    info: dict[str, Any] = {}
    if target.metric in ("macs", "params"):
        whole = space.total_macs if target.metric == "macs" else space.total_params
        limit = target.value * whole if target.fraction else target.value
        floor = space.cost_units([d.choices[0] for d in space.dims], target.metric)
        unit = " MACs" if target.metric == "macs" else " params"
        if source is not None:
            info["base_latency_ms"] = float(source.latency_ms(space.model, space.input_shape))
    else:
        whole = float(source.latency_ms(space.model, space.input_shape))
        info["base_latency_ms"] = whole
        limit = target.value * whole if target.fraction else target.value
        if needs_model:
            t0 = time.perf_counter()
            model = LinearLatencyModel.fit(space, latency_of)
            info["latency_model"] = model.to_dict()
            info["latency_probes"] = len(space) + 2
            info["latency_probe_s"] = round(time.perf_counter() - t0, 3)
            floor = model.min_ms
        else:
            floor = latency_of(space.min_policy())
        unit = " ms"
    if limit < floor:
        def show(v: float) -> str:
            return f"{v:.4g}{unit}" if unit == " ms" else f"{v:,.0f}{unit}"

        ranks = " (and every rank layer at its smallest rank)" if space.ranks else ""
        raise UserError(f"budget {target} ({show(limit)}) is below the reachable minimum: every group at its "
                        f"narrowest{ranks} gives {show(floor)} ({floor / whole:.3f} of the model); raise the budget "
                        "or lower min_keep / round_to")
    info.update(limit=float(limit), reachable_min=float(floor))
    return info


def _score(space: SearchSpace, policy: Policy, evaluate: Callable[[nn.Module], float],
           source: Any) -> tuple[Outcome, bool | None]:
    pruned, result = space.prune(policy)
    try:
        accuracy = float(evaluate(pruned))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's function, with the candidate named
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise UserError(f"the accuracy function failed on candidate policy {policy.short()} ({text}); "
                        "fix the evaluation function or the data it reads") from exc
    if not (math.isfinite(accuracy) and 0 <= accuracy <= 1):
        raise UserError(f"the accuracy function returned {accuracy!r} for policy {policy.short()}; "
                        "it must return top-1 as a fraction in [0, 1]")
    latency = hit = None
    if source is not None:
        latency = float(source.latency_ms(pruned, space.input_shape))
        hit = _latency_hit(source)
    return Outcome(accuracy, result.macs_after, result.params_after, latency), hit


def _best(log: list[dict[str, Any]], rew: Reward, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """Highest reward; under a hard budget only among candidates that met it when measured."""
    pool = [r for r in log if r["feasible"]] if rew.hard else log
    return max(pool, key=lambda r: (r["reward"], -r["episode"]), default=None)


def read_search(out_dir: str | Path) -> SearchResult:
    """The log and best policy of a search written to `out_dir` (finished or not)."""
    out = Path(out_dir)
    path = out / LOG_FILE
    if not path.exists():
        raise UserError(f"{str(out)!r} holds no search log ({LOG_FILE}); run the search first")
    data = json.loads(path.read_text())
    best, meta = data.get("best"), data["meta"]
    policy = None
    if best and (out / BEST_FILE).exists():
        policy = Policy.load(out / BEST_FILE)
    elif best:
        policy = _policy(best, (), (), meta.get("lowrank"))
    return SearchResult(best=best, best_policy=policy, log=data["episodes"], meta=meta, out_dir=out)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point beats on both (lower cost, higher accuracy)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_search(log: list[dict[str, Any]], path: str | Path, *, limit: float | None = None,
                metric: str | None = None, best: int | None = None) -> Path:
    """PNG of accuracy against latency (ms; MACs when latency was not measured), every
    candidate in grey, the Pareto front in colour, the answer starred (`best`: its index
    in `log`; default the best reward within budget), the budget dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    use_latency = bool(log) and all(r.get("latency_ms") is not None for r in log)
    key, label = ("latency_ms", "latency (ms)") if use_latency else ("macs", "MACs")
    points = [(float(r[key]), float(r["accuracy"])) for r in log]
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if points:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=12, c="0.7", label="candidates")
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "o-", c="tab:blue", ms=5,
                drawstyle="steps-post", label="Pareto front")
        if best is None:
            best = max(range(len(log)), key=lambda i: log[i]["reward"] if log[i].get("feasible", True) else -math.inf)
            star = "best reward"
        else:
            star = "search result"
        ax.scatter([points[best][0]], [points[best][1]], marker="*", s=160, c="tab:red", zorder=3, label=star)
    if limit is not None and metric == ("latency" if use_latency else "macs"):
        ax.axvline(limit, ls="--", c="k", lw=1, label="budget")
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (no fine-tuning)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
