-- The Retention page's counts per purpose, kept between two countings (retention.status_counts,
-- the Python module of the same name). Idempotent. Counts only, never row contents.
--
-- Counting every rule live takes seconds at 100,000 customers: the page reads the latest counts
-- from here, with the instant they are for, and counts again (in the background) when they are
-- older than its `status_ttl_seconds`, or outdated by a delete, a legal-hold change, a truncate,
-- a policy change or the date moving on (`valid_until`). The watch DAG writes its counts here too.
CREATE TABLE IF NOT EXISTS retention.status_counts (
    overdue_days  integer     NOT NULL CHECK (overdue_days >= 0),
    purpose       text        NOT NULL,
    -- The instant the counts are for (taken before counting began).
    counted_at    timestamptz NOT NULL,
    -- The first instant at which time alone changes a figure: the next Paris midnight, the next
    -- move of the overdue line (now - overdue_days crossing a Paris midnight), the next whole day
    -- of the oldest record waiting past its end.
    valid_until   timestamptz NOT NULL,
    -- What deletes, holds and truncates had done when counting began (retention.status_counts.marker).
    marker        jsonb       NOT NULL,
    -- The purpose's policy fingerprint (retention.policy.fingerprint) the counts were made with.
    policy_sha256 text        NOT NULL,
    counted_by    text        NOT NULL,
    took_ms       integer     NOT NULL,
    -- retention.status.PurposeStatus (due, held, waiting, overdue, per rule, waiting past end),
    -- without the archive totals, which the page reads live.
    status        jsonb       NOT NULL,
    PRIMARY KEY (overdue_days, purpose)
);
