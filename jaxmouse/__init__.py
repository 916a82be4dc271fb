"""jaxmouse: how well does a feature space predict mouse visual cortex, at scale, in JAX.

Data flows one way: stimuli -> features -> readouts -> metrics -> sweeps -> reports.
"""

__version__ = "0.1.0"


class JaxmouseWarning(UserWarning):
  """A doubtful input that jaxmouse still accepts (the command line prints it as one line)."""
