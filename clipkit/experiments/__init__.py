"""The experiment layer: running notebooks and keeping their results.

Owns the result files (``results``: one xarray Dataset per run, combined per sweep), the
evaluation of a trained model into a documented Dataset (``evaluate``; the 1-D
regression experiment's in ``regression``, the λ → constant one's in ``lambda_path``),
what is measured
after each training epoch (``curves``: the authors' validation score and model selection,
learning curves under attack), the helpers a
parameterised notebook calls (``notebook``), and papermill sweeps (``sweep``: spec,
parameters, kernels, one point, executors, the runner). It may import ``clipkit.core``,
``clipkit.train`` and ``clipkit.analysis``.
"""
