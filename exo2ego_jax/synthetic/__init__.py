"""The synthetic Ego-Exo4D world: scenes, rendering, narrations, its word-level tokenizer and
the synthetic benchmarks (EgoBench-style MCQ, Ego-in-Exo questions) made from its ground truth."""
