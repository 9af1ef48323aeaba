-- Prospects who never became customers, due `live` after the last contact. A prospect
-- waits while one of its quotes is still kept.
SELECT p.id,
       p.last_contact_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE h.table_name = 'prospects' AND h.record_id = p.id) AS held,
       CASE WHEN EXISTS (SELECT 1 FROM app.quotes AS q WHERE q.prospect_id = p.id)
            THEN 'quotes' END AS waiting_for
FROM app.prospects AS p
WHERE p.customer_id IS NULL
  AND p.last_contact_at < %(cutoff)s
