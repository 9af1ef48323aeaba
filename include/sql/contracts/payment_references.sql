-- Card / IBAN references held for the payment processor: gone when the contract ends.
SELECT pm.id,
       c.ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'payment_methods' AND h.record_id = pm.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = c.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.customer_id)) AS held,
       NULL::text AS waiting_for
FROM app.payment_methods AS pm
JOIN app.contracts AS c ON c.id = pm.contract_id
WHERE c.ended_at < %(cutoff)s
