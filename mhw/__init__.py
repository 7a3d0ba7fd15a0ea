"""The ``mhw`` command line, on top of the layers it composes (warehouse/, pipelines/, model/)."""
