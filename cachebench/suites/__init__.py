"""Suite definitions, one YAML file per suite (the file name is the suite's name); read by cachebench.suite."""
