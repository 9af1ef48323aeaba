-- Customer identity, due `live` after the relationship ended (NULL while a contract runs).
-- A customer waits while any other purpose still keeps a row that references it.
SELECT c.id,
       c.relationship_ended_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE h.table_name = 'customers' AND h.record_id = c.id) AS held,
       CASE
           WHEN EXISTS (SELECT 1 FROM app.prospects AS x WHERE x.customer_id = c.id) THEN 'prospects'
           WHEN EXISTS (SELECT 1 FROM app.pets AS x WHERE x.customer_id = c.id) THEN 'pets'
           WHEN EXISTS (SELECT 1 FROM app.contracts AS x WHERE x.customer_id = c.id) THEN 'contracts'
           WHEN EXISTS (SELECT 1 FROM app.quotes AS x WHERE x.customer_id = c.id) THEN 'quotes'
           WHEN EXISTS (SELECT 1 FROM app.call_recordings AS x WHERE x.customer_id = c.id) THEN 'call_recordings'
           WHEN EXISTS (SELECT 1 FROM app.aml_records AS x WHERE x.customer_id = c.id) THEN 'aml_records'
       END AS waiting_for
FROM app.customers AS c
WHERE c.relationship_ended_at < %(cutoff)s
