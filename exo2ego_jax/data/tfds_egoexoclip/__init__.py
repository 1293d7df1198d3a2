"""tensorflow-datasets builder ``ego_exo_clip`` (Ego-ExoClip pairs as ArrayRecord shards).

Importing this package registers the builder with tfds (``tfds.builder("ego_exo_clip/atomic")``).
``builder.EgoExoClip`` / ``builder.build`` write; ``reader`` reads without TensorFlow;
``features`` holds the schema and the record <-> example conversion.
"""
from exo2ego_jax.data.tfds_egoexoclip.builder import EgoExoClip, EgoExoClipConfig, build, config_name

__all__ = ["EgoExoClip", "EgoExoClipConfig", "build", "config_name"]
