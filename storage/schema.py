"""The catalogue's schema and its migrations.

`PRAGMA user_version` holds the schema version. Each migration is a list of statements
applied in one transaction; a catalogue written by a newer program is refused.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the durable queue, stored images, scores, features, labels, source cursors.
    (
        """
        CREATE TABLE sources (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            query_key TEXT NOT NULL,
            cursor TEXT,
            last_poll_at REAL,
            last_success_at REAL,
            last_new_at REAL,
            last_error TEXT,
            last_error_at REAL,
            consecutive_errors INTEGER NOT NULL DEFAULT 0,
            empty_polls INTEGER NOT NULL DEFAULT 0,
            next_poll_at REAL,
            notice TEXT,
            items_total INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
            size INTEGER NOT NULL,
            format TEXT,
            width INTEGER,
            height INTEGER,
            extension TEXT NOT NULL DEFAULT '',
            phash TEXT,
            placement TEXT CHECK (placement IN ('library', 'quarantine', 'held', 'rejected')),
            reason TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            model_version TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE media (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            dedup_key TEXT NOT NULL,
            source TEXT NOT NULL,
            post_url TEXT,
            author TEXT,
            posted_at TEXT,
            md5 TEXT,
            flags TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '[]',
            extra TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL CHECK (state IN ('pending', 'downloaded', 'decoded',
                'classified', 'library', 'quarantine', 'held', 'rejected')),
            reason TEXT,
            sha256 TEXT REFERENCES blobs (sha256),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX media_by_state ON media (state, next_attempt_at, id)",
        "CREATE INDEX media_by_sha256 ON media (sha256)",
        "CREATE INDEX media_by_dedup_key ON media (dedup_key)",
        "CREATE INDEX media_by_md5 ON media (md5) WHERE md5 IS NOT NULL",
        """
        CREATE TABLE scores (
            sha256 TEXT NOT NULL REFERENCES blobs (sha256),
            model_version TEXT NOT NULL,
            tag TEXT NOT NULL,
            score REAL NOT NULL,
            PRIMARY KEY (sha256, model_version, tag)
        )
        """,
        """
        CREATE TABLE features (
            sha256 TEXT NOT NULL REFERENCES blobs (sha256),
            backbone TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (sha256, backbone)
        )
        """,
        """
        CREATE TABLE labels (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL REFERENCES blobs (sha256),
            tag TEXT NOT NULL,
            value INTEGER NOT NULL CHECK (value IN (0, 1)),
            origin TEXT NOT NULL CHECK (origin IN ('human', 'source')),
            who TEXT,
            created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX labels_by_sha256 ON labels (sha256, tag)",
        """
        CREATE TABLE blocked_hashes (
            phash TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (phash, sha256)
        )
        """,
    ),
    # 2: when a source was first polled, for the "quiet source" notice in `megane status`.
    (
        "ALTER TABLE sources ADD COLUMN first_poll_at REAL",
        "UPDATE sources SET first_poll_at = last_poll_at",
    ),
    # 3: small named settings the catalogue keeps (the fingerprint of the applied policy).
    (
        """
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
