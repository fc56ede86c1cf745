"""ACA-Py plugins the project's agents load (`--plugin …`): small, documented fixes of upstream bugs."""
