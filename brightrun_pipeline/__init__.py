"""BrightRun: versioned LoRA training files built from enriched conversations."""
