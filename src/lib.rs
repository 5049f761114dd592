//! Umbrella package of the scoresde-rs workspace: it holds the examples and benches.
