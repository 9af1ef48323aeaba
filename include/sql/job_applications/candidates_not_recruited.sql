-- Candidates not recruited, due `live` after the last contact with them.
SELECT j.id,
       j.last_contact_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE h.table_name = 'job_applications' AND h.record_id = j.id) AS held,
       NULL::text AS waiting_for
FROM app.job_applications AS j
WHERE NOT j.hired
  AND j.last_contact_at < %(cutoff)s
