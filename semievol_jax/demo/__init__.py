"""The embedded demo: a synthetic quiz task, its corpus, and a tiny base pretrained on it."""
