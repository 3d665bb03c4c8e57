"""`kcompile.utils`: seeding and small helpers with Keras names."""

from kcompile.random_state import set_random_seed

__all__ = ["set_random_seed"]
