"""The command line and the launcher: the dev network, the health authority's and the organisations'
deployments, and their composition behind `./erx up` and `./erx demo`. The top layer: nothing imports it."""
