"""The ``weightvault`` command line: the only layer that reads the environment, prints and sets exit codes."""
