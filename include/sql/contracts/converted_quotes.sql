-- Quotes that became a contract are part of its file: archived with the ended contract.
SELECT q.id,
       c.ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'quotes' AND h.record_id = q.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = c.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.customer_id)) AS held,
       NULL::text AS waiting_for
FROM app.quotes AS q
JOIN app.contracts AS c ON c.id = q.contract_id
WHERE c.ended_at < %(cutoff)s
