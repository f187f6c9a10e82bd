//! The schema, as an append-only list of migrations: migration `k` takes a database from
//! `PRAGMA user_version = k` to `k + 1`. Never edit one that has shipped; add the next.

/// Every migration, in order.
pub const MIGRATIONS: &[&str] = &[
    // 1: bots, their tweets and imports, training runs, candidates, the posting queue.
    r#"
    CREATE TABLE bots (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        handle TEXT,
        created_at TEXT NOT NULL,
        base_checkpoint TEXT,
        active_checkpoint TEXT,
        clean_policy TEXT NOT NULL
    );
    CREATE TABLE imports (
        id INTEGER PRIMARY KEY,
        bot_id INTEGER NOT NULL REFERENCES bots(id) ON DELETE CASCADE,
        imported_at TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE tweets (
        id INTEGER PRIMARY KEY,
        bot_id INTEGER NOT NULL REFERENCES bots(id) ON DELETE CASCADE,
        import_id INTEGER REFERENCES imports(id) ON DELETE SET NULL,
        tweet_key TEXT NOT NULL,
        tweet_id TEXT,
        created_at TEXT,
        raw_text TEXT NOT NULL,
        is_retweet INTEGER NOT NULL,
        is_reply INTEGER NOT NULL,
        source_format TEXT NOT NULL,
        text TEXT NOT NULL,
        kept INTEGER NOT NULL,
        drop_reason TEXT,
        UNIQUE (bot_id, tweet_key)
    );
    CREATE INDEX tweets_by_bot ON tweets (bot_id, kept, id);
    CREATE TABLE training_runs (
        id INTEGER PRIMARY KEY,
        bot_id INTEGER REFERENCES bots(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'stopped', 'failed')),
        hyperparams TEXT NOT NULL,
        checkpoint_dir TEXT NOT NULL,
        steps INTEGER,
        best_val_loss REAL,
        losses TEXT,
        error TEXT
    );
    CREATE TABLE candidates (
        id INTEGER PRIMARY KEY,
        bot_id INTEGER NOT NULL REFERENCES bots(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        text TEXT NOT NULL,
        edited_text TEXT,
        sampling TEXT NOT NULL,
        novelty REAL,
        status TEXT NOT NULL DEFAULT 'new'
            CHECK (status IN ('new', 'approved', 'rejected', 'edited'))
    );
    CREATE TABLE queue (
        id INTEGER PRIMARY KEY,
        bot_id INTEGER NOT NULL REFERENCES bots(id) ON DELETE CASCADE,
        candidate_id INTEGER REFERENCES candidates(id) ON DELETE SET NULL,
        text TEXT NOT NULL,
        position INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'sending', 'posted', 'failed')),
        planned_at TEXT,
        posted_tweet_id TEXT,
        error TEXT,
        updated_at TEXT NOT NULL
    );
    "#,
    // 2: posting. Each bot's schedule (JSON; NULL: the config's default); per queue entry
    // the attempts made, when it was claimed for sending, when to try again, when it was
    // posted. A candidate is queued at most once.
    r#"
    ALTER TABLE bots ADD COLUMN schedule TEXT;
    ALTER TABLE queue ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue ADD COLUMN sending_since TEXT;
    ALTER TABLE queue ADD COLUMN next_attempt_at TEXT;
    ALTER TABLE queue ADD COLUMN posted_at TEXT;
    CREATE UNIQUE INDEX queue_candidate ON queue(candidate_id) WHERE candidate_id IS NOT NULL;
    CREATE INDEX queue_bot_status ON queue(bot_id, status, position);
    CREATE INDEX queue_text ON queue(text);
    "#,
    // 3: each candidate's ranking score, and what it was computed from (JSON); per queue
    // entry when it was queued (a bot that never posted is due from then) and first claimed
    // (how far back its tweet may be on X's timeline).
    r#"
    ALTER TABLE candidates ADD COLUMN score REAL;
    ALTER TABLE candidates ADD COLUMN quality TEXT;
    ALTER TABLE queue ADD COLUMN queued_at TEXT;
    ALTER TABLE queue ADD COLUMN first_claimed_at TEXT;
    UPDATE queue SET queued_at = updated_at;
    UPDATE queue SET first_claimed_at = sending_since WHERE sending_since IS NOT NULL;
    "#,
];
