-- Alerts qualified "not relevant": deleted by the first run after the qualification.
WHERE fraud_alerts.status = 'not_relevant'
