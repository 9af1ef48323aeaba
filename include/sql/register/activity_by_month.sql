-- What was done, per purpose and month, from the audit (retention.register): counts only.
-- Months are in the policy's time zone; a row counts in the month it was written (`at`: when it
-- was done, not the run's logical date). Bind parameters: timezone, start and end (the period
-- asked, end excluded).
-- Records done by the schedule are summed over the runs; "held" and "waiting" are written by
-- every enforced run for the same records again, so the month shows the most of one run.
-- A subject request's erasure is audited as 'deleted' under the run id subject_request__<id>.
-- 'orphan_removed' (an upload a crashed run left; its rows were never deleted) is not counted.
WITH per_run AS (
    SELECT purpose,
           to_char(at AT TIME ZONE %(timezone)s, 'YYYY-MM') AS month,
           run_id,
           starts_with(run_id, 'subject_request__') AS on_request,
           action,
           sum(record_count) AS records
    FROM retention.audit_log
    WHERE at >= %(start)s AND at < %(end)s
    GROUP BY purpose, month, run_id, action
)
SELECT purpose,
       month,
       count(DISTINCT run_id) FILTER (WHERE NOT on_request) AS runs,
       coalesce(sum(records) FILTER (WHERE action = 'archived_and_deleted'), 0) AS archived_and_deleted,
       coalesce(sum(records) FILTER (WHERE action = 'deleted' AND NOT on_request), 0) AS deleted_without_archive,
       coalesce(sum(records) FILTER (WHERE action = 'deleted' AND on_request), 0) AS erased_on_request,
       coalesce(sum(records) FILTER (WHERE action IN ('object_purged', 'rows_purged')), 0) AS purged_from_archive,
       coalesce(max(records) FILTER (WHERE action = 'held'), 0) AS held,
       coalesce(max(records) FILTER (WHERE action = 'object_purge_held'), 0) AS archive_held,
       coalesce(max(records) FILTER (WHERE action = 'waiting'), 0) AS waiting
FROM per_run
GROUP BY purpose, month
ORDER BY purpose, month
