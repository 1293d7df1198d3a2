"""Reading a Hugging Face JSON config (config.json, preprocessor_config.json) from where users keep it."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any


def read_json_config(src: str | os.PathLike | Mapping[str, Any], filename: str = "config.json"
                     ) -> tuple[dict[str, Any], str]:
    """(the config dict, where it came from) for a checkpoint directory, a JSON file or a dict.

    A directory is read at ``filename``; ``where`` names the file (or "<dict>") for error messages.
    """
    if isinstance(src, Mapping):
        return dict(src), "<dict>"
    where = os.fspath(src)
    path = os.path.join(where, filename) if os.path.isdir(where) else where
    with open(path) as fh:
        return json.load(fh), path
