"""The paper's Theorems 1 and 2 (A1, A2) and Sec. A.6, checked numerically by quadrature.

Setting (Thm. 1/2): threshold theta, window [a, b] = [theta - beta, theta + beta], L = b - a = 2 beta,
membrane u ~ N(mu, sigma^2) with mu < a, kappa = a - mu. The CV of a surrogate f is that of the
random variable f(u):

    CV[f] = sqrt(E[f^2] - E[f]^2) / E[f],   E[f^k] = integral_a^b f(u)^k p(u) du

(f = 0 outside the window; p the Gaussian density, or the paper's linear approximation where said).
CV is scale-invariant, so the area constraint does not affect it. Integrals are adaptive Gauss-Kronrod
(scipy.integrate.quad, relative tolerance 1e-12) split at every kink: no sampling noise. TRI, BOX and
ASY_UNIT (the paper's unit-area ramp of Thm. A2) come from ``a2sg_triton.surrogate_grad``.

What we find (the assertions below hold these facts; none is weakened to make a claim pass):

- Theorem 1 is false as stated. Among symmetric, non-negative surrogates with f(a) = f(b) = 0 the
  triangle beats the more peaked ones (f_p = 1 - |d/beta|^p with p < 1, a raised cosine), but
  flatter ones (p > 1, trapezoids with zero ends) have a lower CV than the triangle for every
  (mu, sigma, beta) tried. By Cauchy-Schwarz, E[f]^2 <= E[f^2] P(a < u < b), so BOX has the lowest
  CV of all non-negative f on the window, and zero-ended trapezoids with steepening sides approach
  it: the infimum over the admissible set is BOX's CV and no admissible f attains it. (The proof in
  Thm. A1 minimises a Rayleigh quotient int g^2 p / (int g p)^2, whose minimiser is a constant g,
  not a linear one; it also folds p onto [a, m] as if p were symmetric.)
- Theorem 2 fails for the exact Gaussian: CV(ASY_UNIT) >= CV(TRI) at every configuration scanned,
  whether or not L kappa > sigma^2, strictly wherever the upper half of the window carries
  probability (from 2e-7 to 9% larger on the grid); ties to rounding only where p has vanished
  before theta.
  Under the paper's own linear approximation p(u) ~ A - B (u - a) (A = p(a), B = -p'(a)), with
  z = L kappa / sigma^2, the exact moments give CV_asy < CV_tri iff z > 6/5 (for z < 4/3), and E[f_asy^2] <= 0
  for z >= 4/3 (the linear "density" is negative on part of the window as soon as z > 1). So the
  inequality holds only for 6/5 < z < 4/3, reverses at z <= 1 (e.g. z = 0.5, 1.0) and also at
  1 < z <= 6/5, where the theorem's condition L kappa > sigma^2 holds. (The proof's E[f_tri] and
  E[f_tri^2] integrate the tent's second half against the first half's weight and drop a factor 2.)
- Sec. A.6: the sup-norm bound of Eq. A9 is at least 4x (so >= 2x) larger for TRI than for BOX, as
  the paper argues; pointwise, TRI's f^2 term is >= 2x BOX's only within |u - theta| <=
  beta (1 - 1/sqrt 2); averaged over Gaussian u, the f^2 terms' ratio is >= 2 only when u
  concentrates near theta (tends to 4), is 4/3 for broad u, and is below 1 in Thm. 1/2's setting
  mu < a (0.456 at mu = a - beta/2, sigma = beta/2), where only TRI's f' term (dL/dH != 0) can lift
  it above 2. So the inequality |d2L/dw2|_TRI >= 2 |d2L/dw2|_BOX holds for the bounds, not in general.
"""

import math

import pytest
import torch
from scipy import integrate

import a2sg_triton

THETA = 1.0


