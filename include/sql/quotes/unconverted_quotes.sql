-- Quotes never converted into a contract, due `live` after they were issued.
SELECT q.id,
       q.issued_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'quotes' AND h.record_id = q.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = q.customer_id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'prospects' AND h.record_id = q.prospect_id)) AS held,
       NULL::text AS waiting_for
FROM app.quotes AS q
WHERE q.contract_id IS NULL
  AND q.issued_at < %(cutoff)s
