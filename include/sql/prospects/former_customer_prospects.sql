-- The prospect record of a former customer goes with the customer's identity.
SELECT p.id,
       c.relationship_ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'prospects' AND h.record_id = p.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.id)) AS held,
       CASE WHEN EXISTS (SELECT 1 FROM app.quotes AS q WHERE q.prospect_id = p.id)
            THEN 'quotes' END AS waiting_for
FROM app.prospects AS p
JOIN app.customers AS c ON c.id = p.customer_id
WHERE c.relationship_ended_at < %(cutoff)s
