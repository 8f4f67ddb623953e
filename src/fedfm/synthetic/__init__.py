"""Foundation-model synthetic data: label-conditioned generation, quality filters, a
contamination check and the ways a federation uses the result (see ``docs/synthetic.md``)."""

from fedfm.synthetic.dataset import SyntheticSet, read_set
from fedfm.synthetic.mix import MODES, with_synthetic

__all__ = ["MODES", "SyntheticSet", "read_set", "with_synthetic"]
