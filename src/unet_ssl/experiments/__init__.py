"""Studies built on the layers below: the paper's tables, tuning, the release and the benchmark."""
