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
