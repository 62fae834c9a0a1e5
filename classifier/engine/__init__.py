"""Training engine: small loop functions, the optimiser/schedule, callbacks and ``fit``."""
