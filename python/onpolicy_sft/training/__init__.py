"""Training: data formats and trainers."""
