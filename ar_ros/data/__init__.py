"""Data that evaluation and training share: dataset readers, tracker result files, synthetic sequences,
real imagery from packages and its ground truth, and the base trackers that make coarse boxes."""
