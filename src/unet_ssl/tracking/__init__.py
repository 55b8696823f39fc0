"""MLflow at the edge: stage runs, provenance and data versions, the served model."""
