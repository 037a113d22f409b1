"""unlearnkit: machine unlearning for classifiers, language models and diffusion models.

The Python API::

    import unlearnkit
    result = unlearnkit.unlearn(model, method="salun", forget=(xf, yf), retain=(xr, yr), test=(xt, yt))
    metrics = unlearnkit.evaluate(result.model, forget=..., retain=..., test=...)
"""

from unlearnkit.version import __version__

__all__ = ["__version__", "evaluate", "list_methods", "unlearn", "run_config", "tune"]


def __getattr__(name: str):
    # Lazy: keep `import unlearnkit` light (torch and friends load only when used).
    if name in ("unlearn", "evaluate", "run_config", "UnlearnResult"):
        from unlearnkit import api

        return getattr(api, name)
    if name in ("tune", "TuneResult"):
        from unlearnkit import calibration  # not named tune.py: the module would shadow the function

        return getattr(calibration, name)
    if name == "list_methods":
        from unlearnkit.registry import list_methods

        return list_methods
    raise AttributeError(name)
