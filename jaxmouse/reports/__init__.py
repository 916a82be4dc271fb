"""Tables, figures and the hierarchy test of a sweep, read from its results table; never fits.

The analyses follow Cadena et al. 2019, with every choice made on validation data:

- FEVE versus layer depth per area, one curve per network (trained solid, random dashed), the
  energy model as a reference line (``figures``);
- per area and network: its validation-chosen layer, that layer's relative depth and its test
  FEVE (``tables.network_table``);
- per area: each weights kind's validation-chosen layer and its test FEVE, trained minus random
  (each at its own chosen layer, and layer by layer) and CNN minus energy model, with two-level
  bootstrap CIs over test images and neurons (``tables``);
- the hierarchy test: each neuron's validation-chosen layer against its area's rank, with a CI
  and permutations that respect recordings (``hierarchy``);
- ``summary.md``: the questions answered, the data described, and for a simulated mouse what was
  planted against what was recovered (``summary``);
- learning curves of the readouts trained by gradient descent: validation correlation versus step
  per penalty config, median over neurons (``curves``).
"""

from jaxmouse.reports.curves import learning_curves, plot_learning_curves, read_histories
from jaxmouse.reports.figures import plot_feve_vs_layer
from jaxmouse.reports.hierarchy import HierarchyTest, _spearman_perm, hierarchy_test, verdict
from jaxmouse.reports.summary import (DATA_FILE, SELECTION_RULE, planted_vs_recovered,
                                      read_data_info, summary_markdown, write_report)
from jaxmouse.reports.tables import (AREA_HIERARCHIES, DEFAULT_AREA_RANKS, KINDS,
                                     REQUIRED_COLUMNS, Bootstrap, ReportConfig, TestImages,
                                     area_table, attach_networks, check_results, choose_layers,
                                     choose_network_layers, choose_neuron_layers, feve_by_layer,
                                     feve_by_network, included, layer_order, layer_table,
                                     network_table, parse_area_ranks, per_neuron,
                                     read_feature_spaces, read_results, study_networks,
                                     weights_kind_from_name)

__all__ = [
    "AREA_HIERARCHIES", "DATA_FILE", "DEFAULT_AREA_RANKS", "KINDS", "REQUIRED_COLUMNS",
    "SELECTION_RULE", "Bootstrap", "HierarchyTest", "ReportConfig", "TestImages", "area_table",
    "attach_networks", "check_results", "choose_layers", "choose_network_layers",
    "choose_neuron_layers", "feve_by_layer", "feve_by_network", "hierarchy_test", "included",
    "layer_order", "layer_table", "learning_curves", "network_table", "parse_area_ranks",
    "per_neuron", "planted_vs_recovered", "plot_feve_vs_layer", "plot_learning_curves",
    "read_data_info", "read_feature_spaces", "read_histories", "read_results", "study_networks",
    "summary_markdown", "verdict", "weights_kind_from_name", "write_report",
]
