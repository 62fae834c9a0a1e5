"""Predictions a user can trust: calibrated probabilities, an "unknown" answer, and heat maps.

- ``calibrate``: temperature scaling fitted on the validation split (``fit_temperature``);
- ``ood``: out-of-distribution scores (maximum softmax probability, energy, Mahalanobis and k-nearest-neighbour
  distance on the penultimate features), the rejection threshold kept on validation, AUROC / FPR at 95% TPR;
- ``explain``: Grad-CAM heat maps (the ``grad-cam`` package) and plain CAM for global-pool + linear heads;
- ``fitting``: the post-training step that fits the first two on a model's validation split and stores them.
"""
