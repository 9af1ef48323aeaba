-- Alerts qualified "relevant" are kept while their fraud case is open (closed_at NULL)
-- and archived with it once it is closed.
JOIN app.fraud_cases AS fraud_cases ON fraud_cases.id = fraud_alerts.fraud_case_id
WHERE fraud_alerts.status = 'relevant'
