"""Run folders: config, results, weights and a receipt for every unlearning run."""
