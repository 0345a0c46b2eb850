"""The schema, as versioned migrations: PRAGMA user_version counts those applied."""

# Each migration is a list of statements, applied in one transaction; PRAGMA user_version counts them.
MIGRATIONS: list[list[str]] = [
    [
        """
    CREATE TABLE resources (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order: the stable default ordering
        kind TEXT NOT NULL,                     -- resource type name, e.g. 'Machine'
        id TEXT NOT NULL,                       -- last path segment of the resource URI
        parent TEXT NOT NULL DEFAULT '',        -- owning resource id for sub-collections (a Machine's disks)
        name TEXT, description TEXT, created TEXT NOT NULL, updated TEXT, state TEXT,
        doc TEXT NOT NULL DEFAULT '{}',         -- the other attributes, as JSON
        internal TEXT NOT NULL DEFAULT '{}',    -- provider-only data (job steps, driver hints), never shown
        version INTEGER NOT NULL DEFAULT 1,     -- bumped on every change; the ETag
        UNIQUE (kind, id)
    )""",
        "CREATE INDEX resources_by_name ON resources (kind, parent, name)",
        "CREATE INDEX resources_by_created ON resources (kind, parent, created)",
        "CREATE INDEX resources_by_state ON resources (kind, state)",
    ],
]
