"""The docstring examples of jaxmouse's main names run and print what they say."""

import doctest

import pytest

import jaxmouse


@pytest.mark.parametrize("name", ["score", "load", "fit", "report"])
def test_main_names_are_at_the_top_level_with_examples_that_run(name):
  obj = getattr(jaxmouse, name)
  assert name in jaxmouse.__all__
  tests = doctest.DocTestFinder(recurse=False).find(obj, name=f"jaxmouse.{name}",
                                                     globs={"jaxmouse": jaxmouse})
  examples = [t for t in tests if t.examples]
  assert examples, f"jaxmouse.{name} has no docstring example"
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  for t in examples:
    runner.run(t)
  result = runner.summarize(verbose=False)
  assert result.failed == 0 and result.attempted >= 3, result


def test_license_and_citation_agree_with_pyproject():
  import tomllib
  from pathlib import Path

  root = Path(__file__).resolve().parents[1]
  project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
  assert project["license"] == "MIT"
  assert (root / "LICENSE").read_text().startswith("MIT License\n")
  cff = (root / "CITATION.cff").read_text()
  assert "\nlicense: MIT\n" in cff and f'\nversion: "{project["version"]}"\n' in cff
  assert "arXiv:2505.06886" in cff and "Cadena" in cff


def test_the_quick_config_is_what_its_experiment_says():
  from pathlib import Path

  from jaxmouse.studies import cadena2019

  text = (Path(__file__).resolve().parents[1] / "experiments" / "cadena2019.py").read_text()
  q = cadena2019.QUICK
  n, images = q.simulation["neurons_per_area"], q.simulation["n_images"]
  assert f"{len(q.areas)} areas x {n} neurons, {images:,} images" in text
  assert f"{len(q.layers)} layers" in text
