"""The β search of one (layer, timestep): Alg. A2 as read in docs/search.md and docs/math.md.

``search_beta`` draws candidate widths, asks ``evaluate`` for their metric values in one call (the
fused candidate-statistics kernel), and picks the width: by a GP + LogEI step on a window around
the best draw ("bo"), or by evaluating that window's grid as well ("grid"). It knows nothing about
how the metric is computed. The GP is tiny (n_obs points, 1-D) and stays float64 on the CPU; its
hyperparameter fit is the cost that matters, hence the ``gp_fit`` options (docs/search-gp-cost.md).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

# torch >= 2.14 deprecates torch.jit.script with a FutureWarning, and linear_operator (which gpytorch
# and BoTorch import) scripts two functions as it is imported: every command of this package would
# start its stderr with that warning about code that is not the user's. It is ignored for this
# import only, by its message, category and the module that issues it.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                            module=r"torch\.jit\._script")
    from botorch.acquisition import LogExpectedImprovement
    from botorch.exceptions import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.input import Normalize
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood
    from gpytorch.utils.warnings import NumericalWarning

from ..ops.checks import check_flag, check_real

STRATEGIES = ("bo", "grid")
GP_FITS = ("fit", "warm", "fixed")
# A metric curve whose values all lie within this fraction of their largest magnitude is flat: the
# candidates' statistics come from fp32 deltas, so differences that small are rounding, not signal.
FLAT_RTOL = 1e-6

# L-BFGS-B iterations of a "warm" fit, which starts from the previous search's hyperparameters:
# with 10, its choices matched a full fit's in 99-100% of the bench searches (3: 98-100%) at about
# half a full fit's cost (docs/search-gp-cost.md).
WARM_MAXITER = 10
# The fit is seeded alike every time: BoTorch resamples hyperparameters from their priors (global
# RNG) when a fit attempt fails; a forked, fixed-seed RNG keeps a search a pure function of its
# inputs and leaves the caller's RNG stream alone.
_FIT_SEED = 0


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """How one β search runs. ``gp_fit`` only matters for the "bo" strategy:

    "fit"    full hyperparameter fit (``fit_gpytorch_mll``) every search, as in the paper;
    "warm"   full fit on a site's first search, then a WARM_MAXITER-iteration fit from the last
             one's hyperparameters (kept in a ``GPState``);
    "fixed"  no fit: the ``GPState``'s hyperparameters (GPState's defaults without one).

    "fixed" is the default: 12x cheaper than "fit" per search on the bench curves, with as low a
    regret, and choices within 0.01 of "fit"'s in ~93% of searches (docs/search-gp-cost.md). A
    controller that runs a site's first search with "fit" and its GPState, then "fixed" with that
    state, agreed with "fit" in ~99% at the same steady-state cost.
    """

    strategy: str = "bo"
    n_obs: int = 100
    n_eval: int = 150
    radius: float = 0.05
    beta_range: tuple = (0.05, 1.0)
    gp_fit: str = "fixed"

    def __post_init__(self) -> None:
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("gp_fit", self.gp_fit, GP_FITS)
        _check_int("n_obs", self.n_obs, 2)
        _check_int("n_eval", self.n_eval, 1)
        if check_real("radius", self.radius) <= 0:
            raise ValueError(f"radius must be > 0, got {self.radius}")
        if not isinstance(self.beta_range, (tuple, list)) or len(self.beta_range) != 2:
            raise TypeError(f"beta_range must be a pair (lo, hi), got {self.beta_range!r}")
        lo, hi = (check_real("beta_range", v) for v in self.beta_range)
        if not 0 < lo < hi:
            raise ValueError(f"beta_range must satisfy 0 < lo < hi, got {self.beta_range!r}")
        object.__setattr__(self, "beta_range", (lo, hi))


@dataclass
class SearchResult:
    """What one ``search_beta`` chose and why; metric values are in the metric's own sense."""

    beta: float | None  # the chosen width (None: nothing finite observed and current=None)
    best_beta: float | None  # best observed width
    best_value: float  # metric value at best_beta, in the metric's own sense (nan if none finite)
    predicted: float | None  # GP posterior mean at beta (metric's own sense); None without a GP
    fell_back: bool  # the GP's choice was rejected (or nothing usable was observed)
    gp_seconds: float  # wall time of the GP fit + acquisition
    n_evaluated: int  # candidates passed to evaluate in total
    flat: bool = False  # the observed curve was flat (is_flat): current kept, no GP


