-- Ended contracts. A contract waits while rows of another rule or purpose still reference
-- it: AML records (kept by the AML purpose), fraud alerts (fraud purpose), or held children.
SELECT c.id,
       c.ended_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = c.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = c.customer_id)) AS held,
       CASE
           WHEN EXISTS (SELECT 1 FROM app.claims AS x WHERE x.contract_id = c.id) THEN 'claims'
           WHEN EXISTS (SELECT 1 FROM app.payment_methods AS x WHERE x.contract_id = c.id) THEN 'payment_methods'
           WHEN EXISTS (SELECT 1 FROM app.quotes AS x WHERE x.contract_id = c.id) THEN 'quotes'
           WHEN EXISTS (SELECT 1 FROM app.aml_records AS x WHERE x.contract_id = c.id) THEN 'aml_records'
           WHEN EXISTS (SELECT 1 FROM app.fraud_alerts AS x WHERE x.contract_id = c.id) THEN 'fraud_alerts'
       END AS waiting_for
FROM app.contracts AS c
WHERE c.ended_at < %(cutoff)s
