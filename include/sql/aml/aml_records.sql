-- AML / terrorism-financing checks, from the end of the insurance contract.
SELECT a.id,
       c.ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'aml_records' AND h.record_id = a.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = c.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = a.customer_id)) AS held,
       NULL::text AS waiting_for
FROM app.aml_records AS a
JOIN app.contracts AS c ON c.id = a.contract_id
WHERE c.ended_at < %(cutoff)s
