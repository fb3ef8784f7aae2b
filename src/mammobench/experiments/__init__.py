"""Orchestration above training and evaluation: compare models on one split (:mod:`.compare`), k-fold
cross-validation (:mod:`.crossval`), and ablation studies over repeated cross-validation through Optuna
(:mod:`.ablate`, :mod:`.study`, :mod:`.stats`, :mod:`.report`)."""
