"""ACA-Py agents and the tails server they publish revocation tails files to."""
