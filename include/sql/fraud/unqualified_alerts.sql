-- Alerts still pending qualification `live` after they were raised.
WHERE fraud_alerts.status = 'pending'
