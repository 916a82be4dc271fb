"""-v and -q on the jaxmouse command: before or after the subcommand, the jaxmouse loggers at
debug, info or warning level while a command runs, and as they were afterwards."""

import logging

import pytest

from jaxmouse import cli


@pytest.mark.parametrize("argv, level, bars", [
    (["run", "cadena2019"], logging.INFO, True),
    (["-v", "run", "cadena2019"], logging.DEBUG, True),
    (["run", "cadena2019", "-v"], logging.DEBUG, True),
    (["-q", "run", "cadena2019"], logging.WARNING, False),
    (["sweep", "--data", "x.npz", "--energy", "--out", "r", "-q"], logging.WARNING, False),
])
def test_verbosity_flags(argv, level, bars):
  args = cli.build_parser().parse_args(argv)
  assert cli.log_level(args) == level and cli.show_progress(args) == bars


def test_messages_go_to_stderr_at_the_chosen_level_and_the_loggers_are_restored(capsys,
                                                                               monkeypatch):
  from jaxmouse.cli import run as run_cli

  def fake(args):
    log = logging.getLogger("jaxmouse.run")
    log.debug("a detail")
    log.info("a stage")
    log.warning("a doubt")

  monkeypatch.setattr(run_cli, "_run", fake)
  logger = logging.getLogger("jaxmouse")
  before = (logger.level, logger.propagate, list(logger.handlers))
  assert cli.main(["-q", "run", "cadena2019"]) == 0
  err = capsys.readouterr().err.splitlines()
  assert err == ["jaxmouse run: warning: a doubt"]
  assert cli.main(["run", "cadena2019", "-v"]) == 0
  assert capsys.readouterr().err.splitlines() == ["a detail", "a stage",
                                                  "jaxmouse run: warning: a doubt"]
  assert (logger.level, logger.propagate, list(logger.handlers)) == before
