"""Storage: the SQLite catalogue, file placement under data_dir, quarantine files."""
