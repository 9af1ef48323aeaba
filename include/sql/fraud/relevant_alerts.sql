-- Alerts qualified "relevant" are kept while their fraud case is open (closed_at NULL)
-- and archived with it once it is closed.
SELECT fa.id,
       fc.closed_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'fraud_alerts' AND h.record_id = fa.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'fraud_cases' AND h.record_id = fc.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = fa.contract_id)) AS held,
       NULL::text AS waiting_for
FROM app.fraud_alerts AS fa
JOIN app.fraud_cases AS fc ON fc.id = fa.fraud_case_id
WHERE fa.status = 'relevant'
  AND fc.closed_at < %(cutoff)s
