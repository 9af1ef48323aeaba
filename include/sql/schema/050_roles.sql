-- Roles that can do only their job (issue 23, docs/audit.md "Roles"). Idempotent.
--
--   retention_engine        the purpose DAGs and the watch (connection source_postgres): reads the
--                           application's tables, deletes the rows the policy lets go, writes its
--                           own bookkeeping; INSERT only into the audit, never UPDATE or DELETE
--   retention_rights        the subject requests (connection source_postgres_rights): what an
--                           access or an erasure needs, and the requests' evidence
--   retention_reader        the Retention page (connection source_postgres_reader): SELECT on
--                           what the page shows, nothing else (no address of the request inbox)
--   retention_housekeeping  the project's own records past their period (connection
--                           source_postgres_housekeeping): removes them only through the SECURITY
--                           DEFINER functions that keep the audit verifiable
--   retention_counter       the Retention page's recount (connection source_postgres_counter):
--                           reads what the reader reads, and writes the page's stored counts
--                           (retention.status_counts), nothing else
--
-- Group roles without LOGIN: the stacks create a login user in each (tools/devstack.py,
-- docker-compose.yaml); production grants them to its own users. Privileges on the application
-- tables the policy manages come from the policy (retention.roles, applied by retention.schema).

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['retention_engine', 'retention_rights', 'retention_reader', 'retention_housekeeping',
                             'retention_counter']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA app, retention TO retention_engine, retention_rights, retention_reader, retention_housekeeping,
    retention_counter;

-- The hold table in SHARE mode (a hold placed meanwhile waits for the batch): LOCK TABLE in that
-- mode needs UPDATE, DELETE or TRUNCATE on the table, which would let a writer release holds.
-- This function takes the lock and nothing else.
CREATE OR REPLACE FUNCTION retention.lock_legal_holds() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
BEGIN
    LOCK TABLE retention.legal_holds IN SHARE MODE;
END
$$;
REVOKE ALL ON FUNCTION retention.lock_legal_holds() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION retention.lock_legal_holds() TO retention_engine, retention_rights;

