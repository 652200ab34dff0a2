"""Defaults shared by the trainers and their CLI (kept free of torch and lightning so that
``runwatch --help`` starts fast)."""

DEFAULT_SEED = 42
DEFAULT_EXPERIMENT = "centralized"
