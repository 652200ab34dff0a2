"""Reference training apps built on collector: a centralized Lightning trainer and a Flower app."""
