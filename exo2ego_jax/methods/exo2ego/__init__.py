"""Exo2Ego (Exo2Ego on VideoLLaMA2): demonstrator / learner stages, F and G mappings, KL + cycle.

Importing the package imports nothing heavy, so config files can read `config.py` alone.
The trainer's entry is `method.Exo2Ego` (registered in methods/__init__.py as "exo2ego").
"""
