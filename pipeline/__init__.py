"""The pipeline: config, model loading, export, verification, the stage runner, reports."""
