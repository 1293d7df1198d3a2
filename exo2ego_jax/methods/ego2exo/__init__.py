"""Ego2ExoVLM (on VideoLLaMA3): ego teacher labels, exo student with EAVT probes.

Importing the package imports nothing heavy, so config files can read `config.py` alone.
The trainer's entry is `method.Ego2Exo` (registered in methods/__init__.py as "ego2exo").
"""
