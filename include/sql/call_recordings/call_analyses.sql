-- Documents analysing a recording, due `live` after the document date, whatever the
-- recording's reason (the policy gives one year in both cases).
SELECT a.id,
       a.created_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE h.table_name = 'call_analyses' AND h.record_id = a.id) AS held,
       NULL::text AS waiting_for
FROM app.call_analyses AS a
WHERE a.created_at < %(cutoff)s
