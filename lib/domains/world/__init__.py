"""The miniature Stable Diffusion world: procedurally drawn captioned images with labelled modes, two hidden
annotators, and the standard SD components (pipeline, rewards, metric features) trained on it here."""
