"""mammobench: train, compare, explain and serve breast-lesion classifiers for mammograms.

The package is layered, each layer importing only the ones before it::

    data -> models -> training -> evaluation -> experiments (compare, crossval, ablate) / serving

and :mod:`mammobench.cli` is a thin command line over plain functions a notebook can call
(:func:`mammobench.data.prepare.prepare`, :func:`mammobench.training.fit.fit`,
:func:`mammobench.evaluation.evaluate.evaluate`, :func:`mammobench.experiments.ablate.ablate`,
:class:`mammobench.serving.predictor.Predictor`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
