"""DeNetDM: debiasing by network depth modulation (NeurIPS 2024), as a Hydra experiment framework."""

__version__ = "0.1.0"