-- The tables of a schema that name files (a *_key column) in SHARE mode, in name order, while a
-- file disposal checks that no row names a file and deletes it (retention.archive.documents): a
-- row being inserted or changed to name it is committed first, and seen, or waits for the delete.
-- The same privilege question as above: this function takes the locks and nothing else.
CREATE OR REPLACE FUNCTION retention.lock_file_key_tables(source_schema text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
$$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN
        SELECT c.oid::regclass FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = source_schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = c.oid AND a.attnum > 0
                      AND NOT a.attisdropped AND a.attname LIKE '%\_key')
        ORDER BY c.relname
    LOOP
        EXECUTE format('LOCK TABLE %s IN SHARE MODE', rel);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION retention.lock_file_key_tables(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION retention.lock_file_key_tables(text) TO retention_engine, retention_rights;

-- Row locks (FOR UPDATE, FOR SHARE) need an UPDATE privilege on a column of the table. The
-- writers get it on `id` only (retention.roles) and this trigger refuses any UPDATE they make:
-- they lock rows, they never change them. ON DELETE SET NULL runs as the table's owner.
-- (A role dropped later makes this false, never an error in the application's UPDATEs.)
CREATE OR REPLACE FUNCTION retention.is_retention_writer() RETURNS boolean
    LANGUAGE sql STABLE AS
$$
SELECT NOT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
       AND coalesce(pg_has_role(current_user, to_regrole('retention_engine'), 'USAGE')
                    OR pg_has_role(current_user, to_regrole('retention_rights'), 'USAGE'), false)
$$;

-- Whether the session acts in a role (a member, not a superuser): the triggers' WHEN.
CREATE OR REPLACE FUNCTION retention.acts_as(role text) RETURNS boolean
    LANGUAGE sql STABLE AS
$$
SELECT NOT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
       AND coalesce(pg_has_role(current_user, to_regrole(role), 'USAGE'), false)
$$;

CREATE OR REPLACE FUNCTION retention.refuse_writer_update() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'permission denied for table %: % may lock its rows, never change them', TG_TABLE_NAME, current_user
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The engine.
GRANT SELECT ON retention.legal_holds, retention.active_holds, retention.archive_manifest, retention.purge_intents,
    retention.document_disposals, retention.object_rewrites, retention.audit_log, retention.access_exports
    TO retention_engine;
GRANT INSERT ON retention.archive_manifest, retention.purge_intents, retention.document_disposals,
    retention.object_rewrites, retention.audit_log, retention.access_exports
    TO retention_engine;
GRANT DELETE ON retention.purge_intents TO retention_engine;
-- Who a row belonged to before the engine's delete of that record cleared its link.
GRANT SELECT, INSERT, DELETE ON retention.detached_owners TO retention_engine;
-- An erasure records it too for the rows it keeps under a record it deletes.
GRANT SELECT, INSERT, DELETE ON retention.detached_owners TO retention_rights;
GRANT SELECT ON retention.detached_owners TO retention_reader;
-- document_keys: the copies an interrupted purge deleted, struck from a row it left committed.
GRANT UPDATE (state, byte_size, sha256, version_id, document_keys, document_version_ids, committed_at, locked_until,
              owner_ids, identifier_hashes, earliest_purge_after, purged_at, purge_run_id)
    ON retention.archive_manifest TO retention_engine;
GRANT UPDATE (disposed_at, outcome) ON retention.document_disposals TO retention_engine;
GRANT UPDATE (state, committed_at, done_at) ON retention.object_rewrites TO retention_engine;
-- The watch DAG deletes the access exports past their time (retention.rights.exports).
GRANT UPDATE (produced_at, delete_after, deleted_at, outcome, versions_deleted, deleted_by)
    ON retention.access_exports TO retention_engine;

-- The subject requests: the engine's bookkeeping (an erasure rewrites archive objects, disposes
-- of files and is audited like the engine's deletes), the requests and their evidence.
GRANT SELECT ON retention.legal_holds, retention.active_holds, retention.archive_manifest, retention.document_disposals,
    retention.object_rewrites, retention.audit_log, retention.access_exports, retention.subject_requests,
    retention.subject_request_inbox
    TO retention_rights;
-- A request waits for a partition between its table and the archive (retention.rights.retirements).
GRANT SELECT ON retention.partition_retirements TO retention_rights;
GRANT INSERT ON retention.archive_manifest, retention.document_disposals, retention.object_rewrites,
    retention.audit_log, retention.access_exports, retention.subject_requests, retention.subject_request_inbox
    TO retention_rights;
-- owner_ids: an erasure names the subject's records among the owners of an object a hold on
-- them keeps through their rows (retention.rights.erase_archived).
GRANT UPDATE (state, byte_size, sha256, version_id, document_version_ids, committed_at, owner_ids)
    ON retention.archive_manifest TO retention_rights;
GRANT UPDATE (disposed_at, outcome) ON retention.document_disposals TO retention_rights;
GRANT UPDATE (state, committed_at, done_at) ON retention.object_rewrites TO retention_rights;
-- An erasure deletes the subject's earlier access exports (retention.rights.exports.delete_subject_exports).
GRANT UPDATE (produced_at, delete_after, deleted_at, outcome, versions_deleted, deleted_by)
    ON retention.access_exports TO retention_rights;
-- A running request's evidence (a done one is final: retention.refuse_final_evidence_update).
GRANT UPDATE (run_id, reports, state, finished_at) ON retention.subject_requests TO retention_rights;
-- The inbox's address replaced by its keyed hash once the request is done.
GRANT UPDATE (email, subject_ref, identifiers_cleared_at) ON retention.subject_request_inbox TO retention_rights;

-- The Retention page: no write, and not the request inbox (addresses in clear).
GRANT SELECT ON retention.legal_holds, retention.active_holds, retention.archive_manifest, retention.object_rewrites,
    retention.audit_log, retention.access_exports, retention.audit_verifications
    TO retention_reader;

-- Housekeeping: reads what it verifies, records the result, removes through the functions only.
GRANT SELECT ON retention.audit_log, retention.subject_requests, retention.audit_chain, retention.audit_chain_heads,
    retention.audit_checkpoints, retention.audit_verifications
    TO retention_housekeeping;
GRANT INSERT ON retention.audit_verifications TO retention_housekeeping;
GRANT EXECUTE ON FUNCTION retention.prune_audit(timestamptz, text) TO retention_housekeeping;
-- forget_audit_ids ignores the manifest (it would forget the ids of an object still archived):
-- the owner's tool only; the housekeeping forgets through forget_audit_ids_past_archive.
REVOKE EXECUTE ON FUNCTION retention.forget_audit_ids(timestamptz) FROM retention_housekeeping;

-- Nobody but the owner writes the chain: its links come from the trigger (SECURITY DEFINER).
REVOKE ALL ON retention.audit_chain, retention.audit_chain_heads, retention.audit_checkpoints FROM PUBLIC;

-- The approvals asked in the Airflow UI (040_approvals.sql): the approval tasks record them (the
-- purpose DAGs' and the subject requests' connection is the engine's for this), the page shows them.
GRANT SELECT, INSERT ON retention.approvals TO retention_engine;
GRANT SELECT ON retention.approvals TO retention_rights, retention_reader;

-- The page's stored counts (040_status_counts.sql): the watch DAG stores its counts (as the
-- engine), the page reads them, and its recount (as retention_counter) stores new ones. The
-- counter reads what the reader reads (a member of it) and writes this one table: a forged row
-- there could only mislead the page until the next count, never a run (runs plan from the source).
GRANT SELECT, INSERT, UPDATE ON retention.status_counts TO retention_engine, retention_counter;
GRANT SELECT ON retention.status_counts TO retention_reader;
GRANT retention_reader TO retention_counter;

-- The partition path's write-ahead records (050_partitions.sql): the engine writes and closes
-- them (its recovery reads them on every run); the page may show them.
GRANT SELECT, INSERT ON retention.partition_retirements TO retention_engine;
GRANT UPDATE (state, finished_at, finished_by) ON retention.partition_retirements TO retention_engine;
GRANT SELECT ON retention.partition_retirements TO retention_reader;

-- Times the evidence states are the database's, not the writer's (found by a review): a request
-- answered late recorded as answered in time, a verification dated 2100 hiding every later
-- broken one, a disposal or a purge back-dated so that today's housekeeping removed its proof.
-- The owner (make schema, tests' set-up) may still write them. One function for every such
-- time: the column is the trigger's argument; set to now() whenever the writer sets or changes it.
CREATE OR REPLACE FUNCTION retention.stamp_now() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    col text := TG_ARGV[0];
    given jsonb := to_jsonb(NEW) -> col;
BEGIN
    IF given <> 'null'::jsonb AND (TG_OP = 'INSERT' OR given IS DISTINCT FROM to_jsonb(OLD) -> col) THEN
        NEW := jsonb_populate_record(NEW, jsonb_build_object(col, now()));
    END IF;
    RETURN NEW;
END
$$;
DROP FUNCTION IF EXISTS retention.stamp_finished_at() CASCADE;
DROP FUNCTION IF EXISTS retention.stamp_checked_at() CASCADE;
DROP FUNCTION IF EXISTS retention.stamp_disposed_at() CASCADE;
DROP FUNCTION IF EXISTS retention.stamp_purged_at() CASCADE;
CREATE OR REPLACE TRIGGER subject_requests_stamp_finished_at
    BEFORE INSERT OR UPDATE OF finished_at ON retention.subject_requests
    FOR EACH ROW WHEN (retention.is_retention_writer()) EXECUTE FUNCTION retention.stamp_now('finished_at');
CREATE OR REPLACE TRIGGER audit_verifications_stamp_checked_at
    BEFORE INSERT ON retention.audit_verifications
    FOR EACH ROW WHEN (retention.acts_as('retention_housekeeping')) EXECUTE FUNCTION retention.stamp_now('checked_at');
CREATE OR REPLACE TRIGGER document_disposals_stamp_disposed_at
    BEFORE INSERT OR UPDATE OF disposed_at ON retention.document_disposals
    FOR EACH ROW WHEN (retention.is_retention_writer()) EXECUTE FUNCTION retention.stamp_now('disposed_at');
CREATE OR REPLACE TRIGGER archive_manifest_stamp_purged_at
    BEFORE INSERT OR UPDATE OF purged_at ON retention.archive_manifest
    FOR EACH ROW WHEN (retention.is_retention_writer()) EXECUTE FUNCTION retention.stamp_now('purged_at');

-- The subject requests move an archive object only as a rewrite does (uploading -> committed or
-- abandoned, committed -> rewritten), or abandon a crashed run's upload: purging is the engine's (found by a review: the role could
-- mark a live object purged, and the housekeeping then forgot its audit ids).
CREATE OR REPLACE FUNCTION retention.refuse_rights_manifest_state() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF NEW.state IS NOT DISTINCT FROM OLD.state THEN
        RETURN NEW;
    END IF;
    -- Only the moves of a rewrite, on the objects its row names.
    IF (OLD.state, NEW.state) IN (('uploading', 'committed'), ('uploading', 'abandoned'))
       AND EXISTS (SELECT 1 FROM retention.object_rewrites AS r WHERE r.new_manifest_id = OLD.id) THEN
        RETURN NEW;
    END IF;
    -- A crashed run's upload holding the erased person's rows, removed (an orphan: no batch commits
    -- it any more, retention.rights.erase_archived): abandoned like the run's recovery does, never
    -- a partition's whose retirement is open (its drop commits them).
    IF (OLD.state, NEW.state) = ('uploading', 'abandoned')
       AND NOT EXISTS (SELECT 1 FROM retention.partition_retirements AS p
                        WHERE p.state = 'detaching' AND OLD.id = ANY(p.manifest_ids)) THEN
        RETURN NEW;
    END IF;
    IF (OLD.state, NEW.state) = ('committed', 'rewritten')
       AND EXISTS (SELECT 1 FROM retention.object_rewrites AS r
                    WHERE r.old_manifest_id = OLD.id AND r.state = 'uploading') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'permission denied: % may not move archive object % from % to %', current_user, OLD.id,
        OLD.state, NEW.state USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER archive_manifest_rights_state
    BEFORE UPDATE OF state ON retention.archive_manifest
    FOR EACH ROW WHEN (retention.acts_as('retention_rights') AND NOT retention.acts_as('retention_engine'))
    EXECUTE FUNCTION retention.refuse_rights_manifest_state();

-- An erasure may only add owners to an object (a hold on them keeps it), never remove one. Nor
-- record any of an object whose owners are unknown (NULL: every purge keeps it, object_held, until
-- the backfill reads them from its rows): a value there makes the purge test only those.
CREATE OR REPLACE FUNCTION retention.refuse_rights_fewer_owners() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF OLD.owner_ids IS NULL OR NEW.owner_ids IS NULL OR NOT NEW.owner_ids @> OLD.owner_ids THEN
        RAISE EXCEPTION 'permission denied: % may not remove owners of archive object %', current_user, OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER archive_manifest_rights_owners
    BEFORE UPDATE OF owner_ids ON retention.archive_manifest
    FOR EACH ROW WHEN (retention.acts_as('retention_rights') AND NOT retention.acts_as('retention_engine'))
    EXECUTE FUNCTION retention.refuse_rights_fewer_owners();
