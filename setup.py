"""Packages for setuptools; all other metadata is in pyproject.toml.

The repository keeps MedViewer's data files in the top-level ``resources/`` folder (built-in models,
icon, demo data). An installed MedViewer carries them as the data-only package ``medviewer._resources``
(``package_dir`` maps it onto ``resources/``; ``package_data`` in pyproject.toml lists the files), where
``medviewer.resources`` finds them with ``importlib.resources``. Its folders are declared as (namespace)
packages too, which is how setuptools wants data folders declared.
"""

from setuptools import find_namespace_packages, find_packages, setup

RESOURCES = ["medviewer._resources"] + [f"medviewer._resources.{p}" for p in find_namespace_packages(where="resources")]

setup(
    packages=find_packages(include=["medviewer", "medviewer.*", "training", "training.*"]) + RESOURCES,
    package_dir={"medviewer._resources": "resources"},
)
