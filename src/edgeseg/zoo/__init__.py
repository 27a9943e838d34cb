"""The zoo: the registry of named models, their weights files, building torch models from the official
files, and checkpoints."""
