-- Alerts still pending qualification `live` after they were raised.
SELECT fa.id,
       fa.raised_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'fraud_alerts' AND h.record_id = fa.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'contracts' AND h.record_id = fa.contract_id)) AS held,
       NULL::text AS waiting_for
FROM app.fraud_alerts AS fa
WHERE fa.status = 'pending'
  AND fa.raised_at < %(cutoff)s
