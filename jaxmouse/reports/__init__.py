"""Tables, figures and the hierarchy test of a sweep, read from its results table; never fits.

The analyses follow Cadena et al. 2019, with every choice made on validation data:

- FEVE versus layer per area, trained and random weights, the energy model as a reference line
  (``figures``);
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
                                     area_table, check_results, choose_layers,
                                     choose_neuron_layers, feve_by_layer, included, layer_order,
                                     layer_table, parse_area_ranks, per_neuron, read_results,
                                     weights_kind_from_name)

__all__ = [
    "AREA_HIERARCHIES", "DATA_FILE", "DEFAULT_AREA_RANKS", "KINDS", "REQUIRED_COLUMNS",
    "SELECTION_RULE", "Bootstrap", "HierarchyTest", "ReportConfig", "TestImages", "area_table",
    "check_results", "choose_layers", "choose_neuron_layers", "feve_by_layer", "hierarchy_test",
    "included", "layer_order", "layer_table", "learning_curves", "parse_area_ranks", "per_neuron",
    "planted_vs_recovered", "plot_feve_vs_layer", "plot_learning_curves", "read_data_info",
    "read_histories", "read_results",
    "summary_markdown", "verdict", "weights_kind_from_name", "write_report",
]
