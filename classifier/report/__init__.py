"""Reports: figures (``plots``), the evaluation report folder (``writer``), run comparison tables (``compare``).

Import the submodule you need; this package imports nothing itself, so ``compare`` works without
loading matplotlib.
"""
