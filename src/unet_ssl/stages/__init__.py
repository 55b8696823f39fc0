"""One small module per DVC stage: read params, call the core, write outputs, log to MLflow."""
