"""deployments: the Ray Serve adapters over sam_core, and the `sam-serve` command line."""
