"""modalrec offline trainer: datasets, multimodal recommenders, evaluation and bundle export."""
