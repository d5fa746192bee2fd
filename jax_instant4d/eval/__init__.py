"""jax_instant4d.eval: metrics and the evaluation run (``instant4d eval``).

* :mod:`.metrics` — PSNR, SSIM (Gaussian window), LPIPS / identity wrappers;
* :mod:`.expression` — the expression regressor (our AED stand-in on ``synthetic_heads``);
* :mod:`.consistency` — reprojection consistency of rendered views (our MEt3R stand-in);
* :mod:`.groundtruth` — synthetic heads rendered straight from their parameters;
* :mod:`.run` — :func:`evaluate`, self- and cross-reenactment on a split, JSON and markdown;
* :mod:`.paper` — the paper's Table 1 and the markdown report.

Imported lazily: ``from jax_instant4d.eval import evaluate`` loads the run module on first use.
"""


def __getattr__(name):
    if name == "evaluate":
        from jax_instant4d.eval.run import evaluate

        return evaluate
    raise AttributeError(f"module 'jax_instant4d.eval' has no attribute {name!r}")
