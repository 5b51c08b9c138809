"""The machinery of batch_normalization_study.ipynb: data, models, the stacked engine, statistics, probes, results.

The notebook, the tests and the benchmark import it; the notebook itself keeps the tutorial's two models, the
textbook training loop and BatchNorm written from scratch, and checks the engine against them.
"""
