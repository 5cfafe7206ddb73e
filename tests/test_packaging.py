"""Packaging: the resources an installed MedViewer needs travel with it, and the build files agree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, pydicom_test_file

from medviewer import resources
from medviewer.inference import registry

RESOURCES = REPO / "resources"


def _shipped_files() -> list[str]:
    """Every file under resources/{models,icons,demo}, as the wheel must carry it."""
    return sorted(f"medviewer/_resources/{p.relative_to(RESOURCES).as_posix()}"
                  for sub in ("models", "icons", "demo") if (RESOURCES / sub).is_dir()
                  for p in (RESOURCES / sub).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_source_tree_resources():
    assert resources.resources_root() == RESOURCES
    assert resources.icon_path().is_file() and resources.icon_path().suffix == ".svg"
    assert registry.builtin_models_dir() == RESOURCES / "models"
    assert resources.demo_dir() == RESOURCES / "demo"
    assert (resources.builtin_models_dir() / registry.DEFAULT_MODEL_NAME / "model.json").is_file()


def test_make_test_and_ci_agree_with_the_readme():
    """The README's set-up commands exist in the Makefile; CI runs `make test`, the system packages and the wheel."""
    makefile = (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    for target in ("demo", "test", "bundle", "wheel"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make demo" in readme and "make test" in readme
    assert "make test" in ci and "bash .ci/system-packages.sh" in ci and "make wheel" in ci
    assert "--demo --screenshot" in ci


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout (setuptools of the running interpreter, no download)."""
    pytest.importorskip("setuptools", minversion="77")  # pyproject.toml: build-system requires
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("medviewer-*.whl")
    return whl


def test_wheel_carries_models_icon_and_demo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = _shipped_files()
    assert f"medviewer/_resources/models/{registry.DEFAULT_MODEL_NAME}/model.onnx" in shipped
    assert [f for f in shipped if f not in names] == []
    assert "medviewer/resources.py" in names and "medviewer/py.typed" in names


def _base_site_packages() -> list[str]:
    """The site-packages folders of the base interpreter under this venv (what system_site_packages adds)."""
    import sysconfig

    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    return sorted({sysconfig.get_path(k, vars=base) for k in ("purelib", "platlib")})


def _fresh_venv_with_this_environments_dependencies(env_dir: Path) -> Path:
    """A new venv that sees the dependencies installed in *this* environment (the project's .venv, made by
    ``make test``) and nothing of the base Python: no system site packages, and a ``.pth`` file naming this
    environment's site-packages. Such a path is appended after the venv's own site-packages and its own
    ``.pth`` files are not run, so the editable install of this checkout stays invisible and a wheel
    installed into the venv wins. Works offline, whatever the base Python holds (issue 22: with
    ``system_site_packages=True`` the test passed only where the base Python happened to hold platformdirs)."""
    import sysconfig

    venv.EnvBuilder(system_site_packages=False, with_pip=True).create(env_dir)
    ours = sorted({sysconfig.get_path(k) for k in ("purelib", "platlib")})
    assert not {Path(p) for p in ours} & {Path(p) for p in _base_site_packages()}, "run the tests from a venv"
    proc = subprocess.run([env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True)
    (Path(proc.stdout.strip()) / "_project_environment.pth").write_text("\n".join(ours) + "\n")
    return env_dir


@pytest.mark.slow
def test_installed_wheel_finds_its_model_outside_the_source_tree(wheel, tmp_path):
    """Installed (not editable) into a fresh venv and run from elsewhere: the built-in model, the icon and
    ``infer`` without --model come from the install, not from this checkout."""
    env_dir = _fresh_venv_with_this_environments_dependencies(tmp_path / "venv")
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", registry.MODEL_PATH_ENV)}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # an empty user model folder
    env["PYTHONNOUSERSITE"] = "1"  # nor ~/.local
    paths = json.loads(subprocess.run(
        [py, "-c", "import json, sys, medviewer, platformdirs; print(json.dumps([sys.path, medviewer.__file__, "
                   "platformdirs.__file__]))"], capture_output=True, text=True, cwd=tmp_path, env=env,
        check=True).stdout)
    base_sites = {Path(p) for p in _base_site_packages()}
    assert [p for p in paths[0] if p and Path(p) in base_sites] == []  # nothing from the base Python
    assert Path(paths[1]).is_relative_to(env_dir)  # the wheel, not this checkout
    assert Path(paths[2]).is_relative_to(sys.prefix)  # dependencies: this (the project's) environment
    site = subprocess.run([py, "-c", "import medviewer.resources as r; print(r.resources_root()); "
                           "print(r.icon_path().is_file())"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, check=True).stdout.split()
    assert Path(site[0]).is_relative_to(env_dir) and site[1] == "True"

    proc = subprocess.run([py, "-m", "medviewer", "models", "list", "--json"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (model,) = [m for m in json.loads(proc.stdout)["models"] if m["name"] == registry.DEFAULT_MODEL_NAME]
    assert model["default"] and model["source"] == "builtin" and Path(model["path"]).is_relative_to(env_dir)

    out = tmp_path / "infer"
    cr = pydicom_test_file("RG1_UNCR.dcm")
    proc = subprocess.run([py, "-m", "medviewer", "infer", str(cr), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert Path(doc["model"]["path"]).is_relative_to(env_dir)
    assert set(doc["results"][0]["scores"]) == set(doc["labels"])


def _screenshot_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_screenshots", REPO / "tools" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return sys.modules[spec.name]


def test_screenshot_comparison_tolerates_antialiasing_and_catches_a_changed_region(tmp_path):
    """tools/screenshots.py's perceptual comparison on the docs' own demo screenshot: the same image with
    its text re-antialiased (every glyph edge moved by a grey level of 40 %) matches; the same image with a
    panel-sized region changed (a 300x200 px box, 3.75 % of the window) does not; a resized one does not."""
    import cv2
    import numpy as np

    tool = _screenshot_tool()
    ref = cv2.imread(str(tool.DEMO_SCREENSHOT))
    assert ref is not None and ref.shape[:2] == (1000, 1600)
    gray = cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY)
    edges = cv2.dilate(cv2.Canny(gray, 60, 180), np.ones((2, 2), np.uint8)) > 0
    rerendered = ref.astype(np.int16)
    rerendered[edges] = (rerendered[edges] * 0.6 + 0.4 * cv2.blur(ref, (3, 3))[edges]).astype(np.int16)
    cv2.imwrite(str(tmp_path / "aa.png"), rerendered.clip(0, 255).astype(np.uint8))
    changed = ref.copy()
    changed[600:800, 1280:1580] = (40, 140, 230)  # an orange box where there was none
    cv2.imwrite(str(tmp_path / "box.png"), changed)
    cv2.imwrite(str(tmp_path / "small.png"), cv2.resize(ref, (1400, 875)))
    assert tool.compare(tool.DEMO_SCREENSHOT, tmp_path / "aa.png").matches
    box = tool.compare(tool.DEMO_SCREENSHOT, tmp_path / "box.png", diff_out=tmp_path / "diff.png")
    assert not box.matches and 0.02 < box.changed < 0.05, box.describe()
    assert cv2.imread(str(tmp_path / "diff.png")).shape == ref.shape
    assert not tool.compare(tool.DEMO_SCREENSHOT, tmp_path / "small.png").matches


def test_docs_demo_screenshot_shows_what_the_demo_shows_now():
    """docs/screenshots/demo.png (the README's hero image) matches a fresh ``medviewer --demo --screenshot``
    perceptually; when the demo changes, ``make screenshots`` regenerates it (CI runs the same check)."""
    fc = subprocess.run(["fc-match", "-f", "%{family}", "sans-serif"], capture_output=True, text=True) \
        if shutil.which("fc-match") else None
    family = fc.stdout.split(",")[0] if fc is not None and fc.returncode == 0 else "unknown (no fc-match)"
    if family != "DejaVu Sans":
        pytest.skip(f"the docs' screenshots use DejaVu Sans; this machine's sans-serif font is {family} "
                    f"(Debian/Ubuntu: apt-get install fonts-dejavu-core)")
    tool = _screenshot_tool()
    result = tool.check(diff_out=REPO / "build" / "screenshot-diff.png")
    assert result.matches, (f"docs/screenshots/demo.png no longer shows what `medviewer --demo --screenshot` "
                            f"shows ({result.describe()}; changed pixels in red: build/screenshot-diff.png): "
                            f"run `make screenshots` and commit docs/screenshots")


def test_cli_reference_in_the_docs_is_what_help_prints():
    """docs/cli-reference.md is every parser's --help, word for word (tools/cli_reference.py; `make docs`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "tools" / "cli_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    made_with = tool.generated_with()
    if made_with != tool.PYTHON:  # argparse's layout changes between Python versions (e.g. 3.13)
        pytest.skip(f"docs/cli-reference.md was generated with Python {made_with}; this is {tool.PYTHON}")
    old = os.environ.get("COLUMNS")
    try:
        text = tool.render()
    finally:
        os.environ.pop("COLUMNS", None) if old is None else os.environ.__setitem__("COLUMNS", old)
    assert "### `medviewer infer`" in text and "### `medviewer-train fit`" in text
    assert "#### `medviewer models validate`" in text
    current = tool.OUT.read_text(encoding="utf-8")
    assert current == text, "docs/cli-reference.md no longer matches --help: run `make docs` and commit it"
