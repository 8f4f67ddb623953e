"""The update path: one ordered chain of stages between a client's delta and the round's
mean delta (clipping, noise, compression, secure aggregation, norm bounds, robust reduction).

:mod:`fedfm.update.stage` holds the :class:`~fedfm.update.stage.Stage` base, the chain is
:mod:`fedfm.update.chain`, and :mod:`fedfm.update.compat` checks a strategy's capabilities
against the stages a config asks for. This module imports nothing, so stage modules elsewhere
(privacy, compression) can import the base without a cycle.
"""
