"""Pure ``@triton.jit`` code; installed as ``a2sg_triton.kernels``."""
