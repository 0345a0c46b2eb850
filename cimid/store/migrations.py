"""The schema, as versioned migrations: PRAGMA user_version counts those applied."""

# Each migration is a list of statements; every pending one is applied in one transaction (a fresh store in one
# commit), and PRAGMA user_version counts them.
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
    [
        # Tenancy: who made each resource, and which catalogue entries every consumer sees.
        "ALTER TABLE resources ADD COLUMN owner TEXT NOT NULL DEFAULT ''",  # '' : the provider itself
        "ALTER TABLE resources ADD COLUMN public INTEGER NOT NULL DEFAULT 0",
        # Everything stored before tenancy was the provider's; its catalogue stays visible to everyone.
        "UPDATE resources SET public = 1 WHERE kind IN ('MachineConfiguration', 'MachineTemplate',"
        " 'MachineImage', 'CredentialTemplate')",
        "CREATE INDEX resources_by_owner ON resources (kind, owner, parent, created)",
        """
    CREATE TABLE consumers (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,                     -- admin | user | reader
        password_hash TEXT,                     -- NULL: tokens only
        quotas TEXT NOT NULL DEFAULT '{}',      -- JSON: machines, cpu, memory, ... (absent: unlimited)
        created TEXT NOT NULL
    )""",
        """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,                    -- shown in listings; the secret is never stored
        consumer TEXT NOT NULL REFERENCES consumers (name) ON DELETE CASCADE,
        digest TEXT NOT NULL UNIQUE,            -- SHA-256 of the whole token
        description TEXT NOT NULL DEFAULT '',
        created TEXT NOT NULL,
        expires TEXT,                           -- NULL: never
        revoked TEXT                            -- NULL: valid
    )""",
    ],
    [
        # Idempotency-Key: a consumer's POST is reserved here before it runs, and its answer kept after, so
        # that a retry gets that answer again instead of making a second resource.
        """
    CREATE TABLE idempotency_keys (
        consumer TEXT NOT NULL,                 -- who sent the key: keys of different consumers never meet
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,              -- SHA-256 of method, path and body: another request is refused
        created TEXT NOT NULL,                  -- kept for server.idempotency_minutes from then
        recorded TEXT,                          -- JSON {job, status, location}: the Job the request made,
                                                -- written in the same transaction as the change itself
        status INTEGER,                         -- the answer; NULL while the request runs
        headers TEXT,                           -- JSON: the answer's headers that matter
        body BLOB,
        PRIMARY KEY (consumer, key)
    )""",
        "CREATE INDEX idempotency_keys_by_created ON idempotency_keys (created)",
    ],
    [
        # A user's pages and counts add (owner = ? OR public = 1), which no index answered: a count, or an
        # $orderby page, read every row of the kind from the table to check it. With owner and public in
        # the listing indexes, rows out of scope are skipped in the index, and a count reads the index alone.
        "DROP INDEX resources_by_name",
        "CREATE INDEX resources_by_name ON resources (kind, parent, name, owner, public)",
        "DROP INDEX resources_by_created",
        "CREATE INDEX resources_by_created ON resources (kind, parent, created, owner, public)",
    ],
    [
        # Meter samples: many small rows, so a table of their own, keyed for a Meter's time range.
        """
    CREATE TABLE samples (
        meter TEXT NOT NULL,                    -- the Meter's id (resources.id of kind 'Meter')
        ts TEXT NOT NULL,                       -- UTC 'YYYY-MM-DDTHH:MM:SS.mmmZ', as every stored dateTime
        value REAL NOT NULL,
        PRIMARY KEY (meter, ts)
    ) WITHOUT ROWID""",
        "CREATE INDEX samples_by_ts ON samples (ts)",  # retention drops the oldest first
    ],
]
