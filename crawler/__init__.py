"""The megane-crawler daemon: CLI, config, sources, HTTP fetching, pipeline, review UI."""
