"""Build hook: ship the repository's trained weights inside the package.

``weights/<name>/config.json`` and ``model.safetensors`` are copied to ``visualtok/weights/<name>/``
in the build, so a plain (non-editable) ``pip install .`` can ``visualtok.load("titok_photo128")``
from any directory. Everything else is declared in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHT_FILES = ("config.json", "model.safetensors")


class BuildPyWithWeights(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "weights"
        target = Path(self.build_lib) / "visualtok" / "weights"
        for model_dir in sorted(p for p in source.glob("*") if p.is_dir()):
            if all((model_dir / f).is_file() for f in WEIGHT_FILES):
                (target / model_dir.name).mkdir(parents=True, exist_ok=True)
                for f in WEIGHT_FILES:
                    shutil.copy2(model_dir / f, target / model_dir.name / f)


setup(cmdclass={"build_py": BuildPyWithWeights})
