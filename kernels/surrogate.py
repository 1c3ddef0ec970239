import triton
import triton.language as tl

# Surrogate ids; a2sg_triton.surrogate.SURROGATES lists the names in this order.
BOX: tl.constexpr = tl.constexpr(0)
TRI: tl.constexpr = tl.constexpr(1)
ASY: tl.constexpr = tl.constexpr(2)
ASY_UNIT: tl.constexpr = tl.constexpr(3)
ATAN: tl.constexpr = tl.constexpr(4)
SIGMOID: tl.constexpr = tl.constexpr(5)


@triton.jit
def surrogate_grad(d, beta, h, SURROGATE: tl.constexpr):
    """f(u; beta) for d = u - v_th (fp32), beta a scalar width; DESIGN.md 3.2."""
    in_window = tl.abs(d) < beta
    if SURROGATE == BOX:
        f = tl.where(in_window, 0.5 / beta, 0.0)
    elif SURROGATE == TRI:
        f = tl.where(in_window, (beta - tl.abs(d)) / (beta * beta), 0.0)
    elif SURROGATE == ASY:
        f = tl.where(in_window, d * (0.5 / beta) + h, 0.0)
    elif SURROGATE == ASY_UNIT:
        f = tl.where(in_window, (d + beta) / (2.0 * beta * beta), 0.0)
    elif SURROGATE == ATAN:
        z = (3.141592653589793 * 0.5 / beta) * d
        f = (0.5 / beta) / (1.0 + z * z)
    else:  # SIGMOID
        alpha = 2.0 / beta
        sg = tl.sigmoid(alpha * d)
        f = alpha * sg * (1.0 - sg)
    return f
