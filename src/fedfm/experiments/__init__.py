"""Reproducible experiments behind fedfm's claims: ``fedfm exp NAME [--quick]``."""

from fedfm.experiments import (  # noqa: F401  (registers them)
    e1_federation,
    e2_init,
    e3_adapters,
    e4_synth,
    e5_privacy,
    e6_lora,
    e7_instruct,
    e8_weak,
)
from fedfm.experiments.base import EXPERIMENTS, Arm, ArmResult, Experiment
from fedfm.experiments.runner import run_experiment

__all__ = ["EXPERIMENTS", "Arm", "ArmResult", "Experiment", "run_experiment"]
