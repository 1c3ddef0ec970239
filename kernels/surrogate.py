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
    """f(u; beta) for d = u - v_th (fp32); docs/math.md.

    beta is a scalar, or a [BLOCK_K, 1] column against d of shape [1, BLOCK_N] (the candidate
    statistics). Divisions happen on beta only, so per-element work is multiplications.
    """
    half_inv_beta = 0.5 / beta
    in_window = tl.abs(d) < beta
    if SURROGATE == BOX:
        f = tl.where(in_window, half_inv_beta, 0.0)
    elif SURROGATE == TRI:
        f = tl.where(in_window, (beta - tl.abs(d)) * (1.0 / (beta * beta)), 0.0)
    elif SURROGATE == ASY:
        f = tl.where(in_window, d * half_inv_beta + h, 0.0)
    elif SURROGATE == ASY_UNIT:
        f = tl.where(in_window, (d + beta) * (half_inv_beta / beta), 0.0)
    elif SURROGATE == ATAN:
        z = (3.141592653589793 * half_inv_beta) * d
        f = half_inv_beta / (1.0 + z * z)
    else:  # SIGMOID: sg = sigmoid(alpha d) = 1 / (1 + 2^(-alpha log2(e) d)), f = alpha sg (1 - sg)
        alpha = 2.0 / beta
        sg = 1.0 / (1.0 + tl.exp2((-1.4426950408889634 * alpha) * d))
        alpha_sg = alpha * sg
        f = alpha_sg - alpha_sg * sg
    return f
