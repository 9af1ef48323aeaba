-- Closed fraud cases; a case waits while one of its alerts is still there.
SELECT fc.id,
       fc.closed_at AS clock,
       EXISTS (SELECT 1 FROM retention.active_holds AS h
               WHERE h.table_name = 'fraud_cases' AND h.record_id = fc.id) AS held,
       CASE WHEN EXISTS (SELECT 1 FROM app.fraud_alerts AS fa WHERE fa.fraud_case_id = fc.id)
            THEN 'fraud_alerts' END AS waiting_for
FROM app.fraud_cases AS fc
WHERE fc.closed_at < %(cutoff)s
