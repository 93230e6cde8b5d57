"""Everything about the package is in pyproject.toml but this: the shipped models (models/, with their
cards) install as the package ``kws_models``, so a non-editable install (the Pi's) has them;
kws_rpc.model.shipped finds them there."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["kws_rpc*", "edge*", "trainers*"]), "kws_models"],
      package_dir={"kws_models": "models"})
