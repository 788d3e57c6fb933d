"""The YAML presets and training recipes, installed as the package `reelmill_configs`.

`configs/<job>/NAME.yaml` in the source tree; `curation.config.resolve_preset` finds them through
importlib.resources, so a wheel install reads them from any working directory.
"""
