"""Software-defined assets: the conversation catalog and the training-file chain."""
