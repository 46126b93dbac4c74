"""Database layer: the source tables we read and the tables the pipeline owns."""