def gaussian(mu, sigma):
    return lambda u: math.exp(-0.5 * ((u - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def linear_gaussian(mu, sigma, a):
    """The paper's first-order Taylor expansion of the Gaussian density at u = a (Thm. A2's proof)."""
    A, kappa = gaussian(mu, sigma)(a), a - mu
    B = kappa / sigma**2 * A
    return lambda u: A - B * (u - a)


def integral(g, a, b, breaks=()):
    """integral_a^b g(u) du, split at the kinks ``breaks``."""
    edges = [a, *sorted(x for x in breaks if a < x < b), b]
    return sum(integrate.quad(g, lo, hi, epsabs=0, epsrel=1e-12, limit=200)[0] for lo, hi in zip(edges, edges[1:]))


def cv(f, weight, beta, breaks=()):
    """CV of f(u) with E[f^k] = integral over the window of f^k times ``weight`` (see the module docstring)."""
    a, b = THETA - beta, THETA + beta
    m1 = integral(lambda u: f(u) * weight(u), a, b, (THETA, *breaks))
    m2 = integral(lambda u: f(u) ** 2 * weight(u), a, b, (THETA, *breaks))
    return math.sqrt(m2 - m1 * m1) / m1


def library(name, beta):
    """The library's surrogate f(u; beta) at v_th = THETA as a scalar function."""
    return lambda u: float(a2sg_triton.surrogate_grad(torch.tensor(u, dtype=torch.float64), beta, name, v_th=THETA))


def library_derivative(name, beta):
    """f'(u) of the library's surrogate by autograd: the a.e. derivative (BOX: 0 inside and outside its window)."""
    def df(u):
        u = torch.tensor(u, dtype=torch.float64, requires_grad=True)
        f = a2sg_triton.surrogate_grad(u, beta, name, v_th=THETA)
        return float(torch.autograd.grad(f, u)[0]) if f.requires_grad else 0.0  # BOX: piecewise constant
    return df


# -- Theorem 1 ----------------------------------------------------------------------------------

# (mu, sigma, beta) with mu < a = THETA - beta
THM1_CASES = [(THETA - beta - kappa, sigma, beta) for beta in (0.2, 0.5, 1.0) for kappa in (0.05, 0.5, 1.5)
              for sigma in (0.3, 1.0)]


def power_tent(p, beta):
    """1 - |d/beta|^p on the window: p = 1 is the triangle, p < 1 more peaked, p > 1 flatter."""
    return lambda u: max(1 - abs((u - THETA) / beta) ** p, 0.0)


def trapezoid(ramp, beta):
    """Zero at both ends, linear ramps of width ramp*beta, flat top between (a tent with a flat top)."""
    return lambda u: min(1.0, max(beta - abs(u - THETA), 0.0) / (ramp * beta))


def raised_cosine(beta):
    return lambda u: 1 + math.cos(math.pi * (u - THETA) / beta) if abs(u - THETA) < beta else 0.0


def competitors(beta):
    """name -> (f, kinks): symmetric, non-negative, zero at a and b; "peaked" ones first, then "flat" ones."""
    flat_top = lambda ramp: (THETA - (1 - ramp) * beta, THETA + (1 - ramp) * beta)  # noqa: E731
    return {
        "p=0.5": (power_tent(0.5, beta), ()), "p=0.75": (power_tent(0.75, beta), ()),
        "raised cosine": (raised_cosine(beta), ()),
        "p=1.5": (power_tent(1.5, beta), ()), "p=2": (power_tent(2, beta), ()), "p=4": (power_tent(4, beta), ()),
        "trapezoid ramp 0.5": (trapezoid(0.5, beta), flat_top(0.5)),
        "trapezoid ramp 0.1": (trapezoid(0.1, beta), flat_top(0.1)),
    }


PEAKED = ("p=0.5", "p=0.75", "raised cosine")
FLAT = ("p=1.5", "p=2", "p=4", "trapezoid ramp 0.5", "trapezoid ramp 0.1")


@pytest.mark.parametrize("mu, sigma, beta", THM1_CASES)
def test_theorem1_triangle_beats_peaked_but_not_flat_symmetric_surrogates(mu, sigma, beta):
    """Thm. 1 claims the triangle minimises the CV among symmetric admissible f. It does beat the more
    peaked competitors, but every flatter one (p > 1, zero-ended trapezoids) has a lower CV: a
    counterexample to the theorem at every (mu, sigma, beta) here."""
    p = gaussian(mu, sigma)
    cv_tri = cv(library("tri", beta), p, beta)
    assert cv(lambda u: min(u - (THETA - beta), THETA + beta - u), p, beta) == pytest.approx(cv_tri, rel=1e-9)
    cvs = {name: cv(f, p, beta, kinks) for name, (f, kinks) in competitors(beta).items()}
    for name in PEAKED:
        assert cv_tri < cvs[name], f"{name}: CV {cvs[name]:.6g} <= triangle's {cv_tri:.6g}"
    for name in FLAT:
        assert cvs[name] < cv_tri, f"{name}: CV {cvs[name]:.6g} >= triangle's {cv_tri:.6g}"


@pytest.mark.parametrize("mu, sigma, beta", THM1_CASES)
def test_theorem1_infimum_is_box_and_not_attained(mu, sigma, beta):
    """BOX (which violates f(a) = f(b) = 0) has the lowest CV of any non-negative f on the window
    (Cauchy-Schwarz): CV_box^2 = 1/P(a < u < b) - 1. Zero-ended trapezoids approach it as their
    ramps steepen, so the admissible set has no CV minimiser."""
    p = gaussian(mu, sigma)
    cv_box = cv(library("box", beta), p, beta)
    window = integral(p, THETA - beta, THETA + beta)
    assert cv_box == pytest.approx(math.sqrt(1 / window - 1), rel=1e-9)
    gaps = []
    for ramp in (0.5, 0.1, 0.02, 0.004, 0.0008):
        f = trapezoid(ramp, beta)
        gaps.append(cv(f, p, beta, (THETA - (1 - ramp) * beta, THETA + (1 - ramp) * beta)) - cv_box)
    assert all(gap > 0 for gap in gaps) and gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.01 * gaps[0]
    for f, kinks in competitors(beta).values():
        assert cv_box < cv(f, p, beta, kinks)


# -- Theorem 2 ----------------------------------------------------------------------------------


def z_of(mu, sigma, beta):
    """L kappa / sigma^2: Thm. 2's condition is z > 1."""
    return 2 * beta * (THETA - beta - mu) / sigma**2


# (mu, sigma, beta) with mu < a: both sides of L kappa = sigma^2, the upper half-window carrying probability.
THM2_GRID = [(THETA - beta - kappa, sigma, beta) for beta in (0.25, 0.5, 1.0) for kappa in (0.1, 0.5, 1.0)
             for sigma in (0.25, 0.5, 1.0) if kappa / sigma <= 2]


@pytest.mark.parametrize("mu, sigma, beta", THM2_GRID)
def test_theorem2_fails_for_the_exact_gaussian(mu, sigma, beta):
    """Thm. 2 claims CV(ASY) < CV(TRI) when L kappa > sigma^2. For the exact Gaussian the reverse
    holds at every grid point, on both sides of L kappa = sigma^2 (this grid has z from 0.05 to 16):
    CV_asy exceeds CV_tri by 2e-7 (relative; z = 16, little probability above theta) up to 9%."""
    p = gaussian(mu, sigma)
    cv_asy, cv_tri = cv(library("asy_unit", beta), p, beta), cv(library("tri", beta), p, beta)
    assert cv_asy > cv_tri * (1 + 1e-9), f"z = {z_of(mu, sigma, beta):.3g}: CV_asy {cv_asy:.6g}, CV_tri {cv_tri:.6g}"


def test_theorem2_grid_covers_both_sides_of_the_condition():
    z = [z_of(*case) for case in THM2_GRID]
    assert min(z) < 0.1 and max(z) > 10 and sum(v > 1 for v in z) >= 8 and sum(v <= 1 for v in z) >= 8


def linear_model_case(z, sigma=1.0, beta=0.25):
    """(mu, sigma, beta) with L kappa / sigma^2 = z."""
    return THETA - beta - z * sigma**2 / (2 * beta), sigma, beta


@pytest.mark.parametrize("z, asy_lower", [
    (0.5, False),   # L kappa <= sigma^2: reversed
    (1.0, False),   # L kappa = sigma^2: reversed
    (1.1, False),   # the theorem's condition holds, its conclusion does not (threshold is 6/5)
    (1.19, False),
    (1.21, True),   # 6/5 < z < 4/3: the claimed inequality
    (1.25, True),
    (1.3, True),
])
def test_theorem2_under_the_papers_linear_approximation(z, asy_lower):
    """With p replaced by its tangent at a (the proof's model), CV_asy < CV_tri exactly when
    6/5 < z < 4/3 (z = L kappa / sigma^2): the exact moments give (CV_asy/CV_tri)^2 - 1 of the sign
    of (1 - 3z/4)(1 - z/2) - (1 - 2z/3)^2 = z (6 - 5z) / 72 (the -1 of CV^2 aside)."""
    mu, sigma, beta = linear_model_case(z)
    p = linear_gaussian(mu, sigma, THETA - beta)
    cv_asy, cv_tri = cv(library("asy_unit", beta), p, beta), cv(library("tri", beta), p, beta)
    assert (cv_asy < cv_tri) == asy_lower, f"z = {z}: CV_asy {cv_asy:.6g}, CV_tri {cv_tri:.6g}"


def test_linear_approximation_breaks_down_at_four_thirds():
    """Under the linear model, E[f_asy^2] is proportional to 1/3 - z/4: negative past z = 4/3, where
    the CV is undefined; the linear weight itself is negative at b as soon as z > 1."""
    for z, sign in ((1.3, 1), (1.34, -1)):
        mu, sigma, beta = linear_model_case(z)
        p = linear_gaussian(mu, sigma, THETA - beta)
        asy = library("asy_unit", beta)
        assert math.copysign(1, integral(lambda u: asy(u) ** 2 * p(u), THETA - beta, THETA + beta)) == sign
        assert (p(THETA + beta) < 0) == (z > 1)


# -- Sec. A.6: TRI's curvature against BOX's ----------------------------------------------------

A6_BETAS = (0.2, 0.5, 1.0)


@pytest.mark.parametrize("beta", A6_BETAS)
def test_a6_sup_norm_bound_of_tri_is_at_least_twice_box(beta):
    """The paper's reading of Eq. A9, d2L/dw2 = (d2L/dH2) (f x)^2 + (dL/dH) f' x^2, through sup-norms:
    the bound (d2L/dH2) ||f||^2 x^2 + |dL/dH| ||f'|| x^2 is >= 4x larger for TRI than for BOX
    (||f_tri|| = 1/beta = 2 ||f_box||; f'_box = 0 a.e. while int |f'_tri| = 2/beta)."""
    tri, box = library("tri", beta), library("box", beta)
    dtri, dbox = library_derivative("tri", beta), library_derivative("box", beta)
    grid = [THETA + beta * (k / 1000 - 1) for k in range(1, 2000)]  # the open window, theta included
    sup_tri, sup_box = max(map(tri, grid)), max(map(box, grid))
    assert sup_tri == pytest.approx(1 / beta, rel=1e-12) and sup_box == pytest.approx(1 / (2 * beta), rel=1e-12)
    sup_dtri = max(abs(dtri(u)) for u in grid)
    assert sup_dtri == pytest.approx(1 / beta**2, rel=1e-12) and max(abs(dbox(u)) for u in grid) == 0
    assert integral(lambda u: abs(dtri(u)), THETA - beta, THETA + beta, (THETA,)) == pytest.approx(2 / beta, rel=1e-9)
    for d2L, dL, x in ((1.0, 0.0, 1.0), (1.0, 1.0, 0.5), (0.1, -3.0, 2.0)):
        bound_tri = d2L * (sup_tri * x) ** 2 + abs(dL) * sup_dtri * x**2
        bound_box = d2L * (sup_box * x) ** 2
        assert bound_tri >= 4 * bound_box * (1 - 1e-12) and bound_box > 0


@pytest.mark.parametrize("beta", A6_BETAS)
def test_a6_pointwise_first_term_only_near_threshold(beta):
    """Pointwise, TRI's (f x)^2 term is >= 2x BOX's exactly where |u - theta| <= beta (1 - 1/sqrt 2)."""
    tri, box = library("tri", beta), library("box", beta)
    edge = beta * (1 - 1 / math.sqrt(2))
    for d in (0.0, 0.5 * edge, 0.99 * edge):
        assert tri(THETA + d) ** 2 >= 2 * box(THETA + d) ** 2 and tri(THETA - d) ** 2 >= 2 * box(THETA - d) ** 2
    for d in (1.01 * edge, 0.5 * beta, 0.9 * beta):
        assert tri(THETA + d) ** 2 < 2 * box(THETA + d) ** 2


def expected_curvature(name, beta, mu, sigma, d2L=1.0, dL=0.0):
    """E_u |(d2L/dH2) f(u)^2 + (dL/dH) f'(u)| (x = 1) for u ~ N(mu, sigma^2): Eq. A9 averaged over the
    membrane potential with constant d2L/dH2 and dL/dH; f' the a.e. derivative (BOX: 0), as Sec. A.6."""
    f, df, p = library(name, beta), library_derivative(name, beta), gaussian(mu, sigma)
    return integral(lambda u: abs(d2L * f(u) ** 2 + dL * df(u)) * p(u), THETA - beta, THETA + beta, (THETA,))


@pytest.mark.parametrize("beta", A6_BETAS)
def test_a6_expected_curvature_ratio_depends_on_where_u_lies(beta):
    """Averaged over Gaussian u, TRI's curvature (first term) is >= 2x BOX's only when u concentrates
    at the threshold: the ratio E[f_tri^2] / E[f_box^2] -> 4 for u ~ N(theta, (0.05 beta)^2), 4/3 for
    broad u, and 0.456 in Thm. 1/2's setting mu = a - beta/2, sigma = beta/2 (there TRI's curvature is
    the smaller). A first-order term, which BOX lacks (f'_box = 0 a.e.), raises that case to 4.4 at
    dL/dH = d2L/dH2 = 1: whether TRI's curvature is 2x BOX's depends on the gradients and on u."""
    def ratio(mu, sigma, dL=0.0):
        return expected_curvature("tri", beta, mu, sigma, dL=dL) / expected_curvature("box", beta, mu, sigma)

    assert 3.5 < ratio(THETA, 0.05 * beta) <= 4
    assert ratio(THETA, 100 * beta) == pytest.approx(4 / 3, rel=1e-3)
    below = THETA - 1.5 * beta, 0.5 * beta
    assert ratio(*below) < 1 and ratio(*below, dL=1.0) > 2