@dataclass
class GPState:
    """GP hyperparameters carried from one search to the next at one search site.

    Values are in the model's units (β normalised to [0, 1], metric standardised), so they carry
    over between searches whatever the metric's scale. ``fitted`` is False until a search has
    fitted them ("fit" and "warm" do, "fixed" never does); a "warm" search then does a full fit.
    Keep one per (layer, timestep): the curves differ between sites.

    The defaults are what "fixed" uses without a fit: about the medians of full fits on the bench
    curves (lengthscale 0.09-0.10, noise 1.3e-4), the noise at BoTorch's lower bound for it.
    BoTorch's own initial values (its priors' modes: lengthscale 0.2, noise 6.7e-3) smooth over
    the optimum and chose worse without a fit (docs/search-gp-cost.md).
    """

    lengthscale: float = 0.1
    noise: float = 1e-4
    mean: float = 0.0
    fitted: bool = False

    def state_dict(self) -> dict:
        """The four fields as a dict, for a checkpoint."""
        return {"lengthscale": self.lengthscale, "noise": self.noise, "mean": self.mean, "fitted": self.fitted}

    def load_state_dict(self, state: dict) -> None:
        """Sets the fields from a ``state_dict()``, all or none: every value is checked first.

        Raises:
            ValueError: other keys, a non-finite value, or a lengthscale or noise <= 0 (the GP's
                positive hyperparameters; gpytorch would fail on them at the next search).
            TypeError: a value of the wrong type.
        """
        if not isinstance(state, dict) or set(state) != {"lengthscale", "noise", "mean", "fitted"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"GPState state must have keys lengthscale, noise, mean, fitted; got {keys}")
        values = {name: check_real(f"state[{name!r}]", state[name]) for name in ("lengthscale", "noise", "mean")}
        for name in ("lengthscale", "noise"):
            if values[name] <= 0:
                raise ValueError(f"state[{name!r}] must be > 0, got {values[name]}")
        fitted = check_flag("state['fitted']", state["fitted"])
        self.lengthscale, self.noise, self.mean, self.fitted = (values["lengthscale"], values["noise"],
                                                                values["mean"], fitted)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Runs the GP on one intra-op thread: a 100-point GP gains nothing from more, and when other
    processes (data loaders) keep the cores busy, OpenMP threads waiting on each other made a fit
    up to 30x slower in our measurements (docs/search-gp-cost.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(mll: ExactMarginalLogLikelihood, **kwargs: Any) -> Any:
    """fit_gpytorch_mll wherever we are called from. Inside a custom op's implementation (the A²SG
    controller searches inside one) autograd is switched off thread-locally, grad mode and dispatch
    keys alike; the fit then runs on a worker thread, and only the fit: candidate evaluations stay on
    the caller's thread, since a second thread doing tensor work starts its own OpenMP team, which
    was measured to slow the training loop's later CPU work by half."""
    with torch.enable_grad():
        autograd_works = (torch.ones(1, requires_grad=True) * 2).requires_grad
    if autograd_works:
        return fit_gpytorch_mll(mll, **kwargs)
    return _fit_thread().submit(fit_gpytorch_mll, mll, **kwargs).result()


@functools.cache
def _fit_thread() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="a2sg-gp-fit")


def is_flat(values: torch.Tensor) -> bool:
    """True when every value of the float64 tensor ``values`` [K] (finite, K >= 1) is within
    FLAT_RTOL of the largest magnitude among them: a curve with nothing to model."""
    return bool(values.max() - values.min() <= FLAT_RTOL * values.abs().max())


def _evaluate(evaluate: Callable[[torch.Tensor], Any], betas: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(evaluate(betas), dtype=torch.float64, device="cpu")
    if values.shape != betas.shape:
        raise ValueError(f"evaluate must return one value per candidate, shape {tuple(betas.shape)}, "
                         f"got {tuple(values.shape)}")
    return values


def _fit_gp(beta: torch.Tensor, y: torch.Tensor, config: SearchConfig, gp_state: GPState | None) -> SingleTaskGP:
    """A SingleTaskGP on (beta, y) with hyperparameters set per ``config.gp_fit``; ``gp_state`` is
    updated with the fitted ones."""
    lo, hi = config.beta_range
    bounds = torch.tensor([[lo], [hi]], dtype=torch.float64)
    model = SingleTaskGP(beta.unsqueeze(-1), y.unsqueeze(-1), input_transform=Normalize(d=1, bounds=bounds),
                         outcome_transform=Standardize(m=1))
    state = gp_state if gp_state is not None else GPState()
    warm = config.gp_fit == "warm" and state.fitted
    if config.gp_fit == "fixed" or warm:
        # gpytorch (no type information) defines initialize; mypy resolves it through nn.Module.__getattr__
        model.initialize(**{"covar_module.lengthscale": state.lengthscale, "likelihood.noise": state.noise,
                            "mean_module.constant": state.mean})  # type: ignore[operator]
    if config.gp_fit != "fixed":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_FIT_SEED)
            _fit(ExactMarginalLogLikelihood(model.likelihood, model),
                 optimizer_kwargs={"options": {"maxiter": WARM_MAXITER}} if warm else None)
        if gp_state is not None:
            gp_state.lengthscale = model.covar_module.lengthscale.item()
            gp_state.noise = model.likelihood.noise.item()
            gp_state.mean = model.mean_module.constant.item()
            gp_state.fitted = True
    return model.eval()


