"""DeNetDM: debiasing by network depth modulation (NeurIPS 2024), as a Hydra experiment framework."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`denetdm.load_run` and `denetdm.load_sweep` (denetdm/api.py), imported when first used: `import denetdm`
    stays cheap for the modules that need none of it."""
    if name in ("load_run", "load_sweep"):
        from denetdm import api

        return getattr(api, name)
    raise AttributeError(f"module 'denetdm' has no attribute {name!r}")
