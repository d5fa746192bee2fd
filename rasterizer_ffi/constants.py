"""Numerical constants of the rasterizer.

These mirror ``csrc/gaussian.h`` (the header shared by the CPU and CUDA kernels); a test parses the
header and checks that both agree, so the pure-XLA path and the reference use the same numbers.
"""

TILE_SIZE = 16  # pixels per tile side
ALPHA_MIN = 1.0 / 255.0  # a Gaussian contributes to a pixel only if alpha >= ALPHA_MIN
ALPHA_MAX = 0.99  # alpha is clamped to at most this, in forward and backward alike
T_MIN = 1e-4  # stop before a Gaussian that would bring the transmittance below this
COV_BLUR = 0.3  # added to the diagonal of every 2D covariance (pixels^2)
FRUSTUM_CLAMP = 1.3  # x/z, y/z clamped to this times the half field of view in the Jacobian
MIN_DET = 1e-12  # 2D covariances with a determinant at or below this are dropped as singular
DEFAULT_NEAR = 0.01