def search_beta(evaluate: Callable[[torch.Tensor], Any], *, maximize: bool, config: SearchConfig,
                generator: torch.Generator, current: float | None, gp_state: GPState | None = None) -> SearchResult:
    """Chooses β for one (layer, timestep); see the module docstring and docs/search.md.

    Args:
        evaluate: maps a float64 CPU tensor [K] of widths to a float64 tensor [K] (or anything
            ``torch.as_tensor`` turns into one) of metric values; non-finite values are ignored.
            Called once for "bo" (K = n_obs) and twice for "grid" (K = n_obs, then n_eval).
        maximize: which way the metric is better (True: larger).
        config: the strategy, candidate counts, window radius, width range and GP fit.
        generator: a CPU torch.Generator that draws the observed widths.
        current: the width returned when no value is finite or the observed curve is flat
            (``is_flat``); None: the caller keeps its width itself, as the A²SG controller does
            on the device.
        gp_state: the site's GP hyperparameters for "warm"/"fixed", updated by a fit.

    Returns:
        A ``SearchResult``: the chosen width, the best observed one and its value, the GP's
        prediction, whether it fell back or the curve was flat, the GP time and the number of
        candidates evaluated.
    """
    check_flag("maximize", maximize)
    if not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig, got {type(config).__name__}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError("generator must be a CPU torch.Generator")
    current = None if current is None else check_real("current", current)
    if gp_state is not None and not isinstance(gp_state, GPState):
        raise TypeError(f"gp_state must be a GPState or None, got {type(gp_state).__name__}")

    lo, hi = config.beta_range
    sign = 1.0 if maximize else -1.0  # internally every metric is maximised
    beta_obs = lo + (hi - lo) * torch.rand(config.n_obs, generator=generator, dtype=torch.float64)
    y_obs = sign * _evaluate(evaluate, beta_obs)
    n_evaluated = config.n_obs
    finite = y_obs.isfinite()  # SGV is +inf where every δ is zero
    beta_dead = beta_obs[~finite]
    beta_obs, y_obs = beta_obs[finite], y_obs[finite]
    if y_obs.numel() == 0:
        return SearchResult(current, current, math.nan, None, True, 0.0, n_evaluated)

    best = int(y_obs.argmax())
    beta_best, y_best = beta_obs[best].item(), y_obs[best].item()
    if is_flat(y_obs):  # no width is better than another: keep the current one rather than a random draw
        return SearchResult(current, beta_best, sign * y_best, None, False, 0.0, n_evaluated, flat=True)
    window = (max(beta_best - config.radius, lo), min(beta_best + config.radius, hi))
    beta_eval = torch.linspace(*window, config.n_eval, dtype=torch.float64)

    if config.strategy == "grid":
        y_eval = sign * _evaluate(evaluate, beta_eval)
        n_evaluated += config.n_eval
        beta_all = torch.cat([beta_obs, beta_eval[y_eval.isfinite()]])
        y_all = torch.cat([y_obs, y_eval[y_eval.isfinite()]])
        best = int(y_all.argmax())  # the first of equals, so an observed one wins a tie
        beta_best, y_best = beta_all[best].item(), y_all[best].item()
        return SearchResult(beta_best, beta_best, sign * y_best, None, False, 0.0, n_evaluated)

    start = time.perf_counter()
    with _one_thread():
        try:
            model = _fit_gp(beta_obs, y_obs, config, gp_state)
        except ModelFittingError:  # every attempt failed: keep the best draw rather than stop training
            return SearchResult(beta_best, beta_best, sign * y_best, None, True, time.perf_counter() - start,
                                n_evaluated)
        with torch.no_grad(), warnings.catch_warnings():
            # Near-duplicate draws give tiny negative posterior variances, which gpytorch clamps and
            # warns about once per search; the clamp is the right answer, the warning is noise.
            warnings.simplefilter("ignore", NumericalWarning)
            # best_f on the metric's own scale: the posterior LogEI sees is un-standardised
            log_ei = LogExpectedImprovement(model, best_f=y_best)(beta_eval.view(-1, 1, 1))
            beta_star = beta_eval[int(log_ei.argmax())].item()
            mean_star, mean_best = model.posterior(torch.tensor([[beta_star], [beta_best]], dtype=torch.float64)).mean
    # Rejected too if a non-finite observation lies between beta_best and beta_star: the GP has no
    # data there, and past it the metric is undefined (SGV = +inf: every δ zero, no gradient).
    crosses_dead = bool(((beta_dead - beta_best) * (beta_dead - beta_star) <= 0).any())
    # Written so that a NaN prediction falls back too (values ~1e155 overflow the GP's standardisation)
    fell_back = not mean_star.item() >= y_best or crosses_dead
    beta, mean = (beta_best, mean_best) if fell_back else (beta_star, mean_star)
    predicted = sign * mean.item() if math.isfinite(mean.item()) else None
    gp_seconds = time.perf_counter() - start
    return SearchResult(beta, beta_best, sign * y_best, predicted, fell_back, gp_seconds, n_evaluated)
