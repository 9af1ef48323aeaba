-- AML / terrorism-financing checks, from the end of the insurance contract.
SELECT a.id,
       c.ended_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE (h.table_name, h.record_id) IN (('aml_records', a.id), ('contracts', c.id),
                                                     ('customers', a.customer_id))) AS held,
       NULL::text AS waiting_for
FROM app.aml_records AS a
JOIN app.contracts AS c ON c.id = a.contract_id
WHERE c.ended_at < %(cutoff)s
