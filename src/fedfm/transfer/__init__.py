"""Transfer from a foundation model to the clients' small models.

- :mod:`fedfm.transfer.features`: frozen FM features of every text (embedded once, cached).
- :mod:`fedfm.transfer.pft`: FedPFT, one-shot per-class Gaussian mixtures of those features.
- :mod:`fedfm.transfer.head`: a classifier head on features, central or by FedAvg.
- :mod:`fedfm.transfer.kd`: the distillation loss (KL at temperature T) and the ensemble.
- :mod:`fedfm.transfer.run_pft`: ``fedfm transfer pft``: FedPFT against its references on a
  config's data and partition, into a run folder.

The round-by-round distillation between the server's FM and the clients' small model is the
``distill`` feature (:mod:`fedfm.features.distill`), built on :mod:`fedfm.transfer.kd`.
"""
