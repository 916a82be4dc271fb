"""Config files and --set overrides: checked against the config dataclasses, unknown keys refused
with the valid ones, values converted to the fields' types, a printed config read back as itself."""

import pytest

from jaxmouse import configs
from jaxmouse.studies import cadena2019


def test_overrides_reach_into_tables_and_convert_types():
  c = cadena2019.resolve_config("quick", sets=[
      "fit.max_steps=2000", "fit.lr=1e-3", "layers=conv2_2,conv3_3", "readouts=ridge",
      "readout_layers={}", "grids.ridge.alpha=[0.1, 1]", "areas=none", "energy=false",
      "area_ranks.PM=2", "trained=weights/mine", "image_shape=[36, 64]"])
  q = cadena2019.QUICK
  assert c.fit == {**q.fit, "max_steps": 2000, "lr": 1e-3}  # the other fit keys stay
  assert c.layers == ("conv2_2", "conv3_3") and c.readouts == ("ridge",)
  assert c.readout_layers == {}
  assert c.grids == {**q.grids, "ridge": {"alpha": (0.1, 1.0)}}
  assert c.areas is None and c.energy is False and c.trained == "weights/mine"
  assert c.area_ranks == {**q.area_ranks, "PM": 2.0}
  assert isinstance(c.fit["max_steps"], int) and isinstance(c.grids["ridge"]["alpha"][0], float)


@pytest.mark.parametrize("item, message", [
    ("fit.max_step=2000", "unknown config key 'fit.max_step'; valid keys under 'fit': loss, "
     "output, lr, batch_size, max_steps"),
    ("max_steps=2000", "unknown config key 'max_steps'; valid keys: name, areas"),
    ("simulation.n_image=10", "valid keys under 'simulation': seed, areas, neurons_per_area"),
    ("per_format.allen.readout=ridge", "valid keys under per_format.allen: name, areas"),
    ("fit.max_steps=many", "config key 'fit.max_steps': expected an integer, got 'many'"),
    ("energy=maybe", "config key 'energy': expected true or false, got 'maybe'"),
    ("image_shape=[1,2,3]", "config key 'image_shape': expected 2 values"),
    ("layers.first=conv1_1", "config key 'layers.first': layers is not a table"),
    ("grids.factorized.alpha=[1.0]", "the factorized readout has ['l1', 'smooth', 'l1_mask']"),
    ("fit.lr=-1", "FitConfig.lr must be positive or None"),
    ("fit.max_steps", "--set expects KEY=VALUE"),
])
def test_bad_keys_and_values_are_refused_naming_them(item, message):
  with pytest.raises(ValueError) as e:
    cadena2019.resolve_config("quick", sets=[item])
  assert message in str(e.value)
  assert str(e.value).startswith("--set")


def test_unknown_key_on_the_command_line_is_one_line_and_nothing_runs(tmp_path, capsys):
  from jaxmouse.cli import main

  out = tmp_path / "run"
  assert main(["run", "cadena2019", "--set", "fit.max_step=2000", "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1
  assert err[0].startswith("jaxmouse run: error: --set: unknown config key 'fit.max_step'")
  assert "max_steps" in err[0] and "patience" in err[0]
  assert not out.exists()


def test_a_config_file_changes_its_base_and_keeps_the_rest(tmp_path):
  path = tmp_path / "deeper.toml"
  path.write_text('base = "quick"\nlayers = ["conv3_3", "conv4_3", "conv5_3"]\n'
                  'readouts = ["factorized"]\nreadout_layers = {}\n\n'
                  '[fit]\nmax_steps = 2000\n\n[grids.factorized]\nl1 = [0.5]\n')
  c = cadena2019.resolve_config(str(path), sets=["fit.patience=7"])
  q = cadena2019.QUICK
  assert c.name == "deeper"
  assert c.layers == ("conv3_3", "conv4_3", "conv5_3") and c.readouts == ("factorized",)
  assert c.fit == {**q.fit, "max_steps": 2000, "patience": 7}
  assert c.grids["factorized"] == {"l1": (0.5,), "smooth": (0.01,)}
  assert c.simulation == q.simulation and c.random_seeds == q.random_seeds

  bad = tmp_path / "bad.toml"
  bad.write_text('[fit]\nmax_step = 10\n')
  with pytest.raises(ValueError, match=r"bad\.toml: unknown config key 'fit\.max_step'"):
    cadena2019.resolve_config(str(bad))
  broken = tmp_path / "broken.toml"
  broken.write_text('[fit\nmax_steps = 10\n')
  with pytest.raises(ValueError, match=r"broken\.toml: not a valid TOML config .*line 1"):
    cadena2019.resolve_config(str(broken))
  other = tmp_path / "other.toml"
  other.write_text('base = "medium"\n')
  with pytest.raises(ValueError, match="base 'medium' is not a config; available: quick, full, "
                     "none"):
    cadena2019.resolve_config(str(other))
  with pytest.raises(FileNotFoundError, match="missing.toml"):
    cadena2019.resolve_config(str(tmp_path / "missing.toml"))
  with pytest.raises(ValueError, match="unknown cadena2019 config 'medium'"):
    cadena2019.resolve_config("medium")


@pytest.mark.parametrize("name", ["quick", "full"])
def test_printed_config_reads_back_as_the_same_config(tmp_path, name):
  for config in (cadena2019.CONFIGS[name], cadena2019.resolve_config(name)):
    path = tmp_path / f"{name}.toml"
    path.write_text(configs.to_toml(config, header="a header"))
    back = configs.from_toml(path, configs=cadena2019.CONFIGS, schema=cadena2019.config_schema(),
                             default_base="quick")
    assert back == config
    assert back.to_dict() == config.to_dict()


def test_print_config_shows_the_resolved_config(capsys):
  from jaxmouse.cli import main

  assert main(["run", "cadena2019", "--config", "quick", "--set", "fit.max_steps=2000",
               "--areas", "V1,LM", "--print-config"]) == 0
  text = capsys.readouterr().out
  assert text.startswith("# jaxmouse run cadena2019: the config 'quick' resolved for the "
                         "simulated mouse with --set fit.max_steps=2000")
  import tomllib

  doc = tomllib.loads(text)
  assert doc["fit"]["max_steps"] == 2000 and doc["areas"] == ["V1", "LM"]
  assert doc["base"] == "none" and doc["name"] == "quick"


def test_the_per_format_changes_come_before_set():
  allen = cadena2019.QUICK.per_format["allen"]
  assert cadena2019.QUICK.for_format("allen").readouts == allen["readouts"] == ("ridge",)
  # --set wins over the data format's changes (they are applied first).
  changes = configs.parse_sets(["readouts=ridge,factorized", "readout_layers.factorized=conv3_3"])
  early = cadena2019.QUICK.for_format("allen")
  after = configs.apply(early, changes, cadena2019.config_schema())
  assert after.readouts == ("ridge", "factorized") and after.image_shape == (36, 46)
  assert after.readout_layers == {"factorized": ("conv3_3",)}


def test_parse_value_reads_toml_values_and_falls_back_to_text():
  assert configs.parse_value("2000") == 2000
  assert configs.parse_value("1e-3") == 1e-3
  assert configs.parse_value("true") is True
  assert configs.parse_value('["a", "b"]') == ["a", "b"]
  assert configs.parse_value("weights/mine") == "weights/mine"
  assert configs.parse_value("conv2_2,conv3_3") == "conv2_2,conv3_3"
